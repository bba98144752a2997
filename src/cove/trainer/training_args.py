"""`TrainingArguments`: every setting of a training run, with transformers 5's names and defaults.

    args = TrainingArguments("out", learning_rate=2e-5, num_train_epochs=1, eval_strategy="epoch")

The arguments are checked when made (strategies, schedulers, batch sizes, the
load-best-model rules), and serialise to JSON (`to_json_string`) for checkpoints and model cards:
Cove never pickles them. Arguments transformers 5.25 has and Cove does not implement are refused
by name, with the reason; so are the ones transformers 5 removed, with what replaced them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass
from enum import Enum
from typing import Any

from cove.accelerate.environment import env_int
from cove.trainer.trainer_utils import (
    NOT_IN_COVE,
    ExplicitEnum,
    IntervalStrategy,
    SaveStrategy,
    SchedulerType,
)

logger = logging.getLogger("cove.trainer")


class OptimizerNames(ExplicitEnum):
    """The optimizers `create_optimizer` builds by name (all from torch.optim)."""

    ADAMW_TORCH = "adamw_torch"
    ADAMW_TORCH_FUSED = "adamw_torch_fused"
    SGD = "sgd"
    ADAGRAD = "adagrad"
    RMSPROP = "rmsprop"


NOT_IN_COVE["OptimizerNames"] = frozenset({
    "adamw_torch_xla", "adamw_torch_npu_fused", "adafactor", "adamw_anyprecision",
    "adamw_torch_4bit", "adamw_torch_8bit", "ademamix", "adamw_bnb_8bit", "adamw_8bit",
    "ademamix_8bit", "lion_8bit", "lion_32bit", "paged_adamw_32bit", "paged_adamw_8bit",
    "paged_ademamix_32bit", "paged_ademamix_8bit", "paged_lion_32bit", "paged_lion_8bit",
    "rmsprop_bnb", "rmsprop_bnb_8bit", "rmsprop_bnb_32bit", "galore_adamw", "galore_adamw_8bit",
    "galore_adafactor", "galore_adamw_layerwise", "galore_adamw_8bit_layerwise",
    "galore_adafactor_layerwise", "lomo", "adalomo", "grokadamw", "schedule_free_radam",
    "schedule_free_adamw", "schedule_free_sgd", "apollo_adamw", "apollo_adamw_layerwise",
    "stable_adamw",
})

# transformers 5.25 arguments Cove does not implement (distributed back ends, hardware, trackers)
_NOT_IMPLEMENTED = frozenset({
    "optim_target_modules", "label_smoothing_factor", "bf16_full_eval", "fp16_full_eval",
    "tf32", "use_liger_kernel", "liger_kernel_config", "use_cache", "neftune_noise_alpha",
    "torch_empty_cache_steps", "auto_find_batch_size", "logging_nan_inf_filter", "log_level",
    "log_level_replica", "project", "trackio_space_id", "trackio_bucket_id",
    "trackio_static_space_id", "eval_on_start", "eval_do_concat_batches",
    "eval_use_gather_object", "eval_accumulation_steps", "include_for_metrics",
    "batch_eval_metrics", "enable_jit_checkpoint", "hub_strategy", "hub_always_push",
    "hub_revision", "ignore_data_skip", "restore_callback_states_from_checkpoint",
    "full_determinism", "accelerator_config", "parallelism_config",
    "dataloader_multiprocessing_context", "dataloader_in_order", "ddp_find_unused_parameters",
    "ddp_bucket_cap_mb", "ddp_broadcast_buffers", "ddp_static_graph", "ddp_backend",
    "ddp_timeout", "fsdp", "fsdp_config", "deepspeed", "debug", "skip_memory_metrics",
    "do_train", "do_eval", "do_predict", "local_rank",
})
# arguments of earlier transformers versions that transformers 5 dropped -> what to use instead
_REMOVED = {
    "warmup_ratio": "warmup_steps (a float below 1 is a ratio of the training steps)",
    "evaluation_strategy": "eval_strategy",
    "group_by_length": "train_sampling_strategy='group_by_length'",
    "logging_dir": "the TENSORBOARD_LOGGING_DIR environment variable",
    "no_cuda": "use_cpu",
    "use_mps_device": "nothing: the device is picked by itself",
    "per_gpu_train_batch_size": "per_device_train_batch_size",
    "per_gpu_eval_batch_size": "per_device_eval_batch_size",
    "overwrite_output_dir": "nothing: checkpoints go to new checkpoint-N folders",
    "save_safetensors": "nothing: checkpoints are always safetensors",
}
_DICT_FIELDS = ("lr_scheduler_kwargs", "activation_checkpointing_kwargs",
                "gradient_checkpointing_kwargs")
_SAMPLING_STRATEGIES = ("random", "sequential", "group_by_length")
_TOKENS_SEEN = ("no", "all", "non_padding")
REPORTING_INTEGRATIONS = ("tensorboard",)
# transformers' other trackers, for a specific error
_OTHER_INTEGRATIONS = ("azure_ml", "clearml", "codecarbon", "comet_ml", "dagshub", "dvclive",
                       "flyte", "mlflow", "neptune", "swanlab", "trackio", "wandb", "kubeflow")


def _bf16_supported() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _tensorboard_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def resolve_report_to(report_to: str | list[str] | None) -> list[str]:
    """The trackers `report_to` names, as a list ("all": the installed ones; "none": [])."""
    names = [report_to] if isinstance(report_to, str) or report_to is None else list(report_to)
    if names in ([None], ["none"], []):
        return []
    if names == ["all"]:
        return ["tensorboard"] if _tensorboard_installed() else []
    for name in names:
        if name in _OTHER_INTEGRATIONS:
            raise ValueError(f"report_to={name!r}: Cove does not report to {name}; it reports "
                             f"to {list(REPORTING_INTEGRATIONS)}")
        if name not in REPORTING_INTEGRATIONS:
            raise ValueError(f"report_to has {name!r}: expected 'none', 'all' or a list of "
                             f"{list(REPORTING_INTEGRATIONS)}")
    return names


@dataclass
class TrainingArguments:
    """The settings of a training run (transformers 5.25's names, defaults and checks).

    `*_steps` values below 1 (logging, eval, save, warmup) are ratios of the total number of
    training steps. `report_to` takes "none" (the default), "all" or "tensorboard".
    """

    # output
    output_dir: str | None = None
    # training length and batch
    per_device_train_batch_size: int = 8
    num_train_epochs: float = 3.0
    max_steps: int = -1
    # learning rate and schedule
    learning_rate: float = 5e-5
    lr_scheduler_type: SchedulerType | str = "linear"
    lr_scheduler_kwargs: dict | str | None = None
    warmup_steps: float = 0
    # optimizer
    optim: OptimizerNames | str = "adamw_torch_fused"
    optim_args: str | None = None
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    gradient_accumulation_steps: int = 1
    average_tokens_across_devices: bool = True
    max_grad_norm: float = 1.0
    # precision, memory, compilation
    bf16: bool = False
    fp16: bool = False
    activation_checkpointing: bool | None = None
    activation_checkpointing_kwargs: dict[str, Any] | str | None = None
    gradient_checkpointing: bool | None = None  # transformers 5's deprecated name of the above
    gradient_checkpointing_kwargs: dict[str, Any] | str | None = None
    torch_compile: bool = False
    torch_compile_backend: str | None = None
    torch_compile_mode: str | None = None
    # logging
    logging_strategy: IntervalStrategy | str = "steps"
    logging_steps: float = 500
    logging_first_step: bool = False
    log_on_each_node: bool = True
    include_num_input_tokens_seen: str | bool = "no"
    disable_tqdm: bool | None = None
    report_to: str | list[str] | None = "none"
    run_name: str | None = None
    # evaluation
    eval_strategy: IntervalStrategy | str = "no"
    eval_steps: float | None = None
    eval_delay: float = 0
    per_device_eval_batch_size: int = 8
    prediction_loss_only: bool = False
    # checkpoints
    save_only_model: bool = False
    save_strategy: SaveStrategy | str = "steps"
    save_steps: float = 500
    save_on_each_node: bool = False
    save_total_limit: int | None = None
    # the Hub
    push_to_hub: bool = False
    hub_token: str | None = None
    hub_private_repo: bool | None = None
    hub_model_id: str | None = None
    # best model
    load_best_model_at_end: bool = False
    metric_for_best_model: str | None = None
    greater_is_better: bool | None = None
    # reproducibility and hardware
    seed: int = 42
    data_seed: int | None = None
    use_cpu: bool = False
    # data loading
    dataloader_drop_last: bool = False
    dataloader_num_workers: int = 0
    dataloader_pin_memory: bool = True
    dataloader_persistent_workers: bool = False
    dataloader_prefetch_factor: int | None = None
    remove_unused_columns: bool = True
    label_names: list[str] | None = None
    train_sampling_strategy: str = "random"
    length_column_name: str = "length"
    # scripts
    resume_from_checkpoint: str | None = None

    def __new__(cls, *args: Any, **kwargs: Any) -> TrainingArguments:
        # Checked here rather than in __init__ so that subclasses' generated __init__ get it too.
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        for name in kwargs:
            if name in known:
                continue
            if name in _REMOVED:
                raise TypeError(f"{cls.__name__} got an unexpected keyword argument {name!r}: "
                                f"transformers 5 removed it; use {_REMOVED[name]}")
            if name in _NOT_IMPLEMENTED:
                raise TypeError(f"{cls.__name__} got an unexpected keyword argument {name!r}: "
                                "transformers 5.25 has it, Cove does not implement it")
            raise TypeError(f"{cls.__name__}.__init__() got an unexpected keyword argument "
                            f"{name!r}")
        return super().__new__(cls)

    def __post_init__(self) -> None:
        if self.output_dir is None:
            self.output_dir = "trainer_output"
        self.output_dir = os.path.expanduser(self.output_dir)
        for name in _DICT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, str):  # from a command line: a JSON object
                try:
                    value = json.loads(value)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{name} must be a dict or a JSON object, got {value!r}: "
                                     f"{e}") from None
                setattr(self, name, value)
            if value is not None and not isinstance(value, dict):
                raise ValueError(f"{name} must be a dict or a JSON object, got {value!r}")

        # `gradient_checkpointing*` mirror `activation_checkpointing*` (the name transformers 5
        # moved to), so code reading either name sees the setting.
        for old, new in (("gradient_checkpointing", "activation_checkpointing"),
                         ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs")):
            if getattr(self, new) is None and getattr(self, old) is not None:
                setattr(self, new, getattr(self, old))
            setattr(self, old, getattr(self, new))
        if self.activation_checkpointing is None:
            self.activation_checkpointing = self.gradient_checkpointing = False

        if self.disable_tqdm is None:
            self.disable_tqdm = logger.getEffectiveLevel() > logging.WARNING
        if isinstance(self.include_num_input_tokens_seen, bool):
            self.include_num_input_tokens_seen = "all" if self.include_num_input_tokens_seen else "no"

        self.eval_strategy = IntervalStrategy(self.eval_strategy)
        self.logging_strategy = IntervalStrategy(self.logging_strategy)
        self.save_strategy = SaveStrategy(self.save_strategy)
        self.lr_scheduler_type = SchedulerType(self.lr_scheduler_type)
        self.optim = OptimizerNames(self.optim)

        if self.eval_strategy == IntervalStrategy.STEPS and not self.eval_steps:
            if self.logging_steps <= 0:
                raise ValueError(f"evaluation strategy {self.eval_strategy.value!r} requires "
                                 "either non-zero eval_steps or logging_steps")
            self.eval_steps = self.logging_steps
        if ((self.load_best_model_at_end or self.lr_scheduler_type == SchedulerType.REDUCE_ON_PLATEAU)
                and self.metric_for_best_model is None):
            self.metric_for_best_model = "loss"
        if self.greater_is_better is None and self.metric_for_best_model is not None:
            self.greater_is_better = not self.metric_for_best_model.endswith("loss")
        self.report_to = resolve_report_to(self.report_to)

        self._validate()

        # Read by the Accelerator: the launcher's choice unless the arguments name one.
        self.mixed_precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
        if self.fp16:
            self.mixed_precision = "fp16"
        elif self.bf16:
            self.mixed_precision = "bf16"
        if self.torch_compile_backend is not None or self.torch_compile_mode is not None:
            self.torch_compile = True
        if self.torch_compile and self.torch_compile_backend is None:
            self.torch_compile_backend = "inductor"
        if self.use_cpu:
            self.dataloader_pin_memory = False

    def _validate(self) -> None:
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size",
                     "gradient_accumulation_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("learning_rate", "weight_decay", "adam_epsilon", "num_train_epochs",
                     "warmup_steps", "eval_delay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.max_grad_norm is not None and self.max_grad_norm < 0:
            raise ValueError(f"max_grad_norm must be >= 0 (0 or None: no clipping), got "
                             f"{self.max_grad_norm}")
        if self.dataloader_num_workers < 0:
            raise ValueError(f"dataloader_num_workers must be >= 0, got "
                             f"{self.dataloader_num_workers}")

        # Step counts: positive; an integer from 1 up, a ratio of the total below 1.
        if self.logging_strategy == IntervalStrategy.STEPS and self.logging_steps == 0:
            raise ValueError(f"logging strategy {self.logging_strategy.value!r} requires "
                             "non-zero logging_steps")
        for kind, strategy in (("logging", self.logging_strategy), ("eval", self.eval_strategy),
                               ("save", self.save_strategy)):
            steps = getattr(self, f"{kind}_steps")
            if strategy != "steps":
                continue
            if steps < 0:
                raise ValueError(f"{kind}_steps must be positive, got {steps}")
            if steps > 1:
                if steps != int(steps):
                    raise ValueError(f"{kind}_steps must be an integer if bigger than 1: {steps}")
                setattr(self, f"{kind}_steps", int(steps))

        if self.load_best_model_at_end and self.save_strategy != SaveStrategy.BEST:
            if self.eval_strategy != self.save_strategy:
                raise ValueError(
                    "load_best_model_at_end requires the save and eval strategy to match, except "
                    f"when save_strategy='best', but found eval_strategy="
                    f"{self.eval_strategy.value!r} and save_strategy={self.save_strategy.value!r}")
            if self.eval_strategy == IntervalStrategy.STEPS:
                self._check_save_steps_multiple_of_eval_steps()

        if self.fp16 and self.bf16:
            raise ValueError("At most one of fp16 and bf16 can be True, but not both")
        if self.bf16 and not self.use_cpu and not _bf16_supported():
            raise ValueError("bf16=True needs a GPU with bf16 support; pass use_cpu=True to train "
                             "in bf16 on the CPU")
        if (self.lr_scheduler_type == SchedulerType.REDUCE_ON_PLATEAU
                and self.eval_strategy == IntervalStrategy.NO):
            raise ValueError("lr_scheduler_type 'reduce_lr_on_plateau' requires an eval strategy "
                             "(it steps on the evaluation metric)")
        if self.dataloader_num_workers == 0 and self.dataloader_prefetch_factor is not None:
            raise ValueError("dataloader_prefetch_factor can only be set when data is loaded in "
                             "other processes, i.e. when dataloader_num_workers > 0")
        if self.train_sampling_strategy not in _SAMPLING_STRATEGIES:
            detail = (" (transformers' 'batch_rebalance' is not implemented in Cove)"
                      if self.train_sampling_strategy == "batch_rebalance" else "")
            raise ValueError(f"train_sampling_strategy must be one of {list(_SAMPLING_STRATEGIES)}"
                             f", got {self.train_sampling_strategy!r}{detail}")
        if self.include_num_input_tokens_seen not in _TOKENS_SEEN:
            raise ValueError(f"include_num_input_tokens_seen must be a bool or one of "
                             f"{list(_TOKENS_SEEN)}, got {self.include_num_input_tokens_seen!r}")
        if self.save_total_limit is not None and self.save_total_limit < 0:
            raise ValueError(f"save_total_limit must be >= 0 or None, got {self.save_total_limit}")
        if self.label_names is not None and (isinstance(self.label_names, str) or not all(
                isinstance(n, str) for n in self.label_names)):
            raise ValueError(f"label_names must be a list of column names, got "
                             f"{self.label_names!r}")

    def _check_save_steps_multiple_of_eval_steps(self) -> None:
        """load_best_model_at_end needs every save to follow an evaluation."""
        save, evaluate = self.save_steps, self.eval_steps
        if save < 1 and evaluate < 1:
            # ratios: compare in millionths, where float remainders would mislead
            if round(save * 1_000_000) % round(evaluate * 1_000_000) != 0:
                raise ValueError("load_best_model_at_end requires the saving steps to be a "
                                 f"multiple of the evaluation steps, but found {save}, which is "
                                 f"not a multiple of {evaluate}.")
        elif save < 1 or evaluate < 1:
            if save % evaluate != 0:
                raise ValueError("load_best_model_at_end requires the saving steps to be a "
                                 "multiple of the evaluation steps, which cannot be guaranteed "
                                 f"when mixing ratio and absolute steps for save_steps {save} "
                                 f"and eval_steps {evaluate}.")
        elif save % evaluate != 0:
            raise ValueError("load_best_model_at_end requires the saving steps to be a round "
                             f"multiple of the evaluation steps, but found {save}, which is not "
                             f"a round multiple of {evaluate}.")

    # --- the run's processes (from the launcher's environment: torchrun, accelerate launch) ---

    @property
    def world_size(self) -> int:
        """The number of processes training together."""
        return env_int("WORLD_SIZE", 1)

    @property
    def process_index(self) -> int:
        """This process's rank among all processes."""
        return env_int("RANK", 0)

    @property
    def local_process_index(self) -> int:
        """This process's rank on its machine."""
        return env_int("LOCAL_RANK", 0)

    @property
    def should_log(self) -> bool:
        """Whether this process logs (the main one, of each node if `log_on_each_node`)."""
        return (self.local_process_index if self.log_on_each_node else self.process_index) == 0

    @property
    def should_save(self) -> bool:
        """Whether this process writes checkpoints (the main one, of each node if asked)."""
        return (self.local_process_index if self.save_on_each_node else self.process_index) == 0

    @property
    def train_batch_size(self) -> int:
        """The training batch size of one process (Cove runs one device per process)."""
        return self.per_device_train_batch_size

    @property
    def eval_batch_size(self) -> int:
        """The evaluation batch size of one process."""
        return self.per_device_eval_batch_size

    def get_warmup_steps(self, num_training_steps: int) -> int:
        """The warmup length in steps: `warmup_steps`, or its ratio of `num_training_steps`."""
        if self.warmup_steps >= 1:
            return int(self.warmup_steps)
        return math.ceil(num_training_steps * self.warmup_steps)

    # --- serialisation ---------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The arguments as JSON-ready values (enums as strings, tokens hidden)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if not f.init:
                continue
            value = getattr(self, f.name)
            if isinstance(value, Enum):
                value = value.value
            if f.name.endswith("_token"):
                value = f"<{f.name.upper()}>"
            out[f.name] = value
        return out

    def to_json_string(self) -> str:
        """`to_dict()` as indented JSON."""
        return json.dumps(self.to_dict(), indent=2)

    def __repr__(self) -> str:
        lines = "".join(f"{k}={v},\n" for k, v in sorted(self.to_dict().items()))
        return f"{type(self).__name__}(\n{lines})"

    __str__ = __repr__
