"""Learning-rate schedules by name (`get_scheduler`) and the Trainer's optimizer (`create_optimizer`).

Each schedule is a `torch.optim.lr_scheduler.LambdaLR` whose factor at step `t` follows the
formula of the transformers schedule of the same name, so the learning rates of every step are
transformers' (the tests compare them step by step).
"""

from __future__ import annotations

import functools
import math
import re
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau

from cove.trainer.trainer_utils import SchedulerType

if TYPE_CHECKING:
    from cove.trainer.training_args import TrainingArguments


def _warmup(step: int, num_warmup_steps: int) -> float:
    """The linear warmup factor, from 0 at step 0 to 1 at `num_warmup_steps`."""
    return float(step) / float(max(1, num_warmup_steps))


def _progress(step: int, num_warmup_steps: int, num_training_steps: int) -> float:
    """How far past the warmup `step` is, as a fraction of the steps after it."""
    return float(step - num_warmup_steps) / float(max(1, num_training_steps - num_warmup_steps))


def _half_cosine(progress: float, num_cycles: float) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress))


# The factor functions are module-level (bound with functools.partial, not closures) so that a
# scheduler's state_dict pickles, as torch's checkpointing of LambdaLR expects.

def _constant(step: int) -> float:
    return 1.0


def _constant_with_warmup(step: int, *, num_warmup_steps: int) -> float:
    return _warmup(step, num_warmup_steps) if step < num_warmup_steps else 1.0


def _linear(step: int, *, num_warmup_steps: int, num_training_steps: int) -> float:
    if step < num_warmup_steps:
        return _warmup(step, num_warmup_steps)
    return max(0.0, float(num_training_steps - step)
               / float(max(1, num_training_steps - num_warmup_steps)))


def _cosine(step: int, *, num_warmup_steps: int, num_training_steps: int, num_cycles: float,
            min_lr_rate: float = 0.0) -> float:
    if step < num_warmup_steps:
        return _warmup(step, num_warmup_steps)
    factor = _half_cosine(_progress(step, num_warmup_steps, num_training_steps), num_cycles)
    return max(0.0, factor * (1 - min_lr_rate) + min_lr_rate)  # exact when min_lr_rate is 0


def _cosine_with_hard_restarts(step: int, *, num_warmup_steps: int, num_training_steps: int,
                               num_cycles: int) -> float:
    if step < num_warmup_steps:
        return _warmup(step, num_warmup_steps)
    progress = _progress(step, num_warmup_steps, num_training_steps)
    if progress >= 1.0:
        return 0.0
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((float(num_cycles) * progress) % 1.0))))


def _polynomial(step: int, *, num_warmup_steps: int, num_training_steps: int, lr_end: float,
                power: float, lr_init: float) -> float:
    # LambdaLR multiplies by the initial lr: the factor is the wanted lr over it.
    if step < num_warmup_steps:
        return _warmup(step, num_warmup_steps)
    if step > num_training_steps:
        return lr_end / lr_init
    remaining = 1 - (step - num_warmup_steps) / (num_training_steps - num_warmup_steps)
    return ((lr_init - lr_end) * remaining**power + lr_end) / lr_init


def _inverse_sqrt(step: int, *, num_warmup_steps: int, timescale: int) -> float:
    if step < num_warmup_steps:
        return _warmup(step, num_warmup_steps)
    return 1.0 / math.sqrt((step + timescale - num_warmup_steps) / timescale)


def _cosine_warmup_with_min_lr(step: int, *, num_warmup_steps: int, num_training_steps: int,
                               num_cycles: float, min_lr_rate: float,
                               warmup_lr_rate: float | None) -> float:
    # This schedule counts from step 1: its warmup never yields 0, its decay reaches the end.
    step, warmup, total = float(step), float(num_warmup_steps), float(num_training_steps)
    if step < warmup:
        if warmup_lr_rate is None:
            return (step + 1.0) / max(1.0, warmup)
        rate = float(warmup_lr_rate)
        return rate + (1.0 - rate) * step / max(1, warmup - 1)
    progress = (step - warmup + 1.0) / max(1.0, total - warmup)
    factor = _half_cosine(progress, num_cycles) * (1 - min_lr_rate) + min_lr_rate
    return max(0.0, factor)


