"""GenerationConfig: the parameters of `generate`, read from and written to generation_config.json.

Field names, defaults and the file format follow transformers 5: every field defaults to None
("not set"), and `generate` fills what is still unset from the model's own generation config,
then from `GenerationConfig.global_defaults()`. Keys this class does not know are kept as
attributes and written back, so a file round-trips unchanged.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

GENERATION_CONFIG_NAME = "generation_config.json"

# Every field transformers' GenerationConfig has (all default to None there).
FIELDS: tuple[str, ...] = (
    # length
    "max_length", "max_new_tokens", "min_length", "min_new_tokens", "early_stopping", "max_time",
    "stop_strings",
    # strategy
    "do_sample", "num_beams", "use_mtp", "use_cache", "cache_implementation", "cache_config",
    "max_cache_len",
    # logits manipulation
    "temperature", "top_k", "top_p", "min_p", "top_h", "typical_p", "epsilon_cutoff",
    "eta_cutoff", "repetition_penalty", "encoder_repetition_penalty", "length_penalty",
    "no_repeat_ngram_size", "bad_words_ids", "renormalize_logits", "forced_bos_token_id",
    "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty",
    "suppress_tokens", "begin_suppress_tokens", "sequence_bias", "token_healing",
    "guidance_scale", "watermarking_config",
    # outputs
    "num_return_sequences", "output_attentions", "output_hidden_states", "output_scores",
    "output_logits", "return_dict_in_generate",
    # special tokens
    "pad_token_id", "bos_token_id", "eos_token_id", "encoder_no_repeat_ngram_size",
    "decoder_start_token_id",
    # assisted generation and others
    "is_assistant", "num_assistant_tokens", "num_assistant_tokens_schedule",
    "assistant_confidence_threshold", "prompt_lookup_num_tokens", "max_matching_ngram_size",
    "assistant_early_exit", "assistant_lookbehind", "target_lookbehind",
    "assistant_ensemble_weight", "speculation_type", "compile_config", "disable_compile",
    "continuous_batching_config", "low_memory", "penalty_alpha", "dola_layers",
    "diversity_penalty", "num_beam_groups", "constraints", "force_words_ids",
    "prefill_chunk_size",
)

# What `generate` uses for a field that neither the call nor the model's config sets.
GLOBAL_DEFAULTS: dict[str, Any] = {
    "max_length": 20, "min_length": 0, "do_sample": False, "use_cache": True,
    "early_stopping": False, "num_beams": 1, "temperature": 1.0, "top_k": 50, "top_p": 1.0,
    "typical_p": 1.0, "repetition_penalty": 1.0, "length_penalty": 1.0,
    "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None,
    "num_return_sequences": 1, "output_scores": False, "return_dict_in_generate": False,
    "forced_bos_token_id": None, "forced_eos_token_id": None, "remove_invalid_values": False,
    "exponential_decay_length_penalty": None, "suppress_tokens": None,
    "begin_suppress_tokens": None, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0,
    "encoder_repetition_penalty": 1.0, "num_assistant_tokens": 20,
    "num_assistant_tokens_schedule": "constant", "assistant_confidence_threshold": 0.4,
    "assistant_lookbehind": 10, "target_lookbehind": 10, "num_beam_groups": 1,
    "diversity_penalty": 0.0,
}

# Keys that are bookkeeping, not parameters.
_METADATA = ("transformers_version", "cove_version", "_from_model_config")


class GenerationConfig:
    """The parameters of a `generate` call (transformers' names and file format)."""

    def __init__(self, **kwargs: Any) -> None:
        for name in FIELDS:
            setattr(self, name, kwargs.pop(name, None))
        kwargs.pop("_commit_hash", None)
        self._from_model_config = kwargs.pop("_from_model_config", None)
        self.transformers_version = kwargs.pop("transformers_version", None)
        if not self._from_model_config:
            # Unknown keys are kept (a newer file, or a model's own extras).
            for key, value in kwargs.items():
                setattr(self, key, value)
        self.validate()

    # -- checks ------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise on values no generation can use (others are checked at `generate` time)."""
        if self.early_stopping not in (None, True, False, "never"):
            raise ValueError(
                f"`early_stopping` must be a boolean or 'never', but is {self.early_stopping}.")
        if self.max_new_tokens is not None and self.max_new_tokens <= 0:
            raise ValueError(
                f"`max_new_tokens` must be greater than 0, but is {self.max_new_tokens}.")
        if self.pad_token_id is not None and isinstance(self.pad_token_id, int) \
                and self.pad_token_id < 0:
            raise ValueError(f"`pad_token_id` must be non-negative, but is {self.pad_token_id}.")
        if self.num_return_sequences is not None and self.num_return_sequences > 1:
            if self.num_beams is None or self.num_beams == 1:
                if not self.do_sample:
                    raise ValueError(
                        "Greedy methods (do_sample != True) without beam search do not support "
                        f"`num_return_sequences` different than 1 (got "
                        f"{self.num_return_sequences}).")
            elif self.num_return_sequences > self.num_beams:
                raise ValueError(
                    f"`num_return_sequences` ({self.num_return_sequences}) has to be smaller or "
                    f"equal to `num_beams` ({self.num_beams}).")

    # -- updating ----------------------------------------------------------------------------
    def update(self, defaults_only: bool = False, allow_custom_entries: bool = False,
               **kwargs: Any) -> dict[str, Any]:
        """Set the attributes named in kwargs (only unset ones with `defaults_only`); returns
        the kwargs that are not attributes of this config."""
        used = set()
        for key, value in kwargs.items():
            if allow_custom_entries and not hasattr(self, key):
                setattr(self, key, value)
                used.add(key)
            elif hasattr(self, key) and key not in _METADATA:
                if not defaults_only or getattr(self, key) is None:
                    setattr(self, key, value)
                used.add(key)
        self.validate()
        return {k: v for k, v in kwargs.items() if k not in used}

    @staticmethod
    def global_defaults() -> dict[str, Any]:
        return dict(GLOBAL_DEFAULTS)

    # -- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out = {k: copy.deepcopy(v) for k, v in self.__dict__.items()
               if not k.startswith("_") or k == "_from_model_config"}
        out["transformers_version"] = out.get("transformers_version") or "5.0.0"
        from cove import __version__

        out["cove_version"] = __version__
        return out

    def to_diff_dict(self) -> dict[str, Any]:
        """Only what differs from `GenerationConfig()` (what generation_config.json holds)."""
        default = GenerationConfig().to_dict()
        return {k: v for k, v in self.to_dict().items()
                if k not in default or k in ("transformers_version", "cove_version")
                or v != default[k]}

    def to_json_string(self, use_diff: bool = True, ignore_metadata: bool = False) -> str:
        data = self.to_diff_dict() if use_diff else self.to_dict()
        if ignore_metadata:
            for key in _METADATA:
                data.pop(key, None)
        return json.dumps(_jsonable(data), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: str | os.PathLike, use_diff: bool = True) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(self.to_json_string(use_diff=use_diff), encoding="utf-8")
        os.replace(tmp, path)

    def save_pretrained(self, save_directory: str | os.PathLike,
                        config_file_name: str | os.PathLike | None = None,
                        push_to_hub: bool = False, **kwargs: Any) -> None:
        """Write generation_config.json (the fields that differ from the defaults)."""
        self.validate()
        folder = Path(save_directory)
        if folder.is_file():
            raise AssertionError(f"Provided path ({folder}) should be a directory, not a file")
        folder.mkdir(parents=True, exist_ok=True)
        self.to_json_file(folder / (config_file_name or GENERATION_CONFIG_NAME))
        if push_to_hub:
            from cove.hub import HubApi

            repo_id = kwargs.pop("repo_id", folder.name)
            api = HubApi(endpoint=kwargs.pop("endpoint", None), token=kwargs.pop("token", None))
            api.create_repo(repo_id, private=bool(kwargs.pop("private", False)), exist_ok=True)
            api.upload_file(
                path_or_fileobj=str(folder / (config_file_name or GENERATION_CONFIG_NAME)),
                path_in_repo=str(config_file_name or GENERATION_CONFIG_NAME), repo_id=repo_id,
                commit_message=kwargs.pop("commit_message", None) or "Upload generation config",
            )

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> GenerationConfig:
        return_unused = kwargs.pop("return_unused_kwargs", False)
        config = cls(**{**config_dict, **kwargs})
        unused = config.update(**kwargs)
        return (config, unused) if return_unused else config

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> GenerationConfig:
        return cls.from_dict(_read_json(path))

    @classmethod
    def from_pretrained(cls, pretrained_model_name: str | os.PathLike,
                        config_file_name: str | os.PathLike | None = None,
                        **kwargs: Any) -> GenerationConfig:
        """From a folder or a Hub repository (revision=, token=, cache_dir=, ...); other
        kwargs override the file's values."""
        from cove.models.configuration import HUB_KWARGS
        from cove.models.files import resolve_file

        hub = {k: kwargs.pop(k) for k in list(kwargs) if k in HUB_KWARGS}
        name = str(config_file_name or GENERATION_CONFIG_NAME)
        path = resolve_file(pretrained_model_name, name, required=True, **hub)
        return cls.from_dict(_read_json(path), **kwargs)

    @classmethod
    def from_model_config(cls, model_config: Any) -> GenerationConfig:
        """The generation parameters a model's config.json carries (special tokens, and the
        generation keys older configs held)."""
        data = model_config if isinstance(model_config, dict) else model_config.to_dict()
        data = {k: v for k, v in data.items() if v is not None and k != "_from_model_config"}
        config = cls.from_dict(data, _from_model_config=True)
        if not config.return_dict_in_generate and any(
                getattr(config, f, False) for f in ("output_scores", "output_logits",
                                                    "output_attentions",
                                                    "output_hidden_states")):
            config.return_dict_in_generate = True
        return config

    # -- comparisons -------------------------------------------------------------------------
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GenerationConfig):
            return False
        return (self.to_json_string(use_diff=False, ignore_metadata=True)
                == other.to_json_string(use_diff=False, ignore_metadata=True))

    def __hash__(self) -> int:
        return hash(self.to_json_string(ignore_metadata=True))

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string(ignore_metadata=True)}"


def _read_json(path: str | os.PathLike) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "tolist"):
        return value.tolist()
    return value
