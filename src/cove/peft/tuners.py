"""What the layer-injecting adapters (LoRA, IA3) share: finding the target modules, wrapping
them in adapter layers, modules_to_save copies, switching, merging and unloading adapters.

The module tree is PEFT's: `PeftModel.base_model` is the tuner (LoraModel, IA3Model), whose
`.model` is the user's model with each targeted layer replaced in place by an adapter layer
that keeps the original as `.base_layer`. Parameter names therefore equal PEFT's
(`base_model.model.<path>.lora_A.<adapter>.weight`).
"""

from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import nn

from cove.models.gpt2 import Conv1D

# Heads that "all-linear" leaves out of a classifier (PEFT's convention).
SEQ_CLS_HEAD_NAMES = ("score", "classifier")
EMBEDDING_LAYER_NAMES = ("embed_tokens", "lm_head")


# -- the adapter layers' common part --------------------------------------------------------------
class BaseTunerLayer:
    """Mixed into every adapter layer (an nn.Module holding `base_layer`).

    `adapter_layer_names` are the attributes holding per-adapter parameters (ModuleDicts or
    ParameterDicts keyed by adapter name); `other_param_names` per-adapter plain values.
    """

    adapter_layer_names: ClassVar[tuple[str, ...]] = ()
    other_param_names: ClassVar[tuple[str, ...]] = ()

    base_layer: nn.Module
    active_adapters: list[str]
    merged_adapters: list[str]
    disable_adapters: bool

    def _init_tuner_state(self) -> None:
        self.active_adapters = ["default"]
        self.merged_adapters = []
        self.disable_adapters = False

    def get_base_layer(self) -> nn.Module:
        return self.base_layer

    @property
    def weight(self) -> torch.Tensor:
        # Code that reads a wrapped layer's weight (tying, dtype checks) finds the original.
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.base_layer, "bias", None)

    @property
    def merged(self) -> bool:
        return bool(self.merged_adapters)

    @property
    def active_adapter(self) -> str:
        return self.active_adapters[0]

    def adapter_names(self) -> set[str]:
        return {name for attr in self.adapter_layer_names for name in getattr(self, attr)}

    def set_adapter(self, adapter_names: str | list[str]) -> None:
        """Make these adapters active; only active adapters' parameters train."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        for attr in self.adapter_layer_names:
            for key, value in getattr(self, attr).items():
                value.requires_grad_(key in names)
        self.active_adapters = names

    def enable_adapters(self, enabled: bool) -> None:
        if enabled:
            self.set_adapter(self.active_adapters)
        else:
            for attr in self.adapter_layer_names:
                getattr(self, attr).requires_grad_(False)
        self.disable_adapters = not enabled

    def delete_adapter(self, adapter_name: str) -> None:
        for attr in (*self.adapter_layer_names, *self.other_param_names):
            store = getattr(self, attr)
            if adapter_name in store:
                del store[adapter_name]
        if adapter_name in self.active_adapters:
            rest = sorted(self.adapter_names())
            self.active_adapters = [a for a in self.active_adapters if a != adapter_name] or \
                rest[:1]
            if self.active_adapters:
                self.set_adapter(self.active_adapters)

    def _active_here(self) -> list[str]:
        return [a for a in self.active_adapters if a in self.adapter_names()]

    def unmerge(self) -> None:
        while self.merged_adapters:
            self._unmerge_one(self.merged_adapters.pop())

    def merge(self, adapter_names: list[str] | None = None, safe_merge: bool = False) -> None:
        """Add the adapters' updates into the base layer's weight (see merge_and_unload)."""
        names = self._active_here() if adapter_names is None else adapter_names
        for name in names:
            if name in self.merged_adapters or name not in self.adapter_names():
                continue
            self._merge_one(name, safe_merge)
            self.merged_adapters.append(name)

    def _merge_one(self, adapter_name: str, safe_merge: bool) -> None:
        raise NotImplementedError

    def _unmerge_one(self, adapter_name: str) -> None:
        raise NotImplementedError


def float_weight(layer: nn.Module) -> torch.Tensor:
    """A base layer's weight as a float tensor: the parameter itself, or for a quantised layer
    (no `weight`, a `dequantize()`) a dequantised copy."""
    weight = getattr(layer, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.is_floating_point():
        return weight
    if callable(getattr(layer, "dequantize", None)):
        return layer.dequantize()
    raise TypeError(f"{type(layer).__name__} exposes neither a float `weight` nor "
                    "`dequantize()`: Cove cannot read its weight.")


def set_weight(layer: nn.Module, value: torch.Tensor) -> None:
    """Store a new weight (a merge): into the parameter, or requantised (`quantize_`)."""
    weight = getattr(layer, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.is_floating_point():
        with torch.no_grad():
            weight.copy_(value.to(weight.dtype))
        return
    if callable(getattr(layer, "quantize_", None)):
        layer.quantize_(value)
        return
    raise TypeError(f"Cannot merge an adapter into a {type(layer).__name__}: it has no float "
                    "`weight` and no `quantize_()` to store a new one. Use the adapter unmerged.")


def weight_place(layer: nn.Module) -> tuple[torch.device, torch.dtype | None]:
    """Where a base layer's weight lives, and its dtype (None when it is not float:
    quantised), without dequantising it."""
    weight = getattr(layer, "weight", None)
    if isinstance(weight, torch.Tensor):
        return weight.device, weight.dtype if weight.is_floating_point() else None
    tensor = next(iter([*layer.parameters(), *layer.buffers()]), None)
    return (tensor.device if tensor is not None else torch.device("cpu")), None


def adapter_dtype(base_dtype: torch.dtype | None, autocast: bool) -> torch.dtype:
    """Adapters of half-precision (or quantised) bases are kept in float32 (PEFT's
    autocast_adapter_dtype)."""
    if base_dtype is None or (autocast and base_dtype in (torch.float16, torch.bfloat16)):
        return torch.float32
    return base_dtype


def linear_shape(layer: nn.Module) -> tuple[int, int] | None:
    """(in_features, out_features) of a linear-like layer: nn.Linear, GPT-2's Conv1D, or any
    layer that exposes them (quantised linears); None for anything else."""
    if isinstance(layer, Conv1D):
        fan_in, fan_out = layer.weight.shape
        return int(fan_in), int(fan_out)
    fan_in, fan_out = getattr(layer, "in_features", None), getattr(layer, "out_features", None)
    if isinstance(fan_in, int) and isinstance(fan_out, int):
        return fan_in, fan_out
    return None


def fix_fan_in_fan_out(config: Any, target: nn.Module, key: str) -> None:
    """GPT-2's Conv1D stores its weight [in, out]: `fan_in_fan_out` must say so, and must not
    for a linear layer. As PEFT does, a wrong setting is corrected with a warning."""
    is_conv1d = isinstance(target, Conv1D)
    if is_conv1d and not config.fan_in_fan_out:
        warnings.warn("fan_in_fan_out is set to False but the target module is `Conv1D`. "
                      "Setting fan_in_fan_out to True.", stacklevel=3)
        config.fan_in_fan_out = True
    elif not is_conv1d and config.fan_in_fan_out:
        warnings.warn(f"fan_in_fan_out is set to True but the target module {key} is a "
                      "linear layer. Setting fan_in_fan_out to False.", stacklevel=3)
        config.fan_in_fan_out = False


def transpose(weight: torch.Tensor, fan_in_fan_out: bool) -> torch.Tensor:
    return weight.T if fan_in_fan_out else weight


# -- modules_to_save ------------------------------------------------------------------------------
class ModulesToSaveWrapper(nn.Module):
    """A module trained and saved whole: per adapter a trainable copy, used while that adapter is
    active; `original_module` (frozen) otherwise."""

    def __init__(self, module_to_save: nn.Module, adapter_name: str) -> None:
        super().__init__()
        self.original_module = module_to_save
        self.modules_to_save = nn.ModuleDict()
        self.active_adapter = adapter_name
        self.disable_adapters = False
        self.update(adapter_name)
        self.original_module.requires_grad_(False)

    def update(self, adapter_name: str) -> None:
        if adapter_name not in self.modules_to_save:
            self.modules_to_save[adapter_name] = copy.deepcopy(self.original_module)
        self.modules_to_save[adapter_name].requires_grad_(True)

    def _current(self) -> nn.Module:
        if self.disable_adapters or self.active_adapter not in self.modules_to_save:
            return self.original_module
        return self.modules_to_save[self.active_adapter]

    @property
    def weight(self) -> torch.Tensor:
        return self._current().weight

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._current()(*args, **kwargs)

    def set_adapter(self, adapter_name: str) -> None:
        for name, module in self.modules_to_save.items():
            module.requires_grad_(name == adapter_name)
        self.active_adapter = adapter_name

    def enable_adapters(self, enabled: bool) -> None:
        self.disable_adapters = not enabled
        if enabled:
            self.set_adapter(self.active_adapter)
        else:
            self.modules_to_save.requires_grad_(False)


def wrap_modules_to_save(model: nn.Module, names: list[str] | None, adapter_name: str,
                         inference_mode: bool) -> None:
    """Wrap (or add this adapter to) every module whose path ends with one of `names`."""
    if not names:
        return
    for key, module in list(model.named_modules()):
        if not any(key == n or key.endswith("." + n) for n in names):
            continue
        if isinstance(module, ModulesToSaveWrapper):
            module.update(adapter_name)
            wrapper = module
        elif any(part in ("modules_to_save", "original_module") for part in key.split(".")):
            continue  # inside a wrapper already handled
        else:
            parent, attr = parent_of(model, key)
            wrapper = ModulesToSaveWrapper(module, adapter_name)
            setattr(parent, attr, wrapper)
        wrapper.set_adapter(wrapper.active_adapter)
        if inference_mode:
            wrapper.modules_to_save[adapter_name].requires_grad_(False)


def parent_of(model: nn.Module, key: str) -> tuple[nn.Module, str]:
    owner, _, attr = key.rpartition(".")
    return (model.get_submodule(owner) if owner else model), attr


# -- which modules an adapter targets -------------------------------------------------------------
def matches(target: list[str] | str, key: str) -> bool:
    """PEFT's rule: a string is a regex over the full path; list entries match the full path
    or a suffix of it at a dot."""
    if isinstance(target, str):
        return re.fullmatch(target, key) is not None
    return key in target or any(key.endswith("." + t) for t in target)


def layer_index_ok(config: Any, key: str) -> bool:
    """layers_to_transform: keep modules of these layer numbers (the first numbered path part,
    or the one after layers_pattern)."""
    wanted = getattr(config, "layers_to_transform", None)
    if wanted is None or (isinstance(wanted, list) and not wanted):
        return True
    patterns = getattr(config, "layers_pattern", None)
    match = None
    if not patterns:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", key)
    else:
        for pattern in [patterns] if isinstance(patterns, str) else patterns:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", key)
            if match is not None:
                break
    if match is None:
        return False
    index = int(match.group("idx"))
    return index == wanted if isinstance(wanted, int) else index in wanted


def is_target(config: Any, key: str) -> bool:
    exclude = getattr(config, "exclude_modules", None)
    if exclude and matches(exclude, key):
        return False
    keep = getattr(config, "modules_to_save", None)
    if keep and any(re.match(rf"(^|.*\.){re.escape(m)}($|\..*)", key) for m in keep):
        return False  # a module trained whole never gets an adapter too
    target = config.target_modules
    if not matches(target, key):
        return False
    return isinstance(target, str) or layer_index_ok(config, key)


def all_linear_names(model: nn.Module, task_type: Any) -> list[str]:
    """"all-linear": every linear layer's full path but the output head (the LM head, or a
    classifier's score/classifier head)."""
    found = [name for name, module in model.named_modules()
             if name and linear_shape(module) is not None
             and not isinstance(module, BaseTunerLayer)
             and not any(isinstance(model.get_submodule(p), BaseTunerLayer)
                         for p in _ancestors(name))]
    exclude: set[str] = set()
    get_output = getattr(model, "get_output_embeddings", None)
    output = get_output() if callable(get_output) else None
    if output is not None:
        exclude |= {n for n, m in model.named_modules() if m is output}
    elif str(getattr(task_type, "value", task_type)) == "SEQ_CLS":
        for head in SEQ_CLS_HEAD_NAMES:
            module = getattr(model, head, None)
            if module is not None:
                exclude |= {n for n, m in model.named_modules() if m is module}
                break
    return sorted(n for n in found if n not in exclude)


