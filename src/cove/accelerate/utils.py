"""`accelerate.utils`' commonly used names: seeding, collectives, the settings classes."""

from __future__ import annotations

from cove.accelerate.operations import (  # noqa: F401  (re-exported, as accelerate.utils has them)
    broadcast,
    broadcast_object_list,
    convert_to_fp32,
    gather,
    gather_object,
    pad_across_processes,
    recursively_apply,
    reduce,
    send_to_device,
)
from cove.accelerate.plugins import (  # noqa: F401
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
    FullyShardedDataParallelPlugin,
    GradScalerKwargs,
    InitProcessGroupKwargs,
)
from cove.accelerate.state import DistributedType, PartialState
from cove.seed import set_seed as _set_seed

__all__ = ["DataLoaderConfiguration", "DistributedDataParallelKwargs", "DistributedType",
           "FullyShardedDataParallelPlugin", "GradScalerKwargs", "InitProcessGroupKwargs",
           "broadcast", "broadcast_object_list", "convert_to_fp32", "gather", "gather_object",
           "pad_across_processes", "recursively_apply", "reduce", "send_to_device", "set_seed",
           "wait_for_everyone"]


def set_seed(seed: int, device_specific: bool = False, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (`cove.seed.set_seed`); `device_specific` adds the process
    index, so that each process draws different numbers (e.g. for data augmentation)."""
    if device_specific:
        seed += PartialState().process_index
    _set_seed(seed, deterministic=deterministic)


def wait_for_everyone() -> None:
    """A barrier: every process waits here until all have reached it."""
    PartialState().wait_for_everyone()
