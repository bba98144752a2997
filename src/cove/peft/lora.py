"""LoRA (and DoRA): a low-rank update B @ A beside a frozen layer.

A targeted layer is replaced by a `Linear` (for nn.Linear, GPT-2's Conv1D, or any layer
exposing `in_features`, `out_features` and `forward`, such as a quantised linear) or an
`Embedding`, which keeps the original as `base_layer` and adds, per adapter, `lora_A` and
`lora_B` (for embeddings `lora_embedding_A`/`lora_embedding_B`), scaled by lora_alpha / r
(lora_alpha / sqrt(r) with rsLoRA). DoRA adds a magnitude vector per output feature: the
adapted weight is magnitude * (W + scale * B @ A) / ||W + scale * B @ A|| (row norms).
"""

from __future__ import annotations

import math
import re
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from cove.models.fused import LowRankParts, low_rank_linear
from cove.peft.config import LoraConfig
from cove.peft.tuners import (
    BaseTuner,
    BaseTunerLayer,
    adapter_dtype,
    fix_fan_in_fan_out,
    float_weight,
    linear_shape,
    set_weight,
    transpose,
    weight_place,
)

# model_type -> the layers LoRA targets when target_modules is not given (PEFT's defaults)
DEFAULT_TARGETS = {
    "bert": ["query", "value"], "roberta": ["query", "value"], "xlm-roberta": ["query", "value"],
    "gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"], "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"], "qwen3": ["q_proj", "v_proj"],
    "t5": ["q", "v"], "bart": ["q_proj", "v_proj"],
    # PEFT has no Marian default; its attention is BART's, so BART's default
    "marian": ["q_proj", "v_proj"],
}


class DoraLinearLayer(nn.Module):
    """DoRA's magnitude (`weight`, one entry per output feature) and its share of the output."""

    def __init__(self, fan_in_fan_out: bool) -> None:
        super().__init__()
        self.fan_in_fan_out = fan_in_fan_out

    def weight_norm(self, weight: torch.Tensor, lora_weight: torch.Tensor,
                    scaling: float) -> torch.Tensor:
        weight = transpose(weight, self.fan_in_fan_out)
        return torch.linalg.norm(weight + scaling * lora_weight, dim=1).to(weight.dtype)

    def update_layer(self, base_layer: nn.Module, lora_A: torch.Tensor, lora_B: torch.Tensor,
                     scaling: float) -> None:
        with torch.no_grad():
            weight = float_weight(base_layer).to(lora_A.dtype)
            norm = self.weight_norm(weight, lora_B @ lora_A, scaling)
        self.weight = nn.Parameter(norm, requires_grad=True)

    def forward(self, x: torch.Tensor, lora_A: nn.Module, lora_B: nn.Module, scaling: float,
                base_layer: nn.Module) -> torch.Tensor:
        """What DoRA adds to the base layer's output for input `x` (dropout applied)."""
        weight = float_weight(base_layer).to(x.dtype)
        lora_weight = lora_B.weight @ lora_A.weight
        # The norm is a constant for the gradient (DoRA paper, section 4.3): saves memory.
        norm = self.weight_norm(weight, lora_weight, scaling).detach()
        factor = (self.weight / norm).view(1, -1)
        base = F.linear(x, transpose(weight, self.fan_in_fan_out))
        return (factor - 1) * base + factor * lora_B(lora_A(x)) * scaling


