"""Checkpoint files: full model weights as safetensors (sharded on request), optimizer and
scheduler states, per-process random states, written so that a reader never sees half a save.

A `save_state` folder holds:
  model.safetensors (model_1.safetensors, ...)  the full weights, unwrapped names
  optimizer.bin, scheduler.bin (_1, ...)        torch.save'd state dicts
  scaler.pt                                     the fp16 grad scaler
  random_states_<rank>.pkl                      python, numpy, torch (cuda) RNG, the
                                                accumulation step and each dataloader's place
  custom_checkpoint_<i>.pkl                     objects given to register_for_checkpointing
It is written under a temporary name beside the target, then renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

SAFE_WEIGHTS_NAME = "model.safetensors"
WEIGHTS_NAME = "pytorch_model.bin"
_ALIASES_KEY = "cove_aliases"  # safetensors metadata: names dropped because they share a tensor
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def _is_fsdp(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _full(cpu_offload: bool = True) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload)


def model_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full weights of an unwrapped model. Under FSDP2 every process must call this (the
    shards are gathered) and only process 0 gets them; elsewhere every process does."""
    if _is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(model, options=_full())
    return model.state_dict()


def load_model_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Full weights into an unwrapped model (under FSDP2 each process keeps its shard)."""
    if _is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(model, state, options=_full(cpu_offload=False))
    else:
        model.load_state_dict(state)


def optimizer_state_dict(model: torch.nn.Module | None, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state; under FSDP2 the full one, on process 0 only (collective)."""
    if model is not None and _is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(model, optimizer, options=_full())
    return optimizer.state_dict()


def load_optimizer_state_dict(model: torch.nn.Module | None, optimizer: torch.optim.Optimizer,
                              state: dict) -> None:
    if model is not None and _is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state, options=_full(cpu_offload=False))
    else:
        optimizer.load_state_dict(state)


def parse_size(size: int | str) -> int:
    """Bytes from an int or a text such as "10GB", "500MB", "2GiB"."""
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]I?B|B)\s*", str(size).upper())
    if isinstance(size, str) and match:
        return int(float(match.group(1)) * _UNITS[match.group(2)])
    raise ValueError(f"max_shard_size must be a positive number of bytes or a size such as "
                     f"'10GB', '500MB', '2GiB'; got {size!r}")


def _atomic_write(path: str, write: Any) -> None:
    """`write(temp_path)`, then the temp file renamed onto `path`."""
    temp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        write(temp)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp)
        raise


def write_text(path: str, text: str) -> None:
    """`text` into `path` atomically."""
    def write(temp: str) -> None:
        with open(temp, "w", encoding="utf-8") as f:
            f.write(text)
    _atomic_write(path, write)


def torch_save(obj: Any, path: str) -> None:
    """`torch.save` to `path` atomically."""
    _atomic_write(path, lambda temp: torch.save(obj, temp))


def _without_aliases(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor],
                                                              dict[str, str]]:
    """Tensors sharing memory (tied weights) kept once: safetensors refuses shared memory.
    Returns the tensors and {dropped name: kept name}; partial overlaps are copied."""
    kept: dict[tuple, str] = {}
    storages: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    for name, tensor in state.items():
        tensor = tensor.detach()
        if tensor.numel() == 0:
            out[name] = tensor.contiguous()
            continue
        storage = tensor.untyped_storage().data_ptr()
        view = (storage, tensor.storage_offset(), tuple(tensor.shape), tuple(tensor.stride()),
                tensor.dtype)
        if view in kept:
            aliases[name] = kept[view]
            continue
        if storage in storages or not tensor.is_contiguous():
            tensor = tensor.clone()  # shares memory some other way, or is a strided view
        else:
            storages.add(storage)
        kept[view] = name
        out[name] = tensor.contiguous()
    return out, aliases


