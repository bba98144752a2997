"""cove.trainer: the pieces of the training loop, with transformers' names and behaviour.

    from cove.trainer import TrainingArguments, DataCollatorWithPadding, get_scheduler

    args = TrainingArguments("out", learning_rate=2e-5, warmup_steps=0.1, eval_strategy="epoch")
    optimizer = create_optimizer(model, args)      # AdamW, no decay on biases and norms
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, 10, 100)

Arguments (`TrainingArguments`), learning-rate schedules and the optimizer (`optimization`),
data collators, the callbacks with the loop's state (`TrainerState`, trainer_state.json as
transformers writes it), and the `Trainer` that runs them on cove.accelerate's Accelerator. Importing this package imports nothing heavy: the names below load
their module on first use.
"""

# ruff: noqa: F401  (the TYPE_CHECKING imports at the end are re-exports)
from __future__ import annotations

from typing import TYPE_CHECKING

from cove._lazy import lazy_exports

# module -> the public names it defines
_EXPORTS = {
    "cove.trainer.trainer_utils": ("IntervalStrategy", "SaveStrategy", "SchedulerType"),
    "cove.trainer.training_args": ("TrainingArguments", "OptimizerNames"),
    "cove.trainer.optimization": (
        "get_scheduler", "get_constant_schedule", "get_constant_schedule_with_warmup",
        "get_linear_schedule_with_warmup", "get_cosine_schedule_with_warmup",
        "get_cosine_with_hard_restarts_schedule_with_warmup",
        "get_polynomial_decay_schedule_with_warmup", "get_inverse_sqrt_schedule",
        "get_cosine_with_min_lr_schedule_with_warmup",
        "get_cosine_with_min_lr_schedule_with_warmup_lr_rate", "get_wsd_schedule",
        "create_optimizer", "get_decay_parameter_names"),
    "cove.trainer.data_collator": (
        "default_data_collator", "DefaultDataCollator", "DataCollatorWithPadding",
        "DataCollatorForTokenClassification", "DataCollatorForLanguageModeling",
        "DataCollatorForSeq2Seq"),
    "cove.trainer.callbacks": (
        "TrainerState", "TrainerControl", "TrainerCallback", "CallbackHandler",
        "ExportableState", "DefaultFlowCallback", "ProgressCallback", "PrinterCallback",
        "EarlyStoppingCallback", "LogHistoryJsonlCallback", "TensorBoardCallback"),
    "cove.trainer.trainer": ("Trainer",),
    "cove.trainer.seq2seq": ("Seq2SeqTrainer", "Seq2SeqTrainingArguments"),
    "cove.trainer.evaluation": ("EvalPrediction", "EvalLoopOutput", "PredictionOutput",
                                "TrainOutput"),
    "cove.trainer.checkpoints": ("get_last_checkpoint",),
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS, reference="transformers")

if TYPE_CHECKING:  # what IDEs and type checkers see; at run time the names resolve lazily
    from cove.trainer.callbacks import (
        CallbackHandler,
        DefaultFlowCallback,
        EarlyStoppingCallback,
        ExportableState,
        LogHistoryJsonlCallback,
        PrinterCallback,
        ProgressCallback,
        TensorBoardCallback,
        TrainerCallback,
        TrainerControl,
        TrainerState,
    )
    from cove.trainer.checkpoints import get_last_checkpoint
    from cove.trainer.data_collator import (
        DataCollatorForLanguageModeling,
        DataCollatorForSeq2Seq,
        DataCollatorForTokenClassification,
        DataCollatorWithPadding,
        DefaultDataCollator,
        default_data_collator,
    )
    from cove.trainer.evaluation import (
        EvalLoopOutput,
        EvalPrediction,
        PredictionOutput,
        TrainOutput,
    )
    from cove.trainer.optimization import (
        create_optimizer,
        get_constant_schedule,
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_cosine_with_hard_restarts_schedule_with_warmup,
        get_cosine_with_min_lr_schedule_with_warmup,
        get_cosine_with_min_lr_schedule_with_warmup_lr_rate,
        get_decay_parameter_names,
        get_inverse_sqrt_schedule,
        get_linear_schedule_with_warmup,
        get_polynomial_decay_schedule_with_warmup,
        get_scheduler,
        get_wsd_schedule,
    )
    from cove.trainer.seq2seq import (
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
    )
    from cove.trainer.trainer import Trainer
    from cove.trainer.trainer_utils import (
        IntervalStrategy,
        SaveStrategy,
        SchedulerType,
    )
    from cove.trainer.training_args import (
        OptimizerNames,
        TrainingArguments,
    )
