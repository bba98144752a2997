"""The Trainer's named choices (strategies, schedulers), as transformers' string enums.

Each enum accepts its value as a plain string (`IntervalStrategy("steps")`) and compares equal
to it. A name transformers has but Cove does not implement gets an error that says so, apart
from the plain "not a valid ..." of a misspelt one.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

# values transformers accepts that Cove does not implement, per enum
NOT_IN_COVE: dict[str, frozenset[str]] = {"SchedulerType": frozenset({"greedy"})}


class ExplicitEnum(str, Enum):
    """A string enum whose error for an unknown value lists the valid ones."""

    @classmethod
    def _missing_(cls, value: Any) -> ExplicitEnum:
        valid = list(cls._value2member_map_)
        if value in NOT_IN_COVE.get(cls.__name__, ()):
            raise ValueError(f"{value!r} is a transformers {cls.__name__} that Cove does not "
                             f"implement; Cove has {valid}")
        raise ValueError(f"{value} is not a valid {cls.__name__}, please select one of {valid}")


class IntervalStrategy(ExplicitEnum):
    """When to log or evaluate: never, every `*_steps` update steps, or each epoch's end."""

    NO = "no"
    STEPS = "steps"
    EPOCH = "epoch"


class SaveStrategy(ExplicitEnum):
    """When to save a checkpoint: as `IntervalStrategy`, or at each new best metric."""

    NO = "no"
    STEPS = "steps"
    EPOCH = "epoch"
    BEST = "best"


class SchedulerType(ExplicitEnum):
    """The learning-rate schedules `get_scheduler` builds by name."""

    LINEAR = "linear"
    COSINE = "cosine"
    COSINE_WITH_RESTARTS = "cosine_with_restarts"
    POLYNOMIAL = "polynomial"
    CONSTANT = "constant"
    CONSTANT_WITH_WARMUP = "constant_with_warmup"
    INVERSE_SQRT = "inverse_sqrt"
    REDUCE_ON_PLATEAU = "reduce_lr_on_plateau"
    COSINE_WITH_MIN_LR = "cosine_with_min_lr"
    COSINE_WARMUP_WITH_MIN_LR = "cosine_warmup_with_min_lr"
    WARMUP_STABLE_DECAY = "warmup_stable_decay"
