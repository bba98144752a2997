"""Adapter weights in and out: PEFT's adapter_model.safetensors key names.

In memory a weight carries its adapter's name (`...q_proj.lora_A.default.weight`); the file
drops it (`...q_proj.lora_A.weight`), so an adapter loads under any name. DoRA's magnitude is
saved as `...lora_magnitude_vector`, IA3's vectors as `...ia3_l`, modules_to_save copies under
the module's own name, prompt-learning encoders as one `prompt_embeddings` tensor.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from cove.peft.config import PeftType
from cove.peft.tuners import EMBEDDING_LAYER_NAMES, ModulesToSaveWrapper

SAFETENSORS_WEIGHTS_NAME = "adapter_model.safetensors"
WEIGHTS_NAME = "adapter_model.bin"

# Parameter containers of the adapter layers whose in-memory key holds the adapter name.
_ADAPTER_PARTS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B",
                  "lora_magnitude_vector", "ia3_l")
_IN_MEMORY = re.compile(rf"\.({'|'.join(_ADAPTER_PARTS)})\.(?P<adapter>[^.]+)(?P<rest>\.weight)?$")


def _saved_name(key: str, adapter_name: str) -> str | None:
    """The file's name for an in-memory key of this adapter; None for other adapters' keys
    and keys that are no adapter weight."""
    m = _IN_MEMORY.search(key)
    if m is not None:
        if m.group("adapter") != adapter_name:
            return None
        part = m.group(1)
        keep_weight = part in ("lora_A", "lora_B")  # modules; the others are bare tensors
        return key[:m.start()] + f".{part}" + (".weight" if keep_weight else "")
    marker = f".modules_to_save.{adapter_name}."
    if marker in key:
        return key.replace(marker, ".")
    return None


def get_peft_model_state_dict(model: Any, state_dict: dict[str, torch.Tensor] | None = None,
                              adapter_name: str = "default",
                              save_embedding_layers: bool | str = "auto"
                              ) -> dict[str, torch.Tensor]:
    """The adapter's tensors under the names PEFT saves them with."""
    config = model.peft_config[adapter_name]
    if state_dict is None:
        state_dict = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    if config.is_prompt_learning:
        out["prompt_embeddings"] = model.get_prompt_embedding_to_save(adapter_name)
        for key, value in state_dict.items():
            name = _saved_name(key, adapter_name)
            if name is not None and ".modules_to_save." in key:
                out[name] = value
        return out

    for key, value in state_dict.items():
        name = _saved_name(key, adapter_name)
        if name is not None:
            out[name] = value
    if config.peft_type == PeftType.LORA:
        if config.bias == "all":  # every bias, as PEFT (a copy's under its wrapper's path too)
            for key, value in state_dict.items():
                if "bias" not in key or _IN_MEMORY.search(key):
                    continue
                if ".modules_to_save." not in key:
                    out[key] = value
                elif f".modules_to_save.{adapter_name}." in key:
                    out[key.replace(f".modules_to_save.{adapter_name}.", ".modules_to_save.")] = \
                        value
        targeted = config.target_modules or []
        embedding_targeted = any(n in targeted for n in EMBEDDING_LAYER_NAMES)
        if save_embedding_layers == "auto":
            if embedding_targeted:
                warnings.warn("Setting `save_embedding_layers` to `True` as embedding layers "
                              "found in `target_modules`.", stacklevel=3)
            save_embedding_layers = embedding_targeted
        if save_embedding_layers:
            out.update(_embedding_weights(model, state_dict, embedding_targeted))
    return out


def _embedding_weights(model: Any, state_dict: dict[str, torch.Tensor],
                       embedding_targeted: bool) -> dict[str, torch.Tensor]:
    """The input and output embeddings' own weights (for adapters over a resized vocabulary):
    when LoRA targets embeddings, only of those it wraps (their base_layer)."""
    found: dict[str, torch.Tensor] = {}
    for layer in input_output_embeddings(model.get_base_model()):
        wrapped = hasattr(layer, "base_layer")
        if embedding_targeted and not wrapped:
            continue
        for name in (n for n, m in model.named_modules() if m is layer):
            prefix = f"{name}.base_layer." if wrapped else f"{name}."
            found.update({k: v for k, v in state_dict.items() if k.startswith(prefix)})
    return found


def input_output_embeddings(model: Any) -> list[Any]:
    """The model's input embeddings (found through its base model for heads that do not
    expose them) and output embeddings, those it has."""
    layers = []
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        fn = getattr(model, getter, None)
        prefix = getattr(model, "base_model_prefix", "")
        if not callable(fn) and prefix:
            fn = getattr(getattr(model, prefix, None), getter, None)
        layer = fn() if callable(fn) else None
        if layer is not None:
            layers.append(layer)
    return layers


def save_adapter_weights(state: dict[str, torch.Tensor], folder: Path,
                         safe_serialization: bool = True) -> Path:
    """adapter_model.safetensors (or .bin), written to a temp name and renamed."""
    # Shared storage (tied weights) cannot go into safetensors: each tensor gets its own.
    tensors = {k: v.detach().contiguous().clone() for k, v in state.items()}
    name = SAFETENSORS_WEIGHTS_NAME if safe_serialization else WEIGHTS_NAME
    path = folder / name
    tmp = folder / f".{name}.tmp"
    if safe_serialization:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    else:
        torch.save(tensors, tmp)
    os.replace(tmp, path)
    return path