_SHAPES = ("linear", "cosine", "1-sqrt")


def _wsd(step: int, *, num_warmup_steps: int, num_stable_steps: int, num_decay_steps: int,
         warmup_type: str, decay_type: str, min_lr_ratio: float, num_cycles: float) -> float:
    if step < num_warmup_steps:
        progress = _warmup(step, num_warmup_steps)
        factor = {"linear": progress, "cosine": 0.5 * (1.0 - math.cos(math.pi * progress)),
                  "1-sqrt": 1.0 - math.sqrt(1.0 - progress)}[warmup_type]
        return max(0.0, factor * (1.0 - min_lr_ratio) + min_lr_ratio)
    if step < num_warmup_steps + num_stable_steps:
        return 1.0
    if step < num_warmup_steps + num_stable_steps + num_decay_steps:
        progress = (float(step - num_warmup_steps - num_stable_steps)
                    / float(max(1, num_decay_steps)))
        if decay_type == "linear":
            factor = 1.0 - progress
        elif decay_type == "cosine":
            factor = _half_cosine(progress, num_cycles)
        else:
            factor = 1.0 - math.sqrt(progress)
        return max(0.0, factor * (1.0 - min_lr_ratio) + min_lr_ratio)
    return min_lr_ratio


def get_constant_schedule(optimizer: Optimizer, last_epoch: int = -1) -> LambdaLR:
    """The optimizer's learning rate, unchanged."""
    return LambdaLR(optimizer, _constant, last_epoch=last_epoch)


def get_constant_schedule_with_warmup(optimizer: Optimizer, num_warmup_steps: int,
                                      last_epoch: int = -1) -> LambdaLR:
    """A linear warmup from 0 over `num_warmup_steps`, then the optimizer's learning rate."""
    return LambdaLR(optimizer, functools.partial(_constant_with_warmup,
                                                 num_warmup_steps=num_warmup_steps),
                    last_epoch=last_epoch)


def get_linear_schedule_with_warmup(optimizer: Optimizer, num_warmup_steps: int,
                                    num_training_steps: int, last_epoch: int = -1) -> LambdaLR:
    """A linear warmup from 0, then a linear decay to 0 at `num_training_steps`."""
    return LambdaLR(optimizer, functools.partial(_linear, num_warmup_steps=num_warmup_steps,
                                                 num_training_steps=num_training_steps),
                    last_epoch=last_epoch)


def get_cosine_schedule_with_warmup(optimizer: Optimizer, num_warmup_steps: int,
                                    num_training_steps: int, num_cycles: float = 0.5,
                                    last_epoch: int = -1) -> LambdaLR:
    """A linear warmup, then a cosine decay (`num_cycles` waves; 0.5: a half wave down to 0)."""
    return LambdaLR(optimizer, functools.partial(_cosine, num_warmup_steps=num_warmup_steps,
                                                 num_training_steps=num_training_steps,
                                                 num_cycles=num_cycles),
                    last_epoch=last_epoch)


def get_cosine_with_hard_restarts_schedule_with_warmup(
        optimizer: Optimizer, num_warmup_steps: int, num_training_steps: int,
        num_cycles: int = 1, last_epoch: int = -1) -> LambdaLR:
    """A linear warmup, then `num_cycles` cosine decays to 0, each restarting from the top."""
    return LambdaLR(optimizer, functools.partial(
        _cosine_with_hard_restarts, num_warmup_steps=num_warmup_steps,
        num_training_steps=num_training_steps, num_cycles=num_cycles), last_epoch=last_epoch)


def get_polynomial_decay_schedule_with_warmup(
        optimizer: Optimizer, num_warmup_steps: int, num_training_steps: int,
        lr_end: float = 1e-7, power: float = 1.0, last_epoch: int = -1) -> LambdaLR:
    """A linear warmup, then a polynomial decay (of `power`) from the initial lr to `lr_end`."""
    lr_init = optimizer.defaults["lr"]
    if not lr_init > lr_end:
        raise ValueError(f"lr_end ({lr_end}) must be smaller than initial lr ({lr_init})")
    return LambdaLR(optimizer, functools.partial(
        _polynomial, num_warmup_steps=num_warmup_steps, num_training_steps=num_training_steps,
        lr_end=lr_end, power=power, lr_init=lr_init), last_epoch=last_epoch)


