"""cove.accelerate: one training loop for one process, DDP or FSDP2, as Hugging Face accelerate.

    from cove.accelerate import Accelerator

    accelerator = Accelerator(mixed_precision="bf16")
    model, optimizer, data = accelerator.prepare(model, optimizer, data)

Run a script on several processes with `cove launch --nproc-per-node N script.py` (torchrun:
gloo on CPU, NCCL on GPUs). Importing this package imports nothing heavy: each name loads its
module (and torch) on first use.
"""

# ruff: noqa: F401  (the TYPE_CHECKING imports at the end are re-exports)
from __future__ import annotations

from typing import TYPE_CHECKING

from cove._lazy import lazy_exports

# module -> the public names it defines
_EXPORTS = {
    "cove.accelerate.accelerator": ("Accelerator",),
    "cove.accelerate.state": ("PartialState", "DistributedType"),
    "cove.accelerate.data_loader": ("skip_first_batches",),
    "cove.accelerate.launchers": ("notebook_launcher",),
    "cove.accelerate.plugins": ("DataLoaderConfiguration", "DistributedDataParallelKwargs",
                                "FullyShardedDataParallelPlugin", "GradScalerKwargs",
                                "InitProcessGroupKwargs"),
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS, reference="accelerate")

if TYPE_CHECKING:  # what IDEs and type checkers see; at run time the names resolve lazily
    from cove.accelerate.accelerator import (
        Accelerator,
    )
    from cove.accelerate.data_loader import (
        skip_first_batches,
    )
    from cove.accelerate.launchers import (
        notebook_launcher,
    )
    from cove.accelerate.plugins import (
        DataLoaderConfiguration,
        DistributedDataParallelKwargs,
        FullyShardedDataParallelPlugin,
        GradScalerKwargs,
        InitProcessGroupKwargs,
    )
    from cove.accelerate.state import (
        DistributedType,
        PartialState,
    )
