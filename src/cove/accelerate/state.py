"""The process's place in a run: the process group, its device, and the gradient-sync state.

`PartialState` is shared by the whole process (every instance sees the same state): the first
one made sets up torch.distributed from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR/PORT), gloo on CPU and NCCL on GPUs. Not launched, it is a single process.
Unlike accelerate, a CPU-only machine under torchrun runs all its processes (over gloo)
without `cpu=True`; the main process says so once on stderr.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import enum
import gc
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist

from cove.accelerate.environment import env_flag, env_int


class DistributedType(str, enum.Enum):
    """How the run is spread: accelerate's names for the kinds Cove supports."""

    NO = "NO"
    MULTI_CPU = "MULTI_CPU"
    MULTI_GPU = "MULTI_GPU"
    FSDP = "FSDP"


def _destroy_at_exit() -> None:
    """A group the script did not end (no `end_training`) ends while Python is still whole:
    left to the interpreter's teardown, gloo may abort the process as it exits."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
    PartialState._shared.clear()


class PartialState:
    """The process group and this process's rank and device, shared by the whole process.

    `cpu=True` keeps the run on CPU (gloo) even where GPUs exist; `backend` and `timeout`
    override the process group's (else NCCL on GPUs, gloo on CPU). Only the first instance's
    arguments count: the process group exists once per process.
    """

    _shared: dict[str, Any] = {}

    def __init__(self, cpu: bool = False, backend: str | None = None,
                 timeout: datetime.timedelta | None = None) -> None:
        self.__dict__ = self._shared  # every instance is a view of the one shared state
        if self._shared:
            return
        cpu = cpu or env_flag("COVE_USE_CPU")
        world_size = env_int("WORLD_SIZE", 1)
        rank = env_int("RANK", 0)
        local_rank = env_int("LOCAL_RANK", 0)
        use_cuda = torch.cuda.is_available() and not cpu
        if dist.is_available() and dist.is_initialized():  # the user set it up: use theirs
            world_size, rank = dist.get_world_size(), dist.get_rank()
            backend = dist.get_backend()
            use_cuda = use_cuda and backend == "nccl"
        elif world_size > 1 or ("MASTER_ADDR" in os.environ and "WORLD_SIZE" in os.environ):
            # (a group of one too, under torchrun: FSDP2 needs one)
            backend = backend or ("nccl" if use_cuda else "gloo")
            if use_cuda:
                torch.cuda.set_device(local_rank)
            kwargs: dict[str, Any] = {"backend": backend}
            if timeout is not None:
                kwargs["timeout"] = timeout
            if use_cuda and backend == "nccl":
                kwargs["device_id"] = torch.device("cuda", local_rank)
            dist.init_process_group(**kwargs)
            atexit.register(_destroy_at_exit)
        else:
            backend = None
        self.backend: str | None = backend
        self.num_processes: int = world_size
        self.process_index: int = rank
        self.local_process_index: int = local_rank
        self.device: torch.device = (torch.device("cuda", local_rank) if use_cuda
                                     else torch.device("cpu"))
        if use_cuda:
            torch.cuda.set_device(self.device)
        self.distributed_type = (DistributedType.NO if world_size == 1 else
                                 DistributedType.MULTI_GPU if use_cuda else DistributedType.MULTI_CPU)
        if self.distributed_type == DistributedType.MULTI_CPU and self.is_main_process:
            print(f"cove.accelerate: {world_size} processes on CPU over {backend}",
                  file=sys.stderr, flush=True)

    def __repr__(self) -> str:
        return (f"Distributed environment: {self.distributed_type.value}\n"
                f"Backend: {self.backend}\nNum processes: {self.num_processes}\n"
                f"Process index: {self.process_index}\n"
                f"Local process index: {self.local_process_index}\nDevice: {self.device}\n")

    @classmethod
    def _reset_state(cls) -> None:
        """Forget the shared state (the process group stays): for tests."""
        cls._shared.clear()

    @property
    def use_distributed(self) -> bool:
        return self.num_processes > 1

    @property
    def is_main_process(self) -> bool:
        return self.process_index == 0

    @property
    def is_local_main_process(self) -> bool:
        return self.local_process_index == 0

    @property
    def is_last_process(self) -> bool:
        return self.process_index == self.num_processes - 1

    def wait_for_everyone(self) -> None:
        """A barrier: every process waits here until all have reached it."""
        if self.use_distributed:
            dist.barrier()

    @contextlib.contextmanager
    def main_process_first(self) -> Iterator[None]:
        """The main process runs the block first (e.g. to build a cache); the others after."""
        with self._first(self.is_main_process):
            yield

    @contextlib.contextmanager
    def local_main_process_first(self) -> Iterator[None]:
        """Each machine's main process runs the block first; the others after."""
        with self._first(self.is_local_main_process):
            yield

    @contextlib.contextmanager
    def _first(self, leader: bool) -> Iterator[None]:
        if not leader:
            self.wait_for_everyone()
        yield
        if leader:
            self.wait_for_everyone()

    def print(self, *args: Any, **kwargs: Any) -> None:
        """`print`, on each machine's main process only."""
        if self.is_local_main_process:
            print(*args, **kwargs)

    def on_main_process(self, function: Callable) -> Callable:
        """Decorator: `function` runs on the main process only (elsewhere it returns None)."""
        def run(*args: Any, **kwargs: Any) -> Any:
            return function(*args, **kwargs) if self.is_main_process else None
        return run

    @contextlib.contextmanager
    def split_between_processes(self, inputs: Any, apply_padding: bool = False) -> Iterator[Any]:
        """This process's contiguous share of `inputs` (a list, tuple, tensor, or a dict of them).

        The first `len % num_processes` processes get one more item; `apply_padding=True`
        repeats the last item so that every process gets as many (drop them after gathering).
        """
        if self.num_processes == 1:
            yield inputs
            return
        lengths = ({len(v) for v in inputs.values()} if isinstance(inputs, dict)
                   else {len(inputs)})
        if len(lengths) != 1:
            raise ValueError(f"split_between_processes: the dict's values must all have the same "
                             f"length, got lengths {sorted(lengths)}")
        (length,) = lengths
        per, extras = divmod(length, self.num_processes)
        start = self.process_index * per + min(self.process_index, extras)
        end = start + per + (1 if self.process_index < extras else 0)
        wanted = per + (1 if extras else 0)

        def split(values: Any) -> Any:
            if isinstance(values, dict):
                return {k: split(v) for k, v in values.items()}
            part = values[start:end]
            if apply_padding and len(part) < wanted and length:
                last = values[-1:]
                pad = wanted - len(part)
                if isinstance(values, torch.Tensor):
                    part = torch.cat([part, last.expand(pad, *values.shape[1:])])
                else:
                    part = part + type(values)(list(last) * pad)
            return part

        yield split(inputs)

    def destroy_process_group(self) -> None:
        """End the process group this state set up, safely for gloo: every process reaches a
        barrier first and dead objects holding the group are collected before it goes."""
        if not (dist.is_available() and dist.is_initialized()):
            return
        dist.barrier()  # no process leaves while another still talks to it
        gc.collect()
        dist.destroy_process_group()
        self._shared.clear()