def get_inverse_sqrt_schedule(optimizer: Optimizer, num_warmup_steps: int,
                              timescale: int | None = None, last_epoch: int = -1) -> LambdaLR:
    """A linear warmup, then a decay as 1/sqrt(step) (`timescale` defaults to the warmup)."""
    if timescale is None:
        timescale = num_warmup_steps or 10_000
    return LambdaLR(optimizer, functools.partial(_inverse_sqrt, num_warmup_steps=num_warmup_steps,
                                                 timescale=timescale), last_epoch=last_epoch)


def _min_lr_rate(optimizer: Optimizer, min_lr: float | None, min_lr_rate: float | None) -> float:
    if min_lr is not None and min_lr_rate is not None:
        raise ValueError("Only one of min_lr or min_lr_rate should be set")
    if min_lr is not None:
        return min_lr / optimizer.defaults["lr"]
    if min_lr_rate is None:
        raise ValueError("One of min_lr or min_lr_rate should be set through the "
                         "`lr_scheduler_kwargs`")
    return min_lr_rate


def get_cosine_with_min_lr_schedule_with_warmup(
        optimizer: Optimizer, num_warmup_steps: int, num_training_steps: int,
        num_cycles: float = 0.5, last_epoch: int = -1, min_lr: float | None = None,
        min_lr_rate: float | None = None) -> LambdaLR:
    """As the cosine schedule, decaying to `min_lr` (or `min_lr_rate` times the lr), not 0."""
    rate = _min_lr_rate(optimizer, min_lr, min_lr_rate)
    return LambdaLR(optimizer, functools.partial(
        _cosine, num_warmup_steps=num_warmup_steps, num_training_steps=num_training_steps,
        num_cycles=num_cycles, min_lr_rate=rate), last_epoch=last_epoch)


def get_cosine_with_min_lr_schedule_with_warmup_lr_rate(
        optimizer: Optimizer, num_warmup_steps: int, num_training_steps: int,
        num_cycles: float = 0.5, last_epoch: int = -1, min_lr: float | None = None,
        min_lr_rate: float | None = None, warmup_lr_rate: float | None = None) -> LambdaLR:
    """The cosine-to-`min_lr` schedule counted from step 1, its warmup from `warmup_lr_rate`."""
    rate = _min_lr_rate(optimizer, min_lr, min_lr_rate)
    return LambdaLR(optimizer, functools.partial(
        _cosine_warmup_with_min_lr, num_warmup_steps=num_warmup_steps,
        num_training_steps=num_training_steps, num_cycles=num_cycles, min_lr_rate=rate,
        warmup_lr_rate=warmup_lr_rate), last_epoch=last_epoch)


def get_wsd_schedule(optimizer: Optimizer, num_warmup_steps: int, num_decay_steps: int,
                     num_training_steps: int | None = None, num_stable_steps: int | None = None,
                     warmup_type: str = "linear", decay_type: str = "cosine",
                     min_lr_ratio: float = 0, num_cycles: float = 0.5,
                     last_epoch: int = -1) -> LambdaLR:
    """Warmup, stable, decay: up to the lr, held, then down to `min_lr_ratio` times it.

    The stable phase lasts `num_stable_steps`, or what `num_training_steps` leaves of it.
    """
    if num_training_steps is None and num_stable_steps is None:
        raise ValueError("Either num_training_steps or num_stable_steps must be specified.")
    if num_training_steps is not None and num_stable_steps is not None:
        warnings.warn("Both num_training_steps and num_stable_steps are specified. "
                      "num_stable_steps will be used.", stacklevel=2)
    for name, shape in (("warmup", warmup_type), ("decay", decay_type)):
        if shape not in _SHAPES:
            raise ValueError(f"Unknown {name} type: {shape}, expected 'linear', 'cosine' or "
                             "'1-sqrt'")
    if num_stable_steps is None:
        num_stable_steps = num_training_steps - num_warmup_steps - num_decay_steps
    return LambdaLR(optimizer, functools.partial(
        _wsd, num_warmup_steps=num_warmup_steps, num_stable_steps=num_stable_steps,
        num_decay_steps=num_decay_steps, warmup_type=warmup_type, decay_type=decay_type,
        min_lr_ratio=min_lr_ratio, num_cycles=num_cycles), last_epoch=last_epoch)


