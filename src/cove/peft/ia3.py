"""(IA)^3: a learned vector per targeted layer that scales its output (shape [out, 1]), or,
for feed-forward layers, its input (shape [1, in]). Initialised to ones: a no-op."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from cove.peft.config import IA3Config
from cove.peft.tuners import (
    BaseTuner,
    BaseTunerLayer,
    adapter_dtype,
    fix_fan_in_fan_out,
    float_weight,
    linear_shape,
    matches,
    set_weight,
    weight_place,
)

# model_type -> (target modules, feed-forward modules) when not given (PEFT's defaults)
DEFAULT_TARGETS = {
    "bert": (["key", "value", "output.dense"], ["output.dense"]),
    "roberta": (["key", "value", "output.dense"], ["output.dense"]),
    "gpt2": (["c_attn", "mlp.c_proj"], ["mlp.c_proj"]),
    "llama": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
    "mistral": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
    "qwen2": (["q_proj", "v_proj", "down_proj"], ["down_proj"]),
    "qwen3": (["q_proj", "v_proj", "down_proj"], ["down_proj"]),
    "t5": (["k", "v", "wo"], ["wo"]),
    "bart": (["q_proj", "v_proj", "fc2"], ["fc2"]),
}


class Linear(nn.Module, BaseTunerLayer):
    """IA3 on a linear layer (nn.Linear, Conv1D, or a layer exposing in/out_features)."""

    adapter_layer_names: ClassVar[tuple[str, ...]] = ("ia3_l",)

    def __init__(self, base_layer: nn.Module, adapter_name: str, *, is_feedforward: bool,
                 fan_in_fan_out: bool, init_ia3_weights: bool = True,
                 autocast_adapter_dtype: bool = True) -> None:
        super().__init__()
        shape = linear_shape(base_layer)
        if shape is None:
            raise TypeError(f"IA3 needs a layer with in_features and out_features, got "
                            f"{type(base_layer).__name__}.")
        self.base_layer = base_layer
        self.in_features, self.out_features = shape
        self.is_feedforward = is_feedforward
        self.fan_in_fan_out = fan_in_fan_out
        self.ia3_l = nn.ParameterDict()
        self._init_tuner_state()
        self.active_adapters = [adapter_name]
        self.update_layer(adapter_name, init_ia3_weights, autocast_adapter_dtype)

    def update_layer(self, adapter_name: str, init_ia3_weights: bool,
                     autocast_adapter_dtype: bool = True) -> None:
        shape = (1, self.in_features) if self.is_feedforward else (self.out_features, 1)
        device, base_dtype = weight_place(self.base_layer)
        vector = torch.randn(shape)
        if init_ia3_weights:
            vector = torch.ones(shape)
        dtype = adapter_dtype(base_dtype, autocast_adapter_dtype)
        self.ia3_l[adapter_name] = nn.Parameter(vector.to(device, dtype))
        self.set_adapter(self.active_adapters)

    def _scale(self, adapter_name: str, weight: torch.Tensor) -> torch.Tensor:
        """The vector shaped to multiply the base weight in its own layout."""
        vector = self.ia3_l[adapter_name].to(weight.dtype)
        if self.is_feedforward:  # scales inputs: the weight's in-columns
            return vector.T if self.fan_in_fan_out else vector
        return vector if not self.fan_in_fan_out else vector.T  # scales outputs: out-rows

    def _merge_one(self, adapter_name: str, safe_merge: bool) -> None:
        with torch.no_grad():
            weight = float_weight(self.base_layer)
            merged = weight * self._scale(adapter_name, weight)
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(f"NaNs or infinities in the weights merged with adapter "
                                 f"{adapter_name!r}: the adapter is broken.")
            set_weight(self.base_layer, merged)
            bias = getattr(self.base_layer, "bias", None)
            if not self.is_feedforward and bias is not None:
                bias.mul_(self.ia3_l[adapter_name].reshape(bias.shape).to(bias.dtype))

    def _unmerge_one(self, adapter_name: str) -> None:
        with torch.no_grad():
            weight = float_weight(self.base_layer)
            # The small constant keeps a zero entry from dividing by zero (as PEFT).
            set_weight(self.base_layer, weight / (self._scale(adapter_name, weight) + 1e-8))
            bias = getattr(self.base_layer, "bias", None)
            if not self.is_feedforward and bias is not None:
                bias.div_(self.ia3_l[adapter_name].reshape(bias.shape).to(bias.dtype) + 1e-8)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters or self.merged:
            return self.base_layer(x, *args, **kwargs)
        scaling = 1
        for name in self.active_adapters:
            if name in self.ia3_l:
                scaling = scaling * self.ia3_l[name].flatten()
        if self.is_feedforward:
            dtype = x.dtype
            return self.base_layer((x * scaling).to(dtype), *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        return (result * scaling).to(result.dtype)

    def __repr__(self) -> str:
        return "ia3." + super().__repr__()


class IA3Model(BaseTuner):
    """The model with IA3 layers in place of its targeted layers (PEFT's IA3Model)."""

    prefix = "ia3_"
    default_targets = {k: v[0] for k, v in DEFAULT_TARGETS.items()}
    shortens_targets = False

    def __init__(self, model: nn.Module, peft_config: dict[str, Any], adapter_name: str,
                 autocast_adapter_dtype: bool = True) -> None:
        self._autocast = autocast_adapter_dtype
        super().__init__(model, peft_config, adapter_name)

    def _prepare_config(self, config: IA3Config, model: nn.Module) -> IA3Config:
        if config.feedforward_modules is None:
            model_type = getattr(getattr(model, "config", None), "model_type", None)
            config.feedforward_modules = list(DEFAULT_TARGETS.get(model_type, ((), []))[1])
        return super()._prepare_config(config, model)

    def _create_and_replace(self, config: IA3Config, adapter_name: str, target: nn.Module,
                            key: str, parent: nn.Module, attr: str) -> None:
        if isinstance(target, Linear):
            target.update_layer(adapter_name, config.init_ia3_weights, self._autocast)
            return
        if linear_shape(target) is None:
            raise ValueError(f"Target module {key} ({type(target).__name__}) is not supported "
                             "by IA3: Cove wraps nn.Linear, GPT-2's Conv1D and layers exposing "
                             "in_features/out_features.")
        fix_fan_in_fan_out(config, target, key)
        feedforward = bool(config.feedforward_modules) and matches(config.feedforward_modules,
                                                                   key)
        setattr(parent, attr, Linear(target, adapter_name, is_feedforward=feedforward,
                                     fan_in_fan_out=config.fan_in_fan_out,
                                     init_ia3_weights=config.init_ia3_weights,
                                     autocast_adapter_dtype=self._autocast))
