"""FSDP2: a model sharded with `torch.distributed.fsdp.fully_shard`, unit by unit, and the
optimizers made before sharding pointed at the sharded parameters."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist

from cove.accelerate.plugins import FullyShardedDataParallelPlugin


def _units(model: torch.nn.Module, plugin: FullyShardedDataParallelPlugin) -> list[torch.nn.Module]:
    """The submodules that get their own `fully_shard`, children before their parents."""
    policy = plugin.auto_wrap_policy
    named = getattr(model, "_no_split_modules", None) or None
    if policy is None:
        policy = "transformer_based_wrap" if (plugin.transformer_cls_names_to_wrap or named) \
            else "no_wrap"
    inner = [m for m in reversed(list(model.modules())) if m is not model]
    if policy == "no_wrap":
        return []
    if callable(policy):
        return [m for m in inner if policy(m)]
    if policy == "transformer_based_wrap":
        classes = set(plugin.transformer_cls_names_to_wrap or named or ())
        if not classes:
            raise ValueError("auto_wrap_policy='transformer_based_wrap' needs "
                             "transformer_cls_names_to_wrap (the model names no _no_split_modules)")
        found = {type(m).__name__ for m in model.modules()}
        if not classes & found:
            raise ValueError(f"transformer_cls_names_to_wrap {sorted(classes)}: the model has no "
                             f"module of these classes")
        return [m for m in inner if type(m).__name__ in classes]
    wrapped: set[int] = set()  # size_based_wrap: a module's parameters not already in a unit
    units = []
    for module in inner:
        own = [p for p in module.parameters() if id(p) not in wrapped]
        if sum(p.numel() for p in own) >= plugin.min_num_params:
            units.append(module)
            wrapped.update(id(p) for p in own)
    return units


def fully_shard_model(model: torch.nn.Module, plugin: FullyShardedDataParallelPlugin,
                      device: torch.device,
                      optimizers: Iterable[torch.optim.Optimizer] = ()) -> torch.nn.Module:
    """`model` sharded in place over all processes (FSDP2); `optimizers` made from its
    parameters before now are switched to the sharded ones."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import (
        CPUOffloadPolicy,
        FSDPModule,
        MixedPrecisionPolicy,
        OffloadPolicy,
        fully_shard,
    )

    if isinstance(model, FSDPModule):
        return model
    if not dist.is_initialized():
        raise ValueError("FSDP2 needs a process group: start the script with "
                         "`cove launch --use-fsdp ...` (or torchrun)")
    names = {id(p): name for name, p in model.named_parameters()}
    optimizers = list(optimizers)
    for optimizer in optimizers:
        strangers = [p for g in optimizer.param_groups for p in g["params"] if id(p) not in names]
        if strangers:
            raise ValueError(f"an optimizer prepared with the model holds {len(strangers)} "
                             f"parameters that are not the model's")
        if optimizer.state:
            raise ValueError("the optimizer has already stepped: prepare the model and its "
                             "optimizer before training (FSDP2 replaces the parameters)")
    if plugin.sync_module_states and dist.get_world_size() > 1:
        with torch.no_grad():  # every process starts from process 0's weights, as under DDP
            for tensor in [*model.parameters(), *model.buffers()]:
                dist.broadcast(tensor.data, src=0)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    kwargs = {"mesh": mesh, "reshard_after_forward": plugin.reshard_after_forward,
              "mp_policy": plugin.mixed_precision_policy or MixedPrecisionPolicy(),
              "offload_policy": CPUOffloadPolicy() if plugin.cpu_offload else OffloadPolicy()}
    for unit in _units(model, plugin):
        fully_shard(unit, **kwargs)
    fully_shard(model, **kwargs)
    sharded = dict(model.named_parameters())
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["params"] = [sharded[names[id(p)]] for p in group["params"]]
    return model