class LoraLayer(BaseTunerLayer):
    adapter_layer_names: ClassVar[tuple[str, ...]] = (
        "lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")
    other_param_names: ClassVar[tuple[str, ...]] = ("r", "lora_alpha", "scaling",
                                                    "lora_dropout")

    def _init_lora(self, base_layer: nn.Module, in_features: int, out_features: int) -> None:
        self.base_layer = base_layer
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.use_dora: dict[str, bool] = {}
        self.lora_dropout = nn.ModuleDict()
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_embedding_A = nn.ParameterDict()
        self.lora_embedding_B = nn.ParameterDict()
        self.lora_magnitude_vector = nn.ModuleDict()
        self.in_features, self.out_features = in_features, out_features
        self._dora_norms: dict[str, torch.Tensor] = {}  # for unmerging a merged DoRA adapter
        self._init_tuner_state()

    def _set_scale(self, adapter_name: str, r: int, lora_alpha: float, use_rslora: bool,
                   dropout: float) -> None:
        if r <= 0:
            raise ValueError(f"The LoRA rank must be a positive int, got {r}.")
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.scaling[adapter_name] = lora_alpha / (math.sqrt(r) if use_rslora else r)
        self.lora_dropout[adapter_name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def _merge_check(self, merged: torch.Tensor, adapter_name: str, safe_merge: bool) -> None:
        if safe_merge and not torch.isfinite(merged).all():
            raise ValueError(f"NaNs or infinities in the weights merged with adapter "
                             f"{adapter_name!r}: the adapter is broken.")


class Linear(nn.Module, LoraLayer):
    """LoRA on a linear layer (nn.Linear, Conv1D with fan_in_fan_out, quantised linears)."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, *, r: int, lora_alpha: float,
                 lora_dropout: float = 0.0, fan_in_fan_out: bool = False,
                 init_lora_weights: bool | str = True, use_rslora: bool = False,
                 use_dora: bool = False, autocast_adapter_dtype: bool = True) -> None:
        super().__init__()
        shape = linear_shape(base_layer)
        if shape is None:
            raise TypeError(f"LoRA's Linear needs a layer with in_features and out_features, "
                            f"got {type(base_layer).__name__}.")
        self._init_lora(base_layer, *shape)
        self.fan_in_fan_out = fan_in_fan_out
        self.active_adapters = [adapter_name]
        self.update_layer(adapter_name, r, lora_alpha, lora_dropout, init_lora_weights,
                          use_rslora, use_dora, autocast_adapter_dtype)

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, lora_dropout: float,
                     init_lora_weights: bool | str, use_rslora: bool, use_dora: bool,
                     autocast_adapter_dtype: bool = True) -> None:
        """Add adapter `adapter_name` to this layer."""
        self._set_scale(adapter_name, r, lora_alpha, use_rslora, lora_dropout)
        device, base_dtype = weight_place(self.base_layer)
        dtype = adapter_dtype(base_dtype, autocast_adapter_dtype)
        # Created as PEFT creates them (nn.Linear's own init, then the LoRA init), so a seeded
        # run draws the same initial weights as PEFT.
        self.lora_A[adapter_name] = nn.Linear(self.in_features, r, bias=False)
        self.lora_B[adapter_name] = nn.Linear(r, self.out_features, bias=False)
        self.lora_A[adapter_name].to(device, dtype)
        self.lora_B[adapter_name].to(device, dtype)
        if isinstance(init_lora_weights, str) and init_lora_weights.lower() == "pissa":
            self._pissa_init(adapter_name)
        elif init_lora_weights is not False:
            self._reset(adapter_name, init_lora_weights)
        self.use_dora[adapter_name] = use_dora
        if use_dora:
            dora = DoraLinearLayer(self.fan_in_fan_out)
            dora.update_layer(self.base_layer, self.lora_A[adapter_name].weight,
                              self.lora_B[adapter_name].weight, self.scaling[adapter_name])
            self.lora_magnitude_vector[adapter_name] = dora
        self.set_adapter(self.active_adapters)

    def _reset(self, adapter_name: str, init: bool | str) -> None:
        A, B = self.lora_A[adapter_name].weight, self.lora_B[adapter_name].weight
        if init is True:
            nn.init.kaiming_uniform_(A, a=math.sqrt(5))  # nn.Linear's own init (LoRA paper)
        elif str(init).lower() == "gaussian":
            nn.init.normal_(A, std=1 / self.r[adapter_name])
        else:
            raise ValueError(f"Unknown init_lora_weights={init!r}.")
        nn.init.zeros_(B)  # B = 0: the adapter starts as a no-op

    def _pissa_init(self, adapter_name: str) -> None:
        """PiSSA: A and B from the top r singular vectors of W, which keeps the rest."""
        r, scale = self.r[adapter_name], self.scaling[adapter_name]
        with torch.no_grad():
            w = transpose(float_weight(self.base_layer).float(), self.fan_in_fan_out)
            U, S, Vh = torch.linalg.svd(w, full_matrices=False)
            root = torch.sqrt(S[:r] / scale)
            A = torch.diag(root) @ Vh[:r]
            B = U[:, :r] @ torch.diag(root)
            self.lora_A[adapter_name].weight.copy_(A)
            self.lora_B[adapter_name].weight.copy_(B)
            set_weight(self.base_layer, transpose(w - scale * B @ A, self.fan_in_fan_out))

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        """scale * B @ A, in the base weight's layout ([in, out] for fan_in_fan_out)."""
        A, B = self.lora_A[adapter_name].weight, self.lora_B[adapter_name].weight
        return transpose(B @ A, self.fan_in_fan_out) * self.scaling[adapter_name]

    def _merge_one(self, adapter_name: str, safe_merge: bool) -> None:
        with torch.no_grad():
            weight = float_weight(self.base_layer)
            delta = self.delta_weight(adapter_name).to(weight.dtype)
            if not self.use_dora.get(adapter_name):
                merged = weight + delta
            else:
                dora = self.lora_magnitude_vector[adapter_name]
                norm = dora.weight_norm(weight, transpose(delta, self.fan_in_fan_out), 1.0)
                self._dora_norms[adapter_name] = norm
                factor = (dora.weight / norm).view(-1, 1).to(weight.dtype)
                merged = transpose(factor * transpose(weight + delta, self.fan_in_fan_out),
                                   self.fan_in_fan_out)
            self._merge_check(merged, adapter_name, safe_merge)
            set_weight(self.base_layer, merged)

    def _unmerge_one(self, adapter_name: str) -> None:
        with torch.no_grad():
            weight = float_weight(self.base_layer)
            delta = self.delta_weight(adapter_name).to(weight.dtype)
            if not self.use_dora.get(adapter_name):
                set_weight(self.base_layer, weight - delta)
                return
            dora = self.lora_magnitude_vector[adapter_name]
            factor = (dora.weight / self._dora_norms.pop(adapter_name)).view(-1, 1)
            unscaled = transpose(weight, self.fan_in_fan_out) / factor.to(weight.dtype)
            set_weight(self.base_layer, transpose(unscaled, self.fan_in_fan_out) - delta)

    def _fusable(self, x: torch.Tensor, names: list[str]) -> bool:
        """Whether the active adapters can run as one merged-weight GEMM (`low_rank_linear`):
        a plain float nn.Linear base, no dropout, no DoRA, one dtype throughout."""
        base = self.base_layer
        if type(base) is not nn.Linear or self.fan_in_fan_out or not names:
            return False
        dtype = base.weight.dtype
        return x.dtype == dtype and all(
            isinstance(self.lora_dropout[n], nn.Identity) and not self.use_dora.get(n)
            and self.lora_A[n].weight.dtype == dtype and self.lora_B[n].weight.dtype == dtype
            for n in names)

    def low_rank_parts(self, x: torch.Tensor) -> LowRankParts | None:
        """This layer as base weight, bias and (A, B, scale) per active adapter, when it is
        that plain sum for input `x` (see `_fusable`): how a model's training forward runs it,
        alone or stacked with the other projections of the same input, as one GEMM."""
        if self.disable_adapters or self.merged:
            return None
        names = [n for n in self.active_adapters if n in self.lora_A]
        if not self._fusable(x, names):
            return None
        return self.base_layer.weight, self.base_layer.bias, [
            (self.lora_A[n].weight, self.lora_B[n].weight, self.scaling[n]) for n in names]

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters or self.merged:
            return self.base_layer(x, *args, **kwargs)
        if torch.is_grad_enabled() and not args and not kwargs:
            parts = self.low_rank_parts(x)
            if parts is not None:
                # Training: one GEMM with W + s * B @ A, keeping only x (and x @ A^T) for the
                # backward pass, instead of the base GEMM, two thin ones, a scale and an add.
                return low_rank_linear(x, *parts)
        result = self.base_layer(x, *args, **kwargs)
        out_dtype = result.dtype
        for name in self.active_adapters:
            if name not in self.lora_A:
                continue
            A, B = self.lora_A[name], self.lora_B[name]
            x_in = self.lora_dropout[name](x.to(A.weight.dtype))
            if self.use_dora.get(name):
                result = result + self.lora_magnitude_vector[name](
                    x_in, A, B, self.scaling[name], self.base_layer)
            else:
                result = result + B(A(x_in)) * self.scaling[name]
        return result.to(out_dtype)

    def __repr__(self) -> str:
        return "lora." + super().__repr__()


class Embedding(nn.Module, LoraLayer):
    """LoRA on an nn.Embedding: the looked-up rows of A (r x vocab) through B (dim x r)."""

    def __init__(self, base_layer: nn.Embedding, adapter_name: str, *, r: int,
                 lora_alpha: float, lora_dropout: float = 0.0,
                 init_lora_weights: bool | str = True, use_rslora: bool = False,
                 use_dora: bool = False, autocast_adapter_dtype: bool = True) -> None:
        super().__init__()
        self._init_lora(base_layer, base_layer.num_embeddings, base_layer.embedding_dim)
        self.active_adapters = [adapter_name]
        self.update_layer(adapter_name, r, lora_alpha, lora_dropout, init_lora_weights,
                          use_rslora, use_dora, autocast_adapter_dtype)

    def update_layer(self, adapter_name: str, r: int, lora_alpha: float, lora_dropout: float,
                     init_lora_weights: bool | str, use_rslora: bool, use_dora: bool,
                     autocast_adapter_dtype: bool = True) -> None:
        if use_dora:
            raise ValueError("DoRA on embedding layers is not supported by Cove yet: leave "
                             "the embeddings out of target_modules, or use_dora=False.")
        if isinstance(init_lora_weights, str) and init_lora_weights.lower() == "pissa":
            raise ValueError("PiSSA initialisation applies to linear layers only: leave the "
                             "embeddings out of target_modules.")
        self._set_scale(adapter_name, r, lora_alpha, use_rslora, lora_dropout)
        device, base_dtype = weight_place(self.base_layer)
        dtype = adapter_dtype(base_dtype, autocast_adapter_dtype)
        A = torch.randn((r, self.in_features))
        B = torch.randn((self.out_features, r))
        self.lora_embedding_A[adapter_name] = nn.Parameter(A.to(device, dtype))
        self.lora_embedding_B[adapter_name] = nn.Parameter(B.to(device, dtype))
        if init_lora_weights is not False:
            # A = 0 and B normal (the LoRA paper's choice for embeddings): starts as a no-op.
            nn.init.zeros_(self.lora_embedding_A[adapter_name])
            nn.init.normal_(self.lora_embedding_B[adapter_name])
        self.use_dora[adapter_name] = False
        self.set_adapter(self.active_adapters)

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        A, B = self.lora_embedding_A[adapter_name], self.lora_embedding_B[adapter_name]
        return (B @ A).T * self.scaling[adapter_name]

    def _merge_one(self, adapter_name: str, safe_merge: bool) -> None:
        with torch.no_grad():
            weight = float_weight(self.base_layer)
            merged = weight + self.delta_weight(adapter_name).to(weight.dtype)
            self._merge_check(merged, adapter_name, safe_merge)
            set_weight(self.base_layer, merged)

    def _unmerge_one(self, adapter_name: str) -> None:
        with torch.no_grad():
            weight = float_weight(self.base_layer)
            set_weight(self.base_layer, weight - self.delta_weight(adapter_name).to(weight.dtype))

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters or self.merged:
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        out_dtype = result.dtype
        base = self.base_layer
        for name in self.active_adapters:
            if name not in self.lora_embedding_A:
                continue
            A, B = self.lora_embedding_A[name], self.lora_embedding_B[name]
            rows = F.embedding(x, A.T, base.padding_idx, base.max_norm, base.norm_type,
                               base.scale_grad_by_freq, base.sparse)
            result = result + (rows @ B.T) * self.scaling[name]
        return result.to(out_dtype)

    def __repr__(self) -> str:
        return "lora." + super().__repr__()


def pattern_value(patterns: dict[str, Any], key: str, default: Any) -> Any:
    """rank_pattern / alpha_pattern: the first pattern P with `key` ending in P (at a dot,
    P a regex) gives the value."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", key):
            return value
    return default


class LoraModel(BaseTuner):
    """The model with LoRA layers in place of its targeted layers (PEFT's LoraModel)."""

    prefix = "lora_"
    default_targets = DEFAULT_TARGETS

    def __init__(self, model: nn.Module, peft_config: dict[str, Any], adapter_name: str,
                 autocast_adapter_dtype: bool = True) -> None:
        self._autocast = autocast_adapter_dtype
        super().__init__(model, peft_config, adapter_name)

    def _create_and_replace(self, config: LoraConfig, adapter_name: str, target: nn.Module,
                            key: str, parent: nn.Module, attr: str) -> None:
        r = pattern_value(config.rank_pattern or {}, key, config.r)
        alpha = pattern_value(config.alpha_pattern or {}, key, config.lora_alpha)
        options = dict(r=r, lora_alpha=alpha, lora_dropout=config.lora_dropout,
                       init_lora_weights=config.init_lora_weights,
                       use_rslora=config.use_rslora, use_dora=config.use_dora,
                       autocast_adapter_dtype=self._autocast)
        if isinstance(target, LoraLayer):
            target.update_layer(adapter_name, **options)
            return
        if isinstance(target, nn.Embedding):
            new: nn.Module = Embedding(target, adapter_name, **options)
        elif linear_shape(target) is not None:
            fix_fan_in_fan_out(config, target, key)
            new = Linear(target, adapter_name, fan_in_fan_out=config.fan_in_fan_out, **options)
        else:
            raise ValueError(f"Target module {key} ({type(target).__name__}) is not supported "
                             "by LoRA: Cove wraps nn.Linear, nn.Embedding, GPT-2's Conv1D and "
                             "layers exposing in_features/out_features. Target its linear "
                             "layers instead.")
        setattr(parent, attr, new)

    def _mark_only_adapters_as_trainable(self, model: nn.Module) -> None:
        super()._mark_only_adapters_as_trainable(model)
        for adapter in self.active_adapters:
            bias = self.peft_config[adapter].bias if adapter in self.peft_config else "none"
            if bias == "all":
                for name, param in model.named_parameters():
                    if "bias" in name and ".original_module." not in name:
                        param.requires_grad_(True)
            elif bias == "lora_only":
                for module in model.modules():
                    if isinstance(module, LoraLayer) and module.bias is not None:
                        module.bias.requires_grad_(True)
