"""Model configurations: `config.json` in, `config.json` out, unknown keys kept.

A family declares its defaults and any aliases; everything else a checkpoint's config.json
carries is kept as an attribute and written back, so a config round-trips through Cove
unchanged and stays loadable by transformers.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, ClassVar

from cove import __version__

CONFIG_NAME = "config.json"

# Keys every config has, with the values transformers uses when config.json leaves them out.
COMMON_DEFAULTS: dict[str, Any] = {
    "architectures": None,
    "id2label": None,
    "problem_type": None,
    "pad_token_id": None,
    "bos_token_id": None,
    "eos_token_id": None,
    "tie_word_embeddings": True,
    "output_hidden_states": False,
    "output_attentions": False,
    "return_dict": True,
    "is_decoder": False,
    "dtype": None,
}


class PretrainedConfig:
    """A model's hyper-parameters. Subclasses set `model_type`, `defaults` and `attribute_map`."""

    model_type: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}
    # Other names a family's config.json uses for the common fields (e.g. GPT-2's n_embd).
    attribute_map: ClassVar[dict[str, str]] = {}

    def __init__(self, **kwargs: Any) -> None:
        values = {**copy.deepcopy(COMMON_DEFAULTS), **copy.deepcopy(self.defaults)}
        num_labels = kwargs.pop("num_labels", None)
        if "torch_dtype" in kwargs:  # transformers 4.x name
            kwargs.setdefault("dtype", kwargs.pop("torch_dtype"))
        values.update(kwargs)
        values.pop("model_type", None)
        for key, value in values.items():
            setattr(self, key, value)
        if self.id2label is not None and num_labels in (None, len(self.id2label)):
            self.id2label = {int(k): v for k, v in self.id2label.items()}
        elif num_labels is not None or "label2id" not in values:
            n = 2 if num_labels is None else num_labels
            self.id2label = {i: f"LABEL_{i}" for i in range(n)}
        if getattr(self, "label2id", None) is None or num_labels is not None \
                or len(self.label2id) != len(self.id2label):
            self.label2id = {v: k for k, v in self.id2label.items()}
        else:
            self.label2id = {k: int(v) for k, v in self.label2id.items()}

    def __setattr__(self, key: str, value: Any) -> None:
        key = type(self).attribute_map.get(key, key)
        super().__setattr__(key, value)

    def __getattr__(self, key: str) -> Any:  # only called when normal lookup fails
        mapped = type(self).attribute_map.get(key)
        if mapped is not None:
            return getattr(self, mapped)
        raise AttributeError(f"{type(self).__name__} has no attribute {key!r}")

    @property
    def num_labels(self) -> int:
        return len(self.id2label)

    @num_labels.setter
    def num_labels(self, n: int) -> None:
        self.id2label = {i: f"LABEL_{i}" for i in range(n)}
        self.label2id = {v: k for k, v in self.id2label.items()}

    # -- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = {k: copy.deepcopy(v) for k, v in self.__dict__.items()}
        out["model_type"] = self.model_type or out.get("model_type")
        out["id2label"] = {str(k): v for k, v in self.id2label.items()}
        out["label2id"] = dict(self.label2id)
        if out.get("dtype") is not None:
            out["dtype"] = str(out["dtype"]).removeprefix("torch.")
        out["transformers_version"] = out.get("transformers_version") or "5.0.0"
        out["cove_version"] = __version__
        return dict(sorted(out.items()))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        tmp = path / f".{CONFIG_NAME}.tmp"
        tmp.write_text(self.to_json_string())
        os.replace(tmp, path / CONFIG_NAME)

    @classmethod
    def from_dict(cls, data: dict[str, Any], **overrides: Any) -> PretrainedConfig:
        return cls(**{**data, **overrides})

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> PretrainedConfig:
        return cls.from_dict(read_config_dict(path))

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any) -> PretrainedConfig:
        """From a folder or a Hub repository id (revision=, token=, cache_dir=, ...)."""
        hub_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in HUB_KWARGS}
        from cove.models.files import resolve_file

        path = resolve_file(name_or_path, CONFIG_NAME, required=True, **hub_kwargs)
        return cls.from_dict(read_config_dict(path), **kwargs)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PretrainedConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"


# transformers 5's name for the same class (PretrainedConfig stays as its alias there too).
PreTrainedConfig = PretrainedConfig


HUB_KWARGS = {"revision", "token", "cache_dir", "local_files_only", "force_download",
              "subfolder", "endpoint"}


def read_config_dict(path: str | os.PathLike) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data