def _ancestors(name: str) -> Iterator[str]:
    parts = name.split(".")
    for i in range(1, len(parts)):
        yield ".".join(parts[:i])


# PEFT writes a target list this long or longer as the fewest suffixes that match the same
# modules (an "all-linear" T5 then saves ["k", "o", "q", "v", "wi", "wo"], not every path).
SHORTEN_TARGETS_FROM = 20


def _suffixes(name: str) -> list[str]:
    """"a.b.c" -> ["c", "b.c", "a.b.c"]: the name's suffixes, shortest first."""
    parts = name.split(".")
    return [".".join(parts[i:]) for i in range(len(parts) - 1, -1, -1)]


def shortest_targets(targets: list[str], module_names: list[str]) -> list[str]:
    """The fewest suffixes (each as short as possible) that match every name in `targets`
    and none of the model's other modules; `targets` itself when that is no shorter."""
    wanted = set(targets)
    others = [n for n in module_names
              if n not in wanted and not any(n.endswith("." + t) for t in wanted)]
    taken = {s for name in others for s in _suffixes(name)}
    chosen: set[str] = set()
    # PEFT's greedy order (by the suffix lists), so the saved list is the one it writes
    for name in sorted(wanted, key=_suffixes):
        if any(name == c or name.endswith("." + c) for c in chosen):
            continue
        free = next((s for s in _suffixes(name) if s not in taken), None)
        if free is not None:
            chosen.add(free)
    return sorted(chosen) if chosen and len(chosen) < len(wanted) else list(targets)