class GradientState:
    """Whether this step synchronises gradients, and where the active dataloader is.

    One per `Accelerator`: its prepared dataloaders report to it, so that `sync_gradients` is
    also true on the last batch of a dataloader and `gather_for_metrics` knows the remainder.
    """

    def __init__(self, num_steps: int = 1, sync_with_dataloader: bool = True) -> None:
        self.num_steps = num_steps
        self.sync_with_dataloader = sync_with_dataloader
        self.sync_gradients = True
        self.active_dataloaders: list[Any] = []

    @property
    def active_dataloader(self) -> Any:
        return self.active_dataloaders[-1] if self.active_dataloaders else None

    @property
    def in_dataloader(self) -> bool:
        return bool(self.active_dataloaders)

    @property
    def end_of_dataloader(self) -> bool:
        loader = self.active_dataloader
        return bool(loader is not None and loader.end_of_dataloader)

    @property
    def remainder(self) -> int:
        """Samples in the last global batch that are not padding; -1 if unknown."""
        loader = self.active_dataloader
        return -1 if loader is None else loader.remainder

    def _set_sync_gradients(self, sync_gradients: bool) -> None:
        self.sync_gradients = sync_gradients

    def _add_dataloader(self, loader: Any) -> None:
        self.active_dataloaders.append(loader)

    def _remove_dataloader(self, loader: Any) -> None:
        if loader in self.active_dataloaders:
            self.active_dataloaders.remove(loader)


class AcceleratorState:
    """An `Accelerator`'s settings on top of the process's `PartialState` (`accelerator.state`)."""

    def __init__(self, partial: PartialState, mixed_precision: str, fsdp_plugin: Any = None) -> None:
        self._partial = partial
        self.mixed_precision = mixed_precision
        self.fsdp_plugin = fsdp_plugin

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_partial":
            raise AttributeError(name)
        return getattr(self._partial, name)

    @property
    def distributed_type(self) -> DistributedType:
        return DistributedType.FSDP if self.fsdp_plugin is not None else self._partial.distributed_type

    def __repr__(self) -> str:
        text = repr(self._partial).replace(self._partial.distributed_type.value,
                                           self.distributed_type.value, 1)
        return text + f"Mixed precision type: {self.mixed_precision}\n"
