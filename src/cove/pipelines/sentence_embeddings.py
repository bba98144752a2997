"""sentence-similarity: one embedding per sentence, as sentence-transformers' `encode`.

transformers has no such pipeline; the Hub tags these models `sentence-similarity`, and
sentence-transformers describes them in `modules.json`: a Transformer (the model in the
repository), a Pooling (`1_Pooling/config.json`), then optional Dense projections and a
Normalize. Cove reads those configuration files and the Dense weights (never the code the
`type` fields name) and runs the same steps on its own model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cove.models import checkpoint as ckpt
from cove.models.files import resolve_file
from cove.pipelines.base import Pipeline

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
# sentence-transformers' older boolean keys, in the order their results are concatenated.
_LEGACY_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max",
                "pooling_mode_mean_tokens": "mean",
                "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
                "pooling_mode_weightedmean_tokens": "weightedmean",
                "pooling_mode_lasttoken": "lasttoken"}
# Dense activations Cove accepts (by the class name in Dense/config.json); others are refused.
_ACTIVATIONS = {"Identity": nn.Identity, "Tanh": nn.Tanh, "ReLU": nn.ReLU, "GELU": nn.GELU,
                "Sigmoid": nn.Sigmoid, "SiLU": nn.SiLU}


class Normalize(nn.Module):
    """L2 normalisation of each embedding (sentence-transformers' Normalize module)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(x, p=2, dim=-1)


class Dense(nn.Module):
    """A linear projection then an activation (sentence-transformers' Dense module)."""

    def __init__(self, linear: nn.Linear, activation: nn.Module) -> None:
        super().__init__()
        self.linear = linear
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.linear(x))


@dataclass
class SentenceModules:
    """What follows the Transformer in a sentence-transformers model."""

    pooling: tuple[str, ...] = ("mean",)
    steps: list[nn.Module] = field(default_factory=list)  # Dense / Normalize, in order
    max_seq_length: int | None = None
    do_lower_case: bool = False


def pooling_modes(pooling: str | list[str] | tuple[str, ...] | dict[str, Any]) -> tuple[str, ...]:
    """Pooling modes from a name, a list of names or a 1_Pooling/config.json dict."""
    if isinstance(pooling, dict):
        if "pooling_mode" in pooling:
            pooling = pooling["pooling_mode"]
        else:
            pooling = [mode for key, mode in _LEGACY_KEYS.items() if pooling.get(key)] or ["mean"]
    modes = (pooling,) if isinstance(pooling, str) else tuple(pooling)
    for mode in modes:
        if mode not in POOLING_MODES:
            raise ValueError(f"Unknown pooling mode {mode!r}: use one of "
                             f"{', '.join(POOLING_MODES)}.")
    if not modes:
        raise ValueError("pooling needs at least one mode.")
    return modes


def pool(tokens: torch.Tensor, modes: tuple[str, ...]) -> torch.Tensor:
    """One vector from the hidden states of one sentence's real tokens [n, hidden]: the
    modes' results concatenated (float32 sums, as sentence-transformers for half types)."""
    x = tokens.float()
    n = x.shape[0]
    parts = []
    for mode in modes:
        if mode == "cls":
            parts.append(x[0])
        elif mode == "max":
            parts.append(x.max(0).values)
        elif mode == "mean":
            parts.append(x.sum(0) / n)
        elif mode == "mean_sqrt_len_tokens":
            parts.append(x.sum(0) / n ** 0.5)
        elif mode == "weightedmean":
            weights = torch.arange(1, n + 1, dtype=x.dtype, device=x.device)[:, None]
            parts.append((x * weights).sum(0) / weights.sum())
        else:  # lasttoken
            parts.append(x[-1])
    return torch.cat(parts)


def read_modules(name: str, **hub: Any) -> SentenceModules | None:
    """The modules of a sentence-transformers model folder or repository; None without
    modules.json."""
    path = resolve_file(name, "modules.json", **hub)
    if path is None:
        return None
    entries = _json(path)
    if not isinstance(entries, list):
        raise ValueError(f"{path}: modules.json must be a list of modules.")
    modules = SentenceModules()
    kinds = []
    for entry in sorted(entries, key=lambda e: e.get("idx", 0)):
        kind = str(entry.get("type", "")).rpartition(".")[2]
        folder = entry.get("path", "")
        kinds.append(kind)
        if kind == "Transformer":
            if folder:
                raise ValueError(f"{name}: Cove loads the Transformer from the repository root, "
                                 f"but modules.json puts it in {folder!r}.")
            config = resolve_file(name, "sentence_bert_config.json", **hub)
            if config is not None:
                settings = _json(config)
                modules.max_seq_length = settings.get("max_seq_length")
                modules.do_lower_case = bool(settings.get("do_lower_case", False))
        elif kind == "Pooling":
            config = resolve_file(name, "config.json", subfolder=folder or None, required=True,
                                  **hub)
            modules.pooling = pooling_modes(_json(config))
        elif kind == "Dense":
            modules.steps.append(_read_dense(name, folder, hub))
        elif kind == "Normalize":
            modules.steps.append(Normalize())
        else:
            raise ValueError(f"{name}: the sentence-transformers module {entry.get('type')!r} "
                             "is not supported by Cove (Transformer, Pooling, Dense and "
                             "Normalize are).")
    if kinds[:2] != ["Transformer", "Pooling"]:
        raise ValueError(f"{name}: modules.json must start with a Transformer then a Pooling "
                         f"module, got {', '.join(kinds) or 'none'}.")
    return modules