def adaptable_names(model: nn.Module) -> list[str]:
    """The distinct last path parts of layers an adapter can wrap (for error messages)."""
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules()
             if name and (linear_shape(m) is not None or isinstance(m, nn.Embedding))
             and "lora_" not in name and "ia3_" not in name}
    return sorted(names)


# -- the tuner model ------------------------------------------------------------------------------
class BaseTuner(nn.Module):
    """Holds the adapted model as `.model` and the adapters' configs (shared with PeftModel).

    Subclasses set `prefix` (the parameter name part of their adapter weights, "lora_") and
    `default_targets`, and implement `_create_and_replace`.
    """

    prefix: ClassVar[str] = ""
    default_targets: ClassVar[dict[str, list[str]]] = {}
    # whether a long target list is shortened to suffixes (not IA3's: its
    # feedforward_modules must stay a subset of target_modules, as in PEFT)
    shortens_targets: ClassVar[bool] = True

    def __init__(self, model: nn.Module, peft_config: dict[str, Any], adapter_name: str) -> None:
        super().__init__()
        self.model = model
        self.peft_config = peft_config
        self.active_adapter: str | list[str] = adapter_name
        self.inject_adapter(model, adapter_name)
        self.model.peft_config = peft_config

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":  # not yet set in __init__: avoid recursing
                raise
            return getattr(self.model, name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.forward(*args, **kwargs)

    @property
    def active_adapters(self) -> list[str]:
        a = self.active_adapter
        return [a] if isinstance(a, str) else list(a)

    # -- injection --------------------------------------------------------------------------
    def _prepare_config(self, config: Any, model: nn.Module) -> Any:
        if config.target_modules is None:
            model_type = getattr(getattr(model, "config", None), "model_type", None)
            if model_type not in self.default_targets:
                raise ValueError(f"Pass target_modules: Cove has no default for model type "
                                 f"{model_type!r}. Layers it can wrap: "
                                 f"{', '.join(adaptable_names(model))}.")
            config.target_modules = list(self.default_targets[model_type])
        elif isinstance(config.target_modules, str) and \
                config.target_modules.lower() == "all-linear":
            config.target_modules = all_linear_names(model, config.task_type)
        return config

    def inject_adapter(self, model: nn.Module, adapter_name: str) -> None:
        config = self._prepare_config(self.peft_config[adapter_name], model)
        if self.shortens_targets and isinstance(config.target_modules, list) and \
                len(config.target_modules) >= SHORTEN_TARGETS_FROM:
            config.target_modules = shortest_targets(
                config.target_modules, [name for name, _ in model.named_modules()])
        self.peft_config[adapter_name] = config
        wrap_modules_to_save(model, config.modules_to_save, adapter_name,
                             config.inference_mode)
        found = False
        for key, module in list(model.named_modules()):
            if not key or not is_target(config, key):
                continue
            if any(part in ("base_layer", "modules_to_save", "original_module")
                   or part.startswith(self.prefix) for part in key.split(".")):
                continue  # parts of an adapter layer or a modules_to_save copy
            parent, attr = parent_of(model, key)
            self._create_and_replace(config, adapter_name, module, key, parent, attr)
            found = True
        if not found:
            raise ValueError(
                f"target_modules {config.target_modules!r} match no module of "
                f"{type(model).__name__}. Layers it has that an adapter can wrap: "
                f"{', '.join(adaptable_names(model))} (list entries match the end of a module's "
                "path, e.g. 'self_attn.q_proj'; a string is a regex over the full path).")
        self._mark_only_adapters_as_trainable(model)
        # Only the active adapters train (none of them when loaded for inference).
        active = self.active_adapters
        frozen = any(self.peft_config[a].inference_mode for a in active if a in self.peft_config)
        self.set_adapter(active, inference_mode=frozen)

    def _create_and_replace(self, config: Any, adapter_name: str, target: nn.Module, key: str,
                            parent: nn.Module, attr: str) -> None:
        raise NotImplementedError

    def _mark_only_adapters_as_trainable(self, model: nn.Module) -> None:
        for name, param in model.named_parameters():
            if self.prefix not in name and ".modules_to_save." not in name:
                param.requires_grad_(False)

    def tuner_layers(self) -> Iterator[BaseTunerLayer]:
        for module in self.model.modules():
            if isinstance(module, BaseTunerLayer):
                yield module

    def wrappers(self) -> Iterator[ModulesToSaveWrapper]:
        for module in self.model.modules():
            if isinstance(module, ModulesToSaveWrapper):
                yield module

    # -- switching ----------------------------------------------------------------------------
    def set_adapter(self, adapter_name: str | list[str], inference_mode: bool = False) -> None:
        names = [adapter_name] if isinstance(adapter_name, str) else list(adapter_name)
        for name in names:
            if name not in self.peft_config:
                raise ValueError(f"No adapter named {name!r}: this model has "
                                 f"{', '.join(sorted(self.peft_config))}.")
        for layer in self.tuner_layers():
            if layer.merged:
                layer.unmerge()
            layer.set_adapter(names)
            if inference_mode:
                for attr in layer.adapter_layer_names:
                    getattr(layer, attr).requires_grad_(False)
        for wrapper in self.wrappers():
            wrapper.set_adapter(names[0])
            if inference_mode:
                wrapper.modules_to_save.requires_grad_(False)
        self.active_adapter = names[0] if len(names) == 1 else names

    def _set_adapter_layers(self, enabled: bool) -> None:
        for layer in self.tuner_layers():
            layer.enable_adapters(enabled)
        for wrapper in self.wrappers():
            wrapper.enable_adapters(enabled)

    def enable_adapter_layers(self) -> None:
        self._set_adapter_layers(True)

    def disable_adapter_layers(self) -> None:
        self._set_adapter_layers(False)

    @contextmanager
    def disabled(self) -> Iterator[None]:
        merged = [layer for layer in self.tuner_layers() if layer.merged]
        for layer in merged:
            layer.unmerge()
        self.disable_adapter_layers()
        try:
            yield
        finally:
            self.enable_adapter_layers()

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name not in self.peft_config:
            raise ValueError(f"No adapter named {adapter_name!r}: this model has "
                             f"{', '.join(sorted(self.peft_config))}.")
        del self.peft_config[adapter_name]
        for layer in self.tuner_layers():
            layer.delete_adapter(adapter_name)
        for wrapper in self.wrappers():
            if adapter_name in wrapper.modules_to_save:
                del wrapper.modules_to_save[adapter_name]
        remaining = [a for a in self.active_adapters if a != adapter_name]
        if not remaining and self.peft_config:
            remaining = [next(iter(self.peft_config))]
        if remaining:
            self.set_adapter(remaining)
        else:
            self.active_adapter = []

    # -- merging and unloading ----------------------------------------------------------------
    def merge_adapter(self, adapter_names: list[str] | None = None) -> None:
        """Fold the active (or named) adapters into the base weights, keeping the layers."""
        for layer in self.tuner_layers():
            layer.merge(adapter_names)

    def unmerge_adapter(self) -> None:
        for layer in self.tuner_layers():
            layer.unmerge()

    def _unload(self, merge: bool, adapter_names: list[str] | None, safe_merge: bool
                ) -> nn.Module:
        for key, module in list(self.model.named_modules()):
            if isinstance(module, BaseTunerLayer):
                if merge:
                    module.merge(adapter_names, safe_merge=safe_merge)
                parent, attr = parent_of(self.model, key)
                setattr(parent, attr, module.get_base_layer())
            elif isinstance(module, ModulesToSaveWrapper):
                parent, attr = parent_of(self.model, key)
                setattr(parent, attr, module._current() if merge else module.original_module)
        self.model.__dict__.pop("peft_config", None)
        return self.model

    def merge_and_unload(self, safe_merge: bool = False,
                         adapter_names: list[str] | None = None) -> nn.Module:
        """The base model with the adapters' updates added into its weights and the adapter
        layers removed: a plain model that computes what the adapted one did.
        `safe_merge` checks the merged weights for NaN/inf first."""
        return self._unload(True, adapter_names, safe_merge)

    def unload(self) -> nn.Module:
        """The base model back, adapter layers removed and nothing merged."""
        return self._unload(False, None, False)
