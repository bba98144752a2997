"""Collectives over nested structures of tensors: gather, reduce, pad, broadcast, move.

Every function takes a tensor or any nesting of lists, tuples (named ones too) and dicts of
tensors, and returns the same structure. Single-process, they do no communication.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _rebuild(data: Any, values: list) -> Any:
    """A list or tuple like `data` (named tuples keep their type) holding `values`."""
    if isinstance(data, tuple) and hasattr(data, "_fields"):
        return type(data)(*values)
    return type(data)(values)


def recursively_apply(func: Callable[..., Any], data: Any, *args: Any,
                      test_type: Callable[[Any], bool] = torch.is_tensor,
                      error_on_other_type: bool = False, **kwargs: Any) -> Any:
    """`func(tensor, *args, **kwargs)` on every leaf of `data` that passes `test_type`.

    Other leaves are returned as they are, or raise TypeError with `error_on_other_type`.
    """
    if isinstance(data, (list, tuple)):
        return _rebuild(data, [recursively_apply(func, d, *args, test_type=test_type,
                                                 error_on_other_type=error_on_other_type,
                                                 **kwargs) for d in data])
    if isinstance(data, Mapping):
        items = {k: recursively_apply(func, v, *args, test_type=test_type,
                                      error_on_other_type=error_on_other_type, **kwargs)
                 for k, v in data.items()}
        try:
            return type(data)(items)
        except TypeError:
            try:  # a Mapping built from keywords, such as a model's output (attributes kept)
                return type(data)(**items)
            except TypeError:  # one whose constructor takes something else
                return items
    if test_type(data):
        return func(data, *args, **kwargs)
    if error_on_other_type:
        raise TypeError(f"expected tensors (or lists, tuples, dicts of them), got "
                        f"{type(data).__name__}")
    return data


def send_to_device(data: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    """`data` with every tensor (and every object with a `.to`, e.g. BatchEncoding) on `device`."""
    if isinstance(data, (list, tuple, Mapping)) and not hasattr(data, "to"):
        return recursively_apply(lambda t: t.to(device, non_blocking=non_blocking), data,
                                 test_type=lambda x: hasattr(x, "to"))
    if torch.is_tensor(data):
        return data.to(device, non_blocking=non_blocking)
    if hasattr(data, "to"):
        try:
            return data.to(device, non_blocking=non_blocking)
        except TypeError:  # a .to() without non_blocking
            return data.to(device)
    return data


def gather(data: Any) -> Any:
    """Every process's tensors concatenated on the first dimension (0-d tensors as 1-d), in
    process order, on every process. All processes must pass the same shapes: see
    `pad_across_processes` for tensors whose first dimensions differ."""
    return recursively_apply(_gather_one, data, error_on_other_type=True)


def _gather_one(tensor: torch.Tensor) -> torch.Tensor:
    if tensor.ndim == 0:
        tensor = tensor[None]
    if not _distributed():
        return tensor
    tensor = tensor.contiguous()
    shapes = _all_shapes(tensor)
    if len({tuple(s) for s in shapes}) > 1:
        raise ValueError(f"gather needs the same shape on every process, got "
                         f"{[tuple(s) for s in shapes]} (process order); pad with "
                         f"pad_across_processes first, or use gather_for_metrics/gather_object")
    out = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(out, tensor)
    return torch.cat(out, dim=0)


def _all_shapes(tensor: torch.Tensor) -> list[list[int]]:
    """Every process's shape of its tensor (ranks may differ in ndim: padded with -1)."""
    size = torch.full((8,), -1, dtype=torch.int64, device=tensor.device)
    if tensor.ndim > 8:
        raise ValueError(f"tensors with more than 8 dimensions cannot be gathered ({tensor.ndim})")
    size[: tensor.ndim] = torch.tensor(tensor.shape, dtype=torch.int64)
    sizes = [torch.empty_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [[d for d in s.tolist() if d >= 0] for s in sizes]


def gather_object(obj: list | tuple) -> list:
    """Every process's list of picklable objects, concatenated in process order."""
    if not isinstance(obj, (list, tuple)):
        raise TypeError(f"gather_object takes a list or tuple of objects, got {type(obj).__name__}")
    if not _distributed():
        return list(obj)
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, list(obj))
    return [item for part in out for item in part]


def broadcast(data: Any, from_process: int = 0) -> Any:
    """The tensors of process `from_process`, on every process (in place, and returned)."""
    def one(tensor: torch.Tensor) -> torch.Tensor:
        if _distributed():
            dist.broadcast(tensor, src=from_process)
        return tensor
    return recursively_apply(one, data, error_on_other_type=True)


def broadcast_object_list(objects: list, from_process: int = 0) -> list:
    """The picklable objects of process `from_process`, on every process (the list is filled in
    place, and returned)."""
    if _distributed():
        dist.broadcast_object_list(objects, src=from_process)
    return objects


def reduce(data: Any, reduction: str = "sum", scale: float = 1.0) -> Any:
    """Every process's tensors summed ("sum"), averaged ("mean") or left ("none"), times `scale`."""
    if reduction not in ("sum", "mean", "none"):
        raise ValueError(f"reduction must be 'sum', 'mean' or 'none', got {reduction!r}")

    def one(tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone()
        if reduction == "none":
            return out
        if _distributed():
            dist.all_reduce(out, op=dist.ReduceOp.SUM)
            if reduction == "mean":
                out /= dist.get_world_size()
        return out * scale if scale != 1.0 else out
    return recursively_apply(one, data, error_on_other_type=True)


def pad_across_processes(data: Any, dim: int = 0, pad_index: int = 0,
                         pad_first: bool = False) -> Any:
    """Tensors padded with `pad_index` along `dim` to the longest any process has there, so that
    they can be gathered."""
    def one(tensor: torch.Tensor) -> torch.Tensor:
        if not _distributed() or dim >= tensor.ndim or dim < -tensor.ndim:
            return tensor
        d = dim % tensor.ndim
        longest = max(s[d] for s in _all_shapes(tensor))
        if longest == tensor.shape[d]:
            return tensor
        shape = list(tensor.shape)
        shape[d] = longest
        out = tensor.new_full(shape, pad_index)
        start = longest - tensor.shape[d] if pad_first else 0
        out.narrow(d, start, tensor.shape[d]).copy_(tensor)
        return out
    return recursively_apply(one, data, error_on_other_type=True)


def convert_to_fp32(data: Any) -> Any:
    """fp16 and bf16 tensors in `data` as float32 (what a mixed-precision forward returns)."""
    return recursively_apply(lambda t: t.float(), data,
                             test_type=lambda t: torch.is_tensor(t)
                             and t.dtype in (torch.float16, torch.bfloat16))