def save_weights(state: dict[str, torch.Tensor], directory: str,
                 max_shard_size: int | str | None = "10GB", safe_serialization: bool = True,
                 name: str | None = None) -> list[str]:
    """Write `state` into `directory` as transformers does: one file, or shards plus an index
    when it exceeds `max_shard_size` (None: never). Earlier shards of the same name are
    removed. Returns the files written."""
    limit = float("inf") if max_shard_size is None else parse_size(max_shard_size)
    weights_name = name or (SAFE_WEIGHTS_NAME if safe_serialization else WEIGHTS_NAME)
    stem, ext = os.path.splitext(weights_name)
    tensors, aliases = _without_aliases({k: v.cpu() for k, v in state.items()})
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    os.makedirs(directory, exist_ok=True)
    names = ([weights_name] if len(shards) == 1 else
             [f"{stem}-{i:05d}-of-{len(shards):05d}{ext}" for i in range(1, len(shards) + 1)])
    pattern = re.compile(rf"{re.escape(stem)}(-\d{{5}}-of-\d{{5}})?{re.escape(ext)}$")
    for old in os.listdir(directory):  # a former save's files that this one does not replace
        if pattern.match(old) and old not in names:
            os.remove(os.path.join(directory, old))
    index_path = os.path.join(directory, f"{weights_name}.index.json")
    metadata = {"format": "pt"}
    if aliases:
        metadata[_ALIASES_KEY] = json.dumps(aliases)
    for shard, file in zip(shards, names, strict=True):
        path = os.path.join(directory, file)
        if safe_serialization:
            from safetensors.torch import save_file

            _atomic_write(path, lambda temp, shard=shard: save_file(shard, temp,
                                                                    metadata=metadata))
        else:
            torch_save(shard, path)
    if len(shards) == 1:
        with contextlib.suppress(FileNotFoundError):
            os.remove(index_path)
        return names
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in tensors.values())},
             "weight_map": {key: file for shard, file in zip(shards, names, strict=True) for key in shard}}
    write_text(index_path, json.dumps(index, indent=2, sort_keys=True) + "\n")
    return [*names, os.path.basename(index_path)]


def load_safetensors(path: str) -> dict[str, torch.Tensor]:
    """A safetensors file written by `save_weights`, dropped aliases restored."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        state = {key: f.get_tensor(key) for key in f.keys()}
        aliases = json.loads((f.metadata() or {}).get(_ALIASES_KEY, "{}"))
    for name, source in aliases.items():
        state[name] = state[source]
    return state


def rng_state() -> dict[str, Any]:
    """This process's random states: python, numpy, torch, and every CUDA device's."""
    state = {"random_state": random.getstate(), "numpy_random_seed": np.random.get_state(),
             "torch_manual_seed": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda_manual_seed"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["random_state"])
    np.random.set_state(state["numpy_random_seed"])
    torch.set_rng_state(state["torch_manual_seed"])
    if "torch_cuda_manual_seed" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["torch_cuda_manual_seed"])


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextlib.contextmanager
def atomic_folder(output_dir: str, is_main: bool) -> Iterator[str]:
    """A temporary folder beside `output_dir` for every process to write in; renamed onto
    `output_dir` (replacing a former one) by the main process once all have finished."""
    output_dir = os.path.abspath(output_dir)
    parent, base = os.path.split(output_dir)
    token = [uuid.uuid4().hex[:8]]
    if _distributed():
        dist.broadcast_object_list(token, src=0)  # one name on every process
    temp = os.path.join(parent, f".{base}.tmp-{token[0]}")
    if is_main:
        os.makedirs(temp)
    if _distributed():
        dist.barrier()
    try:
        yield temp
    except BaseException:
        if is_main:
            shutil.rmtree(temp, ignore_errors=True)
        raise
    if _distributed():
        dist.barrier()  # every process has written its files
    if is_main:
        old = None
        if os.path.lexists(output_dir):
            if not os.path.isdir(output_dir):
                shutil.rmtree(temp, ignore_errors=True)
                raise FileExistsError(f"save_state: {output_dir} exists and is not a folder")
            old = os.path.join(parent, f".{base}.old-{token[0]}")
            os.replace(output_dir, old)
        os.replace(temp, output_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    if _distributed():
        dist.barrier()  # nobody reads the checkpoint before it is in place
