"""device_map: a model's blocks spread over GPUs and the CPU, as transformers' device_map.

A model is cut into blocks in forward order: the embeddings, each encoder or decoder layer,
the final norm, the head. `plan` fills the devices in order (GPUs first, the CPU last) with
whole blocks; `dispatch` moves each block to its device and hooks it so that its inputs follow
it there, and the model's outputs come back to the first block's device. A model that fits on
the first GPU stays whole on it; on a machine without a GPU everything stays on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from cove.models.outputs import ModelOutput

# Share of a GPU's free memory given to weights; the rest is left for activations.
GPU_SHARE = 0.9


def blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's blocks in registration (forward) order: modules holding a layer list are
    opened (the list's items are blocks), the others are blocks as a whole."""
    return list(_blocks(model, ""))


def _blocks(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        if _holds_list(child):
            yield from _blocks(child, path + ".")
        else:
            yield path, child


def _holds_list(module: nn.Module) -> bool:
    """Whether the module is or holds a list of layers."""
    return any(isinstance(m, nn.ModuleList) for m in module.modules())


def block_sizes(model: nn.Module) -> tuple[list[tuple[str, int]], dict[str, str]]:
    """Each block's size in bytes (parameters and buffers), and the blocks that share weights
    with an earlier one (tied heads: block -> the earlier block; counted once, there)."""
    owner: dict[int, str] = {}
    sizes, tied = [], {}
    for name, block in blocks(model):
        size = 0
        for tensor in [*block.parameters(), *block.buffers()]:
            first = owner.setdefault(id(tensor), name)
            if first == name:
                size += tensor.numel() * tensor.element_size()
            else:
                tied.setdefault(name, first)
        sizes.append((name, size))
    return sizes, tied


def plan(sizes: list[tuple[str, int]], budgets: list[tuple[str, int | None]],
         tied: dict[str, str] | None = None) -> dict[str, str]:
    """Block name -> device: whole blocks, in order, on the first device with room left.

    `budgets` are (device, bytes) in order of preference (None: no limit, as the CPU last);
    a block tied to an earlier one goes where that one went. Raises ValueError when the
    blocks do not fit in the budgets."""
    tied = tied or {}
    mapping: dict[str, str] = {}
    left = [size for _, size in budgets]
    current = 0
    for name, size in sizes:
        if name in tied:
            mapping[name] = mapping[tied[name]]
            continue
        while current < len(budgets) and left[current] is not None and left[current] < size:
            current += 1  # never back to an earlier device: blocks stay in forward order
        if current == len(budgets):
            raise ValueError(f"The model does not fit in the memory given: the block {name!r} "
                             f"({size / 2**20:.1f} MiB) has no room on "
                             f"{', '.join(d for d, _ in budgets)}.")
        mapping[name] = budgets[current][0]
        if left[current] is not None:
            left[current] -= size
    return mapping


def available_budgets() -> list[tuple[str, int | None]]:
    """Each GPU's free memory (a share of it), then the CPU without a limit."""
    budgets: list[tuple[str, int | None]] = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free, _ = torch.cuda.mem_get_info(i)
            budgets.append((f"cuda:{i}", int(free * GPU_SHARE)))
    budgets.append(("cpu", None))
    return budgets


def resolve_device_map(model: nn.Module, device_map: Any) -> dict[str, str]:
    """A device_map ("auto", a device, or {"module.name": device} covering every weight; ""
    names the whole model) as a mapping of module names to devices."""
    if device_map == "auto":
        sizes, tied = block_sizes(model)
        return plan(sizes, available_budgets(), tied)
    if not isinstance(device_map, dict):
        try:
            return {"": str(check_device(as_device(device_map)))}
        except ValueError:
            raise ValueError(f"device_map must be 'auto', a device or a dict of module names "
                             f"to devices, got {device_map!r}.") from None
    modules = dict(model.named_modules())
    mapping = {}
    for name, device in device_map.items():
        if name not in modules:
            raise ValueError(f"device_map names {name!r}, which is not a module of "
                             f"{type(model).__name__}.")
        mapping[name] = str(check_device(as_device(device)))
    missing = [p for p, _ in model.named_parameters()
               if not any(n == "" or p.startswith(n + ".") for n in mapping)]
    if missing:
        raise ValueError(f"device_map does not place {len(missing)} weights, e.g. "
                         f"{', '.join(missing[:3])}: name their modules too.")
    return mapping


def dispatch(model: nn.Module, device_map: Any) -> dict[str, str]:
    """Place the model as `device_map` says (see resolve_device_map); returns the mapping,
    also kept as `model.hf_device_map`."""
    mapping = resolve_device_map(model, device_map)
    devices = set(mapping.values())
    if len(devices) == 1:
        model.to(devices.pop())  # one device for everything: no hooks needed
    else:
        place(model, mapping)
    model.hf_device_map = mapping
    return mapping


def place(model: nn.Module, mapping: dict[str, str]) -> None:
    """Move each mapped module to its device, hooked so that its inputs follow it there and
    the model's outputs come back to the device of its first weights."""
    # Parents first, so that a module named inside a mapped one keeps its own device.
    for name in sorted(mapping, key=lambda n: n.count(".") + bool(n)):
        module = model.get_submodule(name)
        module.to(mapping[name])
        module.register_forward_pre_hook(_inputs_to(torch.device(mapping[name])),
                                         with_kwargs=True)
    main = next(model.parameters()).device
    model.register_forward_hook(lambda _m, _a, output: move(output, main))


def as_device(device: Any) -> torch.device | None:
    """"cpu", "cuda", "cuda:1", "mps", an int (-1 is the CPU) or a torch.device."""
    if device is None or isinstance(device, torch.device):
        return device
    if isinstance(device, int) and not isinstance(device, bool):
        return torch.device("cpu") if device < 0 else torch.device("cuda", device)
    try:
        if not isinstance(device, str):
            raise TypeError
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"Invalid device {device!r}: use 'cpu', 'cuda', 'cuda:1', an int "
                         "or a torch.device.") from None


def check_device(device: torch.device) -> torch.device:
    """`device` if this machine has it; else a ValueError that says what it has."""
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"Device {str(device)!r} asked for, but this machine has no CUDA "
                             "GPU that torch can use: use device='cpu'.")
        if device.index is not None and device.index >= count:
            raise ValueError(f"Device {str(device)!r} asked for, but this machine has {count} "
                             f"CUDA GPU{'s' if count > 1 else ''} (cuda:0 to cuda:{count - 1}).")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("Device 'mps' asked for, but Apple's MPS is not available here: use "
                         "device='cpu'.")
    elif device.type not in ("cpu", "meta", "cuda", "mps"):
        raise ValueError(f"Device {str(device)!r} is not supported: use 'cpu', 'cuda' or 'mps'.")
    return device


def _inputs_to(device: torch.device):
    def hook(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return move(args, device), move(kwargs, device)
    return hook


def move(value: Any, device: torch.device) -> Any:
    """Tensors in `value` (nested in tuples, lists, dicts, model outputs) moved to `device`;
    anything else (a cache object, a number) as it is."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, ModelOutput):
        return type(value)(**{k: move(v, device) for k, v in value.items()})
    if isinstance(value, tuple):
        moved = [move(v, device) for v in value]
        if hasattr(value, "_fields"):  # a named tuple keeps its type
            return type(value)(*moved)
        return type(value)(moved)  # a tuple, or a struct sequence (torch.return_types)
    if isinstance(value, list):
        return [move(v, device) for v in value]
    if type(value) is dict:
        return {k: move(v, device) for k, v in value.items()}
    return value