def get_reduce_on_plateau_schedule(optimizer: Optimizer, **kwargs: Any) -> ReduceLROnPlateau:
    """torch's `ReduceLROnPlateau` (stepped with the evaluation metric); kwargs go to it."""
    return ReduceLROnPlateau(optimizer, **kwargs)


TYPE_TO_SCHEDULER_FUNCTION = {
    SchedulerType.LINEAR: get_linear_schedule_with_warmup,
    SchedulerType.COSINE: get_cosine_schedule_with_warmup,
    SchedulerType.COSINE_WITH_RESTARTS: get_cosine_with_hard_restarts_schedule_with_warmup,
    SchedulerType.POLYNOMIAL: get_polynomial_decay_schedule_with_warmup,
    SchedulerType.CONSTANT: get_constant_schedule,
    SchedulerType.CONSTANT_WITH_WARMUP: get_constant_schedule_with_warmup,
    SchedulerType.INVERSE_SQRT: get_inverse_sqrt_schedule,
    SchedulerType.REDUCE_ON_PLATEAU: get_reduce_on_plateau_schedule,
    SchedulerType.COSINE_WITH_MIN_LR: get_cosine_with_min_lr_schedule_with_warmup,
    SchedulerType.COSINE_WARMUP_WITH_MIN_LR: get_cosine_with_min_lr_schedule_with_warmup_lr_rate,
    SchedulerType.WARMUP_STABLE_DECAY: get_wsd_schedule,
}


def get_scheduler(name: str | SchedulerType, optimizer: Optimizer,
                  num_warmup_steps: int | None = None, num_training_steps: int | None = None,
                  scheduler_specific_kwargs: dict | None = None,
                  ) -> LambdaLR | ReduceLROnPlateau:
    """The schedule called `name` (see `SchedulerType`) over `optimizer`.

    `scheduler_specific_kwargs` go to the schedule (num_cycles, power, lr_end, min_lr, ...);
    a schedule that needs the warmup or the total number of steps says so when it lacks them.
    """
    name = SchedulerType(name)
    schedule = TYPE_TO_SCHEDULER_FUNCTION[name]
    kwargs = dict(scheduler_specific_kwargs or {})
    if name == SchedulerType.CONSTANT:
        return schedule(optimizer)
    if name == SchedulerType.REDUCE_ON_PLATEAU:
        return schedule(optimizer, **kwargs)
    if num_warmup_steps is None:
        raise ValueError(f"{name.value} requires `num_warmup_steps`, please provide that argument.")
    if name == SchedulerType.CONSTANT_WITH_WARMUP:
        return schedule(optimizer, num_warmup_steps=num_warmup_steps)
    if name in (SchedulerType.INVERSE_SQRT, SchedulerType.WARMUP_STABLE_DECAY):
        if name == SchedulerType.WARMUP_STABLE_DECAY:
            # it can do with num_stable_steps instead
            kwargs["num_training_steps"] = num_training_steps
        return schedule(optimizer, num_warmup_steps=num_warmup_steps, **kwargs)
    if num_training_steps is None:
        raise ValueError(f"{name.value} requires `num_training_steps`, please provide that "
                         "argument.")
    return schedule(optimizer, num_warmup_steps=num_warmup_steps,
                    num_training_steps=num_training_steps, **kwargs)


# --- the optimizer ------------------------------------------------------------------------

