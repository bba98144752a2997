"""Settings objects an `Accelerator` takes, with accelerate's names: the FSDP2 plugin, the
dataloader configuration, and the kwargs handlers for DDP, the grad scaler and the group."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable
from typing import Any

_WRAP_POLICIES = ("transformer_based_wrap", "size_based_wrap", "no_wrap")


class KwargsHandler:
    """A dataclass of keyword arguments for a torch object; `to_kwargs` gives the changed ones."""

    def to_kwargs(self) -> dict[str, Any]:
        default = type(self)()
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(default, f.name)}


@dataclasses.dataclass
class DistributedDataParallelKwargs(KwargsHandler):
    """Arguments for `torch.nn.parallel.DistributedDataParallel` (pass in `kwargs_handlers`)."""

    dim: int = 0
    broadcast_buffers: bool = True
    bucket_cap_mb: int = 25
    find_unused_parameters: bool = False
    check_reduction: bool = False
    gradient_as_bucket_view: bool = False
    static_graph: bool = False


@dataclasses.dataclass
class GradScalerKwargs(KwargsHandler):
    """Arguments for `torch.amp.GradScaler` under fp16 (pass in `kwargs_handlers`)."""

    init_scale: float = 65536.0
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    growth_interval: int = 2000
    enabled: bool = True


@dataclasses.dataclass
class InitProcessGroupKwargs(KwargsHandler):
    """The process group's backend and timeout (pass in `kwargs_handlers`)."""

    backend: str | None = None
    timeout: datetime.timedelta | None = None


@dataclasses.dataclass
class DataLoaderConfiguration:
    """How prepared dataloaders are sharded (accelerate's fields; see `Accelerator`).

    `split_batches`: each batch of the dataloader is split between the processes (its size must
    be a multiple of their number) instead of each process taking whole batches in turn.
    `even_batches`: every process gets as many batches, the last ones completed with samples
    from the start (as accelerate). `non_blocking`: host-to-device copies do not wait.
    Dispatching batches from one process, seedable samplers and stateful dataloaders are not
    implemented: setting them says so.
    """

    split_batches: bool = False
    dispatch_batches: bool | None = None
    even_batches: bool = True
    use_seedable_sampler: bool = False
    data_seed: int | None = None
    non_blocking: bool = False
    use_stateful_dataloader: bool = False

    def __post_init__(self) -> None:
        unsupported = [name for name, value in (("dispatch_batches", self.dispatch_batches),
                                                ("use_seedable_sampler", self.use_seedable_sampler),
                                                ("use_stateful_dataloader",
                                                 self.use_stateful_dataloader),
                                                ("data_seed", self.data_seed)) if value]
        if unsupported:
            raise ValueError(f"DataLoaderConfiguration: {', '.join(unsupported)} is not "
                             f"implemented by Cove (every process reads its own batches; "
                             f"save_state/load_state resume a dataloader's position exactly)")


@dataclasses.dataclass
class FullyShardedDataParallelPlugin:
    """FSDP2 (`torch.distributed.fsdp.fully_shard`) for `Accelerator(fsdp_plugin=...)`.

    `auto_wrap_policy`: which submodules become their own shard unit before the root:
    "transformer_based_wrap" (the classes named in `transformer_cls_names_to_wrap`, else the
    model's `_no_split_modules`), "size_based_wrap" (modules with at least `min_num_params`
    parameters of their own), "no_wrap" (the root only), or a function `module -> bool`.
    None: transformer layers when the model names them, else the root only.
    `sync_module_states`: process 0's weights are broadcast before sharding (as DDP does), so
    every process starts from the same model. Checkpoints hold the full (unsharded) weights.
    Only `fsdp_version=2` exists in Cove.
    """

    fsdp_version: int = 2
    reshard_after_forward: bool = True
    auto_wrap_policy: str | Callable[[Any], bool] | None = None
    transformer_cls_names_to_wrap: list[str] | None = None
    min_num_params: int = 100_000_000
    cpu_offload: bool = False
    mixed_precision_policy: Any = None
    sync_module_states: bool = True

    def __post_init__(self) -> None:
        if self.fsdp_version != 2:
            raise ValueError(f"fsdp_version={self.fsdp_version!r}: Cove implements FSDP2 only "
                             f"(torch.distributed.fsdp.fully_shard); use fsdp_version=2")
        if isinstance(self.auto_wrap_policy, str):
            self.auto_wrap_policy = self.auto_wrap_policy.lower()
            if self.auto_wrap_policy not in _WRAP_POLICIES:
                raise ValueError(f"auto_wrap_policy={self.auto_wrap_policy!r}: expected one of "
                                 f"{', '.join(_WRAP_POLICIES)}, a function, or None")
        elif self.auto_wrap_policy is not None and not callable(self.auto_wrap_policy):
            raise TypeError(f"auto_wrap_policy must be a name or a function module -> bool, got "
                            f"{type(self.auto_wrap_policy).__name__}")
        if isinstance(self.reshard_after_forward, str):
            raise TypeError("reshard_after_forward is a bool under FSDP2 (FULL_SHARD is True, "
                            "SHARD_GRAD_OP is False)")
        if isinstance(self.mixed_precision_policy, dict):
            from torch.distributed.fsdp import MixedPrecisionPolicy

            self.mixed_precision_policy = MixedPrecisionPolicy(**{
                k: _dtype(v) if k.endswith("dtype") else v
                for k, v in self.mixed_precision_policy.items()})


def _dtype(value: Any) -> Any:
    import torch

    if isinstance(value, str):
        dtype = getattr(torch, value.replace("torch.", ""), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown dtype {value!r} in mixed_precision_policy")
        return dtype
    return value
