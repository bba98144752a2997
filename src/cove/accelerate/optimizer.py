"""The optimizer and scheduler an `Accelerator` hands back: they step on the last micro-batch
of each gradient-accumulation window only, through the grad scaler under fp16."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from cove.accelerate.operations import send_to_device


class AcceleratedOptimizer(torch.optim.Optimizer):
    """`optimizer`, whose `step` and `zero_grad` act only when gradients are synchronised.

    Under fp16 it steps through the `GradScaler` (a step whose gradients overflowed is skipped:
    `step_was_skipped`). Everything else is the wrapped optimizer's.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, gradient_state: Any,
                 device: torch.device | None = None, scaler: Any = None,
                 sync_found_inf: bool = False) -> None:
        # (Optimizer.__init__ is not called: the state and groups are the wrapped optimizer's)
        self.optimizer = optimizer
        self.gradient_state = gradient_state
        self.scaler = scaler
        self._sync_found_inf = sync_found_inf
        self._unscaled = False
        self._step_was_skipped = False
        if device is not None and optimizer.state:
            optimizer.load_state_dict(send_to_device(optimizer.state_dict(), device))

    def __getattr__(self, name: str) -> Any:
        if name == "optimizer":
            raise AttributeError(name)
        return getattr(self.optimizer, name)

    @property
    def state(self) -> Any:
        return self.optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.optimizer.state = value

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict]) -> None:
        self.optimizer.param_groups = value

    @property
    def defaults(self) -> dict:
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict) -> None:
        self.optimizer.defaults = value

    def __repr__(self) -> str:
        return f"AcceleratedOptimizer({self.optimizer!r})"

    def add_param_group(self, param_group: dict) -> None:
        self.optimizer.add_param_group(param_group)

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.optimizer.load_state_dict(state_dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        if self.gradient_state.sync_gradients:
            self.optimizer.zero_grad(set_to_none=set_to_none)

    def unscale_(self) -> None:
        """Divide the gradients by the fp16 loss scale (once per step; a no-op otherwise)."""
        if self.scaler is None or self._unscaled:
            return
        self.scaler.unscale_(self.optimizer)
        self._unscaled = True
        if self._sync_found_inf:
            # Sharded gradients (FSDP2): each process checked only its shard for infs; all
            # must agree to skip the step. GradScaler keeps the flags in a private table.
            state = self.scaler._per_optimizer_states[id(self.optimizer)]
            for found in state["found_inf_per_device"].values():
                dist.all_reduce(found, op=dist.ReduceOp.MAX)

    def step(self, closure: Any = None) -> Any:
        if not self.gradient_state.sync_gradients:
            return None
        if self.scaler is None:
            return self.optimizer.step(closure) if closure is not None else self.optimizer.step()
        self.unscale_()
        scale = self.scaler.get_scale()
        result = self.scaler.step(self.optimizer, closure) if closure is not None \
            else self.scaler.step(self.optimizer)
        self.scaler.update()
        self._unscaled = False
        self._step_was_skipped = self.scaler.get_scale() < scale  # an overflow backs the scale off
        return result

    @property
    def step_was_skipped(self) -> bool:
        """Whether the last step was skipped because fp16 gradients overflowed."""
        return self._step_was_skipped

    def train(self) -> None:
        """Train mode, for optimizers that have one (schedule-free)."""
        if callable(getattr(self.optimizer, "train", None)):
            self.optimizer.train()

    def eval(self) -> None:
        """Eval mode, for optimizers that have one (schedule-free)."""
        if callable(getattr(self.optimizer, "eval", None)):
            self.optimizer.eval()


class AcceleratedScheduler:
    """A learning-rate scheduler that steps with the optimizer (accelerate's rules).

    With `step_with_optimizer` it steps only when the optimizers did (not on accumulation
    micro-batches, not after an fp16 overflow) and, without `split_batches`, once per process:
    a schedule written for one process's batches then ends when the data does.
    """

    def __init__(self, scheduler: Any, optimizers: list[AcceleratedOptimizer], gradient_state: Any,
                 num_processes: int = 1, step_with_optimizer: bool = True,
                 split_batches: bool = False) -> None:
        self.scheduler = scheduler
        self.optimizers = optimizers
        self.gradient_state = gradient_state
        self.num_processes = num_processes
        self.step_with_optimizer = step_with_optimizer
        self.split_batches = split_batches

    def __getattr__(self, name: str) -> Any:
        if name == "scheduler":
            raise AttributeError(name)
        return getattr(self.scheduler, name)

    def step(self, *args: Any, **kwargs: Any) -> None:
        if not self.step_with_optimizer:
            self.scheduler.step(*args, **kwargs)
            return
        if not self.gradient_state.sync_gradients:
            return
        if any(opt.step_was_skipped for opt in self.optimizers):
            return
        for _ in range(1 if self.split_batches else self.num_processes):
            total = getattr(self.scheduler, "total_steps", None)  # OneCycleLR errors past its end
            if total is None or self.scheduler._step_count <= total:
                self.scheduler.step(*args, **kwargs)

    def get_last_lr(self) -> list[float]:
        return self.scheduler.get_last_lr()

    def state_dict(self) -> dict:
        return self.scheduler.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.scheduler.load_state_dict(state_dict)