# Parameter names that get no weight decay: biases and normalisation weights, by name (the
# model's LayerNorm modules are caught by type as well, whatever their attribute is called).
_NO_DECAY_NAME_PATTERNS = tuple(re.compile(p) for p in (
    r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"))


def get_decay_parameter_names(model: nn.Module) -> list[str]:
    """The names of `model`'s parameters that weight decay applies to.

    Left out: every parameter of a `nn.LayerNorm`, and every parameter whose lowercased name
    has "bias", "layernorm", "rmsnorm", a "norm" component or a component ending in "_norm".
    """
    names = []
    for module_name, module in model.named_modules(remove_duplicate=False):
        prefix = f"{module_name}." if module_name else ""
        in_layernorm = any(isinstance(m, nn.LayerNorm) for m in _ancestors(model, module_name))
        for param_name in module._parameters:
            full = prefix + param_name
            if in_layernorm or any(p.search(full.lower()) for p in _NO_DECAY_NAME_PATTERNS):
                continue
            names.append(full)
    return names


def _ancestors(model: nn.Module, module_name: str) -> list[nn.Module]:
    """The modules on the path from `model`'s child to the one called `module_name`."""
    path, module = [], model
    for part in module_name.split(".") if module_name else ():
        module = getattr(module, part)
        path.append(module)
    return path


def _parse_optim_args(optim_args: str | None) -> dict[str, str]:
    """'momentum=0.9, nesterov=True' -> {'momentum': '0.9', 'nesterov': 'True'}."""
    parsed = {}
    for item in (optim_args or "").replace(" ", "").split(","):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"optim_args must be 'key=value' pairs separated by commas, got "
                             f"{optim_args!r}")
        parsed[key] = value
    return parsed


_TRUE = ("true", "1", "yes")
# per optimizer: the optim_args it reads (float ones, then bool ones)
_OPTIM_ARGS = {
    "adamw_torch": ((), ()),
    "adamw_torch_fused": ((), ()),
    "sgd": (("momentum", "dampening", "weight_decay"), ("nesterov",)),
    "adagrad": (("lr_decay", "weight_decay", "eps"), ()),
    "rmsprop": (("momentum", "alpha", "eps", "weight_decay"), ("centered",)),
}


def get_optimizer_cls_and_kwargs(args: TrainingArguments) -> tuple[type[Optimizer], dict[str, Any]]:
    """The torch optimizer class `args.optim` names, and its keyword arguments from `args`."""
    from cove.trainer.training_args import OptimizerNames

    optim = OptimizerNames(args.optim)
    kwargs: dict[str, Any] = {"lr": args.learning_rate}
    optim_args = _parse_optim_args(args.optim_args)
    floats, bools = _OPTIM_ARGS[optim.value]
    unused = sorted(set(optim_args) - set(floats) - set(bools))
    if unused:
        raise ValueError(f"optim_args {unused} are not arguments of {optim.value!r}"
                         + (f" (it takes {list(floats + bools)})" if floats or bools else ""))
    for key, value in optim_args.items():
        if key in bools:
            kwargs[key] = value.lower() in _TRUE
        else:
            try:
                kwargs[key] = float(value)
            except ValueError:
                raise ValueError(f"optim_args {key}={value!r} is not a number") from None
    if optim in (OptimizerNames.ADAMW_TORCH, OptimizerNames.ADAMW_TORCH_FUSED):
        kwargs.update(betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
        if optim == OptimizerNames.ADAMW_TORCH_FUSED:
            kwargs["fused"] = True
        return torch.optim.AdamW, kwargs
    return {OptimizerNames.SGD: torch.optim.SGD, OptimizerNames.ADAGRAD: torch.optim.Adagrad,
            OptimizerNames.RMSPROP: torch.optim.RMSprop}[optim], kwargs


def create_optimizer(model: nn.Module, args: TrainingArguments) -> Optimizer:
    """The optimizer the Trainer trains `model` with: `args.optim` over two parameter groups.

    The trainable parameters `get_decay_parameter_names` lists get `args.weight_decay`; the others
    (biases, normalisation weights) none.
    """
    decay = set(get_decay_parameter_names(model))
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters (every requires_grad is False)")
    groups = [
        {"params": [p for n, p in trainable if n in decay], "weight_decay": args.weight_decay},
        {"params": [p for n, p in trainable if n not in decay], "weight_decay": 0.0},
    ]
    optimizer_cls, kwargs = get_optimizer_cls_and_kwargs(args)
    return optimizer_cls(groups, **kwargs)