def load_peft_weights(model_id: str | os.PathLike, device: str | torch.device | None = None,
                      subfolder: str | None = None, **hub: Any) -> dict[str, torch.Tensor]:
    """The tensors of adapter_model.safetensors (or adapter_model.bin) in a folder or Hub
    repository (revision=, token=, cache_dir=, ...)."""
    from cove.models import checkpoint as ckpt
    from cove.models.files import resolve_file

    path = resolve_file(model_id, SAFETENSORS_WEIGHTS_NAME, subfolder=subfolder, **hub)
    if path is not None:
        state = ckpt.read_safetensors(path)
    else:
        path = resolve_file(model_id, WEIGHTS_NAME, subfolder=subfolder, **hub)
        if path is None:
            where = f"{model_id}" + (f" (subfolder {subfolder})" if subfolder else "")
            raise FileNotFoundError(f"No adapter weights in {where}: expected "
                                    f"{SAFETENSORS_WEIGHTS_NAME} or {WEIGHTS_NAME}.")
        state = ckpt.read_torch_bin(path)
    if device is not None:
        state = {k: v.to(device) for k, v in state.items()}
    return state


def _in_memory_name(key: str, adapter_name: str, own: dict[str, torch.Tensor],
                    wrappers: list[str]) -> str | None:
    if key in own:  # a base layer's own tensor (bias="all", embedding layers)
        return key
    if ".modules_to_save." in key:  # a copy's bias saved under its wrapper (bias="all")
        return key.replace(".modules_to_save.", f".modules_to_save.{adapter_name}.", 1)
    for part in _ADAPTER_PARTS:
        for suffix in (f".{part}.weight", f".{part}"):
            if key.endswith(suffix):
                rest = ".weight" if part not in ("lora_embedding_A", "lora_embedding_B",
                                                  "ia3_l") else ""
                name = key[: -len(suffix)] + f".{part}.{adapter_name}{rest}"
                return name if name in own else None
    for wrapper in wrappers:
        if key.startswith(wrapper + "."):
            return f"{wrapper}.modules_to_save.{adapter_name}{key[len(wrapper):]}"
    return None


def set_peft_model_state_dict(model: Any, peft_model_state_dict: dict[str, torch.Tensor],
                              adapter_name: str = "default") -> dict[str, list]:
    """Copy saved adapter tensors into adapter `adapter_name` of `model` (a PeftModel).

    Raises on tensors that fit no part of the model or have another shape (an adapter made for
    another base model); warns about adapter weights the file lacks."""
    config = model.peft_config[adapter_name]
    own = dict(model.named_parameters(remove_duplicate=False))
    own.update(model.named_buffers(remove_duplicate=False))
    wrappers = [n for n, m in model.named_modules() if isinstance(m, ModulesToSaveWrapper)]
    state = dict(peft_model_state_dict)
    targets: dict[str, torch.Tensor] = {}
    if config.is_prompt_learning:
        if "prompt_embeddings" not in state:
            raise ValueError("The adapter file has no prompt_embeddings tensor: it is not a "
                             f"{config.peft_type.value} adapter.")
        targets[f"prompt_encoder.{adapter_name}.embedding.weight"] = \
            state.pop("prompt_embeddings")
    unexpected = []
    for key, tensor in state.items():
        name = _in_memory_name(key, adapter_name, own, wrappers)
        if name is None or name not in own:
            unexpected.append(key)
        else:
            targets[name] = tensor
    base_name = config.base_model_name_or_path
    hint = (f" The adapter was made for {base_name!r}." if base_name else "")
    if unexpected:
        shown = ", ".join(unexpected[:8]) + (" ..." if len(unexpected) > 8 else "")
        kind = type(model.get_base_model()).__name__
        raise ValueError(f"The adapter's weights do not fit this {kind}: no module for "
                         f"{shown}.{hint}")
    mismatched = [(k, tuple(t.shape), tuple(own[k].shape)) for k, t in targets.items()
                  if tuple(t.shape) != tuple(own[k].shape)]
    if mismatched:
        rows = "; ".join(f"{k}: adapter {a}, model {b}" for k, a, b in mismatched[:8])
        raise ValueError(f"The adapter's weights have other shapes than this model's ({rows}): "
                         f"it was made for another base model.{hint}")
    with torch.no_grad():
        for name, tensor in targets.items():
            own[name].copy_(tensor.to(own[name].dtype))
    missing = []
    if not config.is_prompt_learning:
        missing = [n for n in own if _saved_name(n, adapter_name) is not None
                   and n not in targets and ".modules_to_save." not in n]
        if missing:
            warnings.warn(f"The adapter file lacks weights of adapter {adapter_name!r}: "
                          f"{', '.join(missing[:8])}; they keep their initial values.",
                          stacklevel=3)
    return {"missing_keys": missing, "unexpected_keys": unexpected}