def _read_dense(name: str, folder: str, hub: dict[str, Any]) -> Dense:
    sub = {"subfolder": folder or None, **hub}
    config = _json(resolve_file(name, "config.json", required=True, **sub))
    activation = str(config.get("activation_function", "torch.nn.modules.activation.Tanh"))
    if activation.rpartition(".")[2] not in _ACTIVATIONS:
        raise ValueError(f"{name}/{folder}: the Dense activation {activation!r} is not "
                         f"supported (use one of {', '.join(_ACTIVATIONS)}).")
    weights = (resolve_file(name, "model.safetensors", **sub)
               or resolve_file(name, "pytorch_model.bin", **sub))
    if weights is None:
        raise FileNotFoundError(f"{name}/{folder}: no model.safetensors or pytorch_model.bin "
                                "for the Dense module.")
    state = ckpt.read_weights([weights])
    linear = nn.Linear(config["in_features"], config["out_features"],
                       bias=config.get("bias", True))
    try:
        linear.load_state_dict({k.removeprefix("linear."): v for k, v in state.items()})
    except RuntimeError as e:
        raise ValueError(f"{name}/{folder}: the Dense weights do not match its config.json "
                         f"({str(e).splitlines()[-1].strip()}).") from None
    return Dense(linear, _ACTIVATIONS[activation.rpartition(".")[2]]()).eval()


def _json(path: Any) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({e}).") from None


class SentenceEmbeddingsPipeline(Pipeline):
    """One embedding per sentence: a list of floats (`return_tensors=True`: a 1-D tensor).

    Pooling, projections and normalisation come from the repository's modules.json;
    `pooling=` ("mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken", or
    a list of them, concatenated) and `normalize=` override them, and are required for a
    model without modules.json. Inputs longer than max_seq_length (sentence_bert_config.json,
    else the tokenizer's model_max_length) are truncated, as sentence-transformers does.
    """

    task = "sentence-similarity"
    default_batch_size = 32

    def __init__(self, model: Any, tokenizer: Any, *, modules: SentenceModules | None = None,
                 **kwargs: Any) -> None:
        if modules is None and kwargs.get("pooling") is None:
            raise ValueError("This model has no modules.json (it is not a sentence-transformers "
                             "model): pass pooling= ('mean', 'cls', ...) to choose how token "
                             "vectors become one sentence vector.")
        self.modules = modules or SentenceModules()
        super().__init__(model, tokenizer, **kwargs)
        for step in self.modules.steps:
            step.to(self.device)

    @classmethod
    def _from_repository(cls, name: str, hub: dict[str, Any]) -> dict[str, Any]:
        return {"modules": read_modules(name, **hub)}

    def _sanitize(self, pooling: Any = None, normalize: bool | None = None,
                  return_tensors: bool | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if pooling is not None:
            params["pooling"] = pooling_modes(pooling)
        if normalize is not None:
            params["normalize"] = bool(normalize)
        if return_tensors is not None:
            params["return_tensors"] = bool(return_tensors)
        return params

    def _max_length(self) -> int | None:
        limit = self.modules.max_seq_length or getattr(self.tokenizer, "model_max_length", None)
        positions = getattr(self.model.config, "max_position_embeddings", None)
        # Tokenizers without a limit report a huge model_max_length: the model's is the real one.
        if limit is None or (positions is not None and limit > positions):
            limit = positions
        return limit

    def _tokenize(self, items: list[str], params: dict[str, Any]) -> dict[str, list]:
        if self.modules.do_lower_case:
            items = [item.lower() for item in items]
        limit = self._max_length()
        if limit is None:
            return dict(self.tokenizer(items))
        return dict(self.tokenizer(items, truncation=True, max_length=limit))

    def _steps(self, params: dict[str, Any]) -> list[nn.Module]:
        steps = list(self.modules.steps)
        normalize = params.get("normalize")
        if normalize is False:
            steps = [s for s in steps if not isinstance(s, Normalize)]
        elif normalize and not any(isinstance(s, Normalize) for s in steps):
            steps.append(Normalize())
        return steps

    def _postprocess(self, rows, enc, batch, outputs, params) -> list[Any]:
        hidden = outputs[0]
        width = hidden.shape[1]
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        modes = params.get("pooling") or self.modules.pooling
        pooled = []
        for b, i in enumerate(rows):
            n = len(enc["input_ids"][i])
            pooled.append(pool(hidden[b, width - n:] if left else hidden[b, :n], modes))
        vectors = torch.stack(pooled)
        for step in self._steps(params):
            vectors = step(vectors.to(_dtype_of(step, vectors.dtype)))
        vectors = vectors.float().cpu()
        if params.get("return_tensors"):
            return [v.clone() for v in vectors]
        return vectors.tolist()


def _dtype_of(module: nn.Module, default: torch.dtype) -> torch.dtype:
    return next((p.dtype for p in module.parameters()), default)
