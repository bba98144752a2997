"""`Trainer`: the training and evaluation loop, with transformers' names, arguments and flow,
on Cove's `Accelerator` (one process, DDP or FSDP2 under `cove launch`, bf16/fp16 autocast).

    trainer = Trainer(model, TrainingArguments("out", eval_strategy="epoch"),
                      train_dataset=train, eval_dataset=test, compute_metrics=accuracy)
    trainer.train()                      # or train(resume_from_checkpoint=True)
    trainer.push_to_hub()

Where it differs from transformers 5.25, on purpose:
- The loss under gradient accumulation and across processes is the loss of the whole global
  batch: for token-level heads (causal LM, masked LM, token classification) the summed token
  NLL over every label token of the accumulated micro-batches on all processes, divided by
  their count; for per-example losses (sequence classification, regression) each micro-batch's
  mean weighted by its share of the examples. transformers gets this right for causal LMs only
  (a BERT classifier's loss is not divided under accumulation and is multiplied by the world
  size under DDP).
- The training sampler shuffles from `data_seed` (else `seed`) plus the epoch, as
  transformers' seedable sampler does, so both feed the same order; a checkpoint records the
  epoch and the batches taken, and resuming continues at the next batch with the saved random
  states: the remaining loss curve is the uninterrupted run's.
- Checkpoint folders are written under a temporary name and renamed once complete; training
  arguments are saved as JSON (training_args.json), never pickled.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from cove.accelerate import checkpointing as accelerate_checkpointing
from cove.accelerate.accelerator import Accelerator
from cove.accelerate.plugins import DistributedDataParallelKwargs
from cove.seed import set_seed
from cove.trainer import checkpoints as ckpt
from cove.trainer.callbacks import (
    CallbackHandler,
    DefaultFlowCallback,
    ExportableState,
    LogHistoryJsonlCallback,
    PrinterCallback,
    ProgressCallback,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    get_reporting_integration_callbacks,
)
from cove.trainer.data_collator import DataCollatorWithPadding, default_data_collator
from cove.trainer.evaluation import (
    EvalLoopOutput,
    EvalPrediction,
    PredictionOutput,
    TrainOutput,
    concat_batches,
    denumpify,
    speed_metrics,
    to_numpy,
)
from cove.trainer.heap import steady_heap
from cove.trainer.model_card import model_card
from cove.trainer.optimization import (
    create_optimizer,
    get_decay_parameter_names,
    get_scheduler,
)
from cove.trainer.samplers import LengthGroupedSampler, SeededRandomSampler, example_lengths
from cove.trainer.trainer_utils import SaveStrategy
from cove.trainer.training_args import TrainingArguments

logger = logging.getLogger("cove.trainer")

DEFAULT_CALLBACKS = [DefaultFlowCallback, LogHistoryJsonlCallback]
# how a model's loss is normalised over the items of its batch (see Trainer._loss_kind)
_CAUSAL, _TOKEN, _EXAMPLE = "causal", "token", "example"


def _has_length(dataset: Any) -> bool:
    try:
        return len(dataset) is not None
    except (TypeError, NotImplementedError):
        return False


def _seed_worker(worker_id: int) -> None:
    """Each DataLoader worker seeds python and numpy from its torch seed (which torch makes
    different per worker), so random augmentations differ between workers."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def _find_batch_size(inputs: Any) -> int | None:
    if isinstance(inputs, Mapping):
        for value in inputs.values():
            found = _find_batch_size(value)
            if found is not None:
                return found
    elif isinstance(inputs, (list, tuple)):
        for value in inputs:
            found = _find_batch_size(value)
            if found is not None:
                return found
    elif isinstance(inputs, torch.Tensor):
        return inputs.shape[0] if inputs.ndim else None
    return None


def find_labels(model: nn.Module) -> list[str]:
    """The label arguments of the model's forward (transformers' rule: names with "label", and
    the start/end positions of question answering)."""
    names = inspect.signature(model.forward).parameters
    extra = ("start_positions", "end_positions") if "QuestionAnswering" in type(model).__name__ \
        else ()
    return [p for p in names if "label" in p or p in extra]


class RemoveColumnsCollator:
    """A collator that first drops the features the model's forward does not take (for datasets
    without columns to remove: lists of dicts, torch datasets)."""

    def __init__(self, data_collator: Callable, signature_columns: list[str],
                 model_name: str, description: str) -> None:
        self.data_collator = data_collator
        self.signature_columns = set(signature_columns)
        self.model_name = model_name
        self.description = description
        self._reported = False

    def __call__(self, features: list[Any]) -> Any:
        if features and isinstance(features[0], Mapping):
            dropped = set(features[0]) - self.signature_columns
            if dropped and not self._reported:
                logger.info("The following columns in the %s set don't have a corresponding "
                            "argument in `%s.forward` and have been ignored: %s", self.description,
                            self.model_name, ", ".join(sorted(dropped)))
                self._reported = True
            features = [{k: v for k, v in f.items() if k in self.signature_columns}
                        for f in features]
        return self.data_collator(features)


class Trainer:
    """Trains and evaluates a model, as transformers' `Trainer` does (same arguments, callbacks,
    checkpoints, logs), on Cove's `Accelerator`.

    `model`: a Cove model (or any `nn.Module` whose forward returns a loss given labels).
    `data_collator`: default `DataCollatorWithPadding(processing_class)` for a tokenizer, else
    `default_data_collator`. `processing_class` (or its older name `tokenizer`) is saved with
    the model. `compute_metrics(EvalPrediction) -> dict`; `preprocess_logits_for_metrics(
    logits, labels)` reduces the logits of each batch before they are gathered.
    `optimizers=(optimizer, scheduler)` replaces the ones the arguments describe;
    `optimizer_cls_and_kwargs` replaces only the optimizer class and its arguments.
    `compute_loss_func(outputs, labels, num_items_in_batch)` replaces the model's loss; it must
    divide by `num_items_in_batch` (the items of the whole accumulated batch).
    """

    def __init__(self, model: nn.Module | None = None, args: TrainingArguments | None = None,
                 data_collator: Callable | None = None, train_dataset: Any = None,
                 eval_dataset: Any = None, processing_class: Any = None,
                 compute_loss_func: Callable | None = None,
                 compute_metrics: Callable[[EvalPrediction], dict] | None = None,
                 callbacks: list[TrainerCallback | type[TrainerCallback]] | None = None,
                 optimizers: tuple[torch.optim.Optimizer | None, Any] = (None, None),
                 optimizer_cls_and_kwargs: tuple[type[torch.optim.Optimizer], dict] | None = None,
                 preprocess_logits_for_metrics: Callable | None = None,
                 tokenizer: Any = None) -> None:
        if args is None:
            args = TrainingArguments(output_dir="tmp_trainer")
        if not isinstance(args, TrainingArguments):
            raise TypeError(f"args must be a cove TrainingArguments, got {type(args).__name__}")
        self.args = args
        set_seed(args.seed)
        if model is None:
            raise ValueError("Trainer requires a model")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}")
        self._check_trainable(model)
        if tokenizer is not None:
            if processing_class is not None and processing_class is not tokenizer:
                raise ValueError("pass processing_class or tokenizer (its older name), not both")
            processing_class = tokenizer
        optimizer, scheduler = optimizers
        if optimizer is not None and optimizer_cls_and_kwargs is not None:
            raise ValueError("pass an optimizer in `optimizers` or `optimizer_cls_and_kwargs`, "
                             "not both")

        self.accelerator = Accelerator(
            mixed_precision=args.mixed_precision, cpu=args.use_cpu,
            # as transformers: DDP looks for parameters a forward left unused (heads, poolers)
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
        self.model = model
        self.model_wrapped = model
        self.processing_class = processing_class
        if data_collator is None:
            data_collator = (DataCollatorWithPadding(processing_class)
                             if processing_class is not None and hasattr(processing_class, "pad")
                             else default_data_collator)
        self.data_collator = data_collator
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.compute_loss_func = compute_loss_func
        self.compute_metrics = compute_metrics
        self.preprocess_logits_for_metrics = preprocess_logits_for_metrics
        self.optimizer = optimizer
        self.lr_scheduler = scheduler
        self.optimizer_cls_and_kwargs = optimizer_cls_and_kwargs
        self.label_names = list(args.label_names) if args.label_names is not None \
            else find_labels(model)
        self._loss_kind = self._find_loss_kind(model)
        self._signature_columns: list[str] | None = None
        self._train_batch_size = args.train_batch_size
        self._created_lr_scheduler = False
        self._prepared = False
        self.hub_model_id: str | None = None
        self.is_in_train = False
        self.current_flos = 0.0
        self._flops_per_token: int | None = None

        callbacks_list = DEFAULT_CALLBACKS + get_reporting_integration_callbacks(args.report_to)
        callbacks_list = callbacks_list + list(callbacks or [])
        self.callback_handler = CallbackHandler(callbacks_list, self.model,
                                                self.processing_class, self.optimizer,
                                                self.lr_scheduler)
        self.add_callback(PrinterCallback if args.disable_tqdm else ProgressCallback)

        if args.push_to_hub:
            self.init_hf_repo()
        if args.should_save:
            os.makedirs(args.output_dir, exist_ok=True)
        self.control = TrainerControl()
        self.state = TrainerState(
            is_local_process_zero=self.is_local_process_zero(),
            is_world_process_zero=self.is_world_process_zero(),
            stateful_callbacks=self._stateful_callbacks())
        self.control = self.callback_handler.on_init_end(self.args, self.state, self.control)

    # -- small pieces ------------------------------------------------------------------------

    @staticmethod
    def _check_trainable(model: nn.Module) -> None:
        from cove.models.modeling import PreTrainedModel

        if isinstance(model, PreTrainedModel) and not find_labels(model) \
                and type(model).__name__.endswith("Model"):
            raise ValueError(
                f"The model you have picked ({type(model).__name__}) cannot be used as is for "
                "training: it only computes hidden states and does not accept any labels. Pick a "
                "model with a head for your task (AutoModelForSequenceClassification, "
                "AutoModelForCausalLM, ...)")

    @staticmethod
    def _find_loss_kind(model: nn.Module) -> str:
        """How the model's loss averages: over label tokens (causal LMs shift their labels
        first) or over examples. Only Cove's own heads are known to be token-level; any other
        model's loss is taken as a per-example mean."""
        from cove.models.modeling import PreTrainedModel

        name = type(model).__name__
        if isinstance(model, PreTrainedModel):
            if name.endswith(("ForCausalLM", "LMHeadModel")):
                return _CAUSAL
            if name.endswith(("ForMaskedLM", "ForTokenClassification")):
                return _TOKEN
        return _EXAMPLE

    def _stateful_callbacks(self) -> list[ExportableState]:
        return [cb for cb in self.callback_handler.callbacks + [self.control]
                if isinstance(cb, ExportableState)]

    def add_callback(self, callback: TrainerCallback | type[TrainerCallback]) -> None:
        """Add a callback (an instance, or a class to instantiate) to the Trainer's."""
        self.callback_handler.add_callback(callback)

    def pop_callback(self, callback: TrainerCallback | type[TrainerCallback],
                     ) -> TrainerCallback | None:
        """Remove a callback (the first of a class, given a class) and return it (None if absent)."""
        return self.callback_handler.pop_callback(callback)

    def remove_callback(self, callback: TrainerCallback | type[TrainerCallback]) -> None:
        """Remove a callback (the first of a class, given a class)."""
        self.callback_handler.remove_callback(callback)

    def is_local_process_zero(self) -> bool:
        """Whether this is the main process of its machine."""
        return self.accelerator.is_local_main_process

    def is_world_process_zero(self) -> bool:
        """Whether this is the main process of the whole run."""
        return self.accelerator.is_main_process

    # -- data --------------------------------------------------------------------------------

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            params = list(inspect.signature(self.model.forward).parameters)
            self._signature_columns = params + sorted({"label", "label_ids", *self.label_names}
                                                      - set(params))

    def _remove_unused_columns(self, dataset: Any, description: str) -> tuple[Any, Callable]:
        """The dataset without the columns the model's forward does not take (datasets with
        columns: cove.datasets and HF datasets), or the collator dropping those features."""
        collator = self.data_collator
        if not self.args.remove_unused_columns:
            return dataset, collator
        self._set_signature_columns_if_needed()
        columns = self._signature_columns
        names = getattr(dataset, "column_names", None)
        if isinstance(names, list) and callable(getattr(dataset, "remove_columns", None)):
            ignored = [c for c in names if c not in columns]
            if len(ignored) == len(names):
                raise ValueError(
                    f"No columns in the {description} dataset match the model's forward "
                    f"method signature ({', '.join(columns)}). The dataset has only: "
                    f"{', '.join(names)}. Check the dataset and model, or set "
                    "`remove_unused_columns=False` in the TrainingArguments.")
            if ignored:
                logger.info("The following columns in the %s set don't have a corresponding "
                            "argument in `%s.forward` and have been ignored: %s", description,
                            type(self.model).__name__, ", ".join(ignored))
                dataset = dataset.remove_columns(ignored)
            return dataset, collator
        return dataset, RemoveColumnsCollator(collator, columns, type(self.model).__name__,
                                              description)

    def _get_train_sampler(self, dataset: Any) -> torch.utils.data.Sampler | None:
        if not _has_length(dataset) or isinstance(dataset, IterableDataset):
            return None
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        strategy = self.args.train_sampling_strategy
        if strategy == "sequential":
            return torch.utils.data.SequentialSampler(dataset)
        if strategy == "group_by_length":
            input_name = (self.processing_class.model_input_names[0]
                          if self.processing_class is not None
                          and getattr(self.processing_class, "model_input_names", None)
                          else "input_ids")
            lengths = example_lengths(dataset, self.args.length_column_name, input_name)
            return LengthGroupedSampler(
                self._train_batch_size * self.args.gradient_accumulation_steps, lengths, seed)
        return SeededRandomSampler(len(dataset), seed)

    def _dataloader(self, dataset: Any, description: str, batch_size: int,
                    sampler: torch.utils.data.Sampler | None, training: bool) -> DataLoader:
        dataset, collator = self._remove_unused_columns(dataset, description)
        args = self.args
        params: dict[str, Any] = {
            "batch_size": batch_size, "collate_fn": collator,
            "num_workers": args.dataloader_num_workers,
            "pin_memory": args.dataloader_pin_memory and self.accelerator.device.type == "cuda",
            "persistent_workers": args.dataloader_persistent_workers and args.dataloader_num_workers > 0,
            "prefetch_factor": args.dataloader_prefetch_factor,
        }
        if not isinstance(dataset, IterableDataset):
            params["drop_last"] = args.dataloader_drop_last
            if sampler is not None:
                params["sampler"] = sampler
            if training and args.dataloader_num_workers:
                params["worker_init_fn"] = _seed_worker
        return self.accelerator.prepare(DataLoader(dataset, **params))

    def get_train_dataloader(self) -> DataLoader:
        """The training dataloader, prepared for this process (its shard, on its device)."""
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        # the sampler reads the dataset before the unused columns go (a length column)
        return self._dataloader(self.train_dataset, "training", self._train_batch_size,
                                self._get_train_sampler(self.train_dataset), training=True)

    def get_eval_dataloader(self, eval_dataset: str | Dataset | None = None) -> DataLoader:
        """The evaluation dataloader (in order): `eval_dataset`, a key of the Trainer's dict of
        evaluation sets, or the Trainer's evaluation set."""
        if eval_dataset is None and self.eval_dataset is None:
            raise ValueError("Trainer: evaluation requires an eval_dataset (pass one to the "
                             "Trainer or to evaluate())")
        if isinstance(eval_dataset, str):
            if not isinstance(self.eval_dataset, dict) or eval_dataset not in self.eval_dataset:
                raise KeyError(f"no evaluation set named {eval_dataset!r} (the Trainer has "
                               f"{list(self.eval_dataset) if isinstance(self.eval_dataset, dict) else 'one unnamed set'})")
            eval_dataset = self.eval_dataset[eval_dataset]
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        return self._dataloader(dataset, "evaluation", self.args.eval_batch_size, None,
                                training=False)

    def get_test_dataloader(self, test_dataset: Dataset) -> DataLoader:
        """The prediction dataloader over `test_dataset` (in order)."""
        return self._dataloader(test_dataset, "test", self.args.eval_batch_size, None,
                                training=False)

    def num_examples(self, dataloader: DataLoader) -> int:
        """The examples in the dataloader's dataset (estimated from its batches otherwise)."""
        try:
            return len(dataloader.dataset)
        except (AttributeError, TypeError):
            return len(dataloader) * self.args.per_device_train_batch_size

    # -- optimizer and schedule ------------------------------------------------------------

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The optimizer, unless one was given: `args.optim` (fused AdamW by default) with no
        weight decay on biases and normalisation weights."""
        if self.optimizer is None:
            model = self.model if model is None else model
            if self.optimizer_cls_and_kwargs is None:
                self.optimizer = create_optimizer(model, self.args)
            else:
                cls, kwargs = self.optimizer_cls_and_kwargs
                decay = set(get_decay_parameter_names(model))
                trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
                self.optimizer = cls([
                    {"params": [p for n, p in trainable if n in decay],
                     "weight_decay": self.args.weight_decay},
                    {"params": [p for n, p in trainable if n not in decay], "weight_decay": 0.0},
                ], **kwargs)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int,
                         optimizer: torch.optim.Optimizer | None = None) -> Any:
        """The learning-rate schedule, unless one was given: `args.lr_scheduler_type` with the
        warmup of `args.warmup_steps`."""
        if self.lr_scheduler is None:
            self.lr_scheduler = get_scheduler(
                self.args.lr_scheduler_type, optimizer or self.optimizer,
                num_warmup_steps=self.args.get_warmup_steps(num_training_steps),
                num_training_steps=num_training_steps,
                scheduler_specific_kwargs=self.args.lr_scheduler_kwargs)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def create_optimizer_and_scheduler(self, num_training_steps: int) -> None:
        """`create_optimizer()` then `create_scheduler(num_training_steps)`."""
        self.create_optimizer()
        self.create_scheduler(num_training_steps)

    def _get_learning_rate(self) -> float:
        if isinstance(self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            lr = self.optimizer.param_groups[0]["lr"]
        else:
            lr = self.lr_scheduler.get_last_lr()[0]
        return lr.item() if torch.is_tensor(lr) else lr

    # -- training ----------------------------------------------------------------------------

    def train(self, resume_from_checkpoint: str | bool | None = None,
              ignore_keys_for_eval: list[str] | None = None) -> TrainOutput:
        """Train; `resume_from_checkpoint` is a checkpoint folder, or True for the latest
        complete checkpoint in `args.output_dir`. Returns the step, mean loss and metrics."""
        args = self.args
        if resume_from_checkpoint is False:
            resume_from_checkpoint = None
        if resume_from_checkpoint is True:
            found = ckpt.get_last_checkpoint(args.output_dir) \
                if os.path.isdir(args.output_dir) else None
            if found is None:
                raise ValueError(f"No valid checkpoint found in output directory "
                                 f"({args.output_dir})")
            resume_from_checkpoint = found
        if resume_from_checkpoint is not None:
            resume_from_checkpoint = ckpt.check_checkpoint(resume_from_checkpoint)
        self.is_in_train = True
        if args.activation_checkpointing:
            self._enable_activation_checkpointing()
        if resume_from_checkpoint is not None and not self.accelerator.is_fsdp2:
            self._load_model_weights(resume_from_checkpoint)
        if self.is_world_process_zero():
            ckpt.sweep_partial_checkpoints(args.output_dir)
        try:
            # each step reuses the previous step's freed pages instead of faulting them in
            with steady_heap():
                return self._inner_training_loop(resume_from_checkpoint, ignore_keys_for_eval)
        finally:
            self.is_in_train = False

    def _enable_activation_checkpointing(self) -> None:
        kwargs = dict(self.args.activation_checkpointing_kwargs or {})
        for name in ("activation_checkpointing_enable", "gradient_checkpointing_enable"):
            enable = getattr(self.model, name, None)
            if callable(enable):
                enable(**({"gradient_checkpointing_kwargs": kwargs} if kwargs else {}))
                return
        raise ValueError(
            f"activation_checkpointing=True (gradient_checkpointing): {type(self.model).__name__} "
            "does not support activation checkpointing (it has no "
            "activation_checkpointing_enable/gradient_checkpointing_enable); train without it, "
            "or with a smaller per_device_train_batch_size and gradient_accumulation_steps")

    def _training_lengths(self, dataloader: DataLoader) -> dict[str, int]:
        """The run's sizes, as transformers works them out: update steps per epoch, epochs,
        total steps, batches per epoch, examples."""
        args = self.args
        accumulation = args.gradient_accumulation_steps
        total_batch = self._train_batch_size * accumulation * self.accelerator.num_processes
        batches = len(dataloader) if _has_length(dataloader) else None
        if batches is not None:
            per_epoch = max(batches // accumulation + int(batches % accumulation > 0), 1)
            if args.max_steps > 0:
                max_steps = args.max_steps
                epochs = max_steps // per_epoch + int(max_steps % per_epoch > 0)
                samples = max_steps * total_batch
            else:
                max_steps = math.ceil(args.num_train_epochs * per_epoch)
                epochs = math.ceil(args.num_train_epochs)
                samples = self.num_examples(dataloader) * args.num_train_epochs
            examples = self.num_examples(dataloader)
        elif args.max_steps > 0:
            max_steps = per_epoch = args.max_steps
            epochs = sys.maxsize
            samples = examples = max_steps * total_batch
        else:
            raise ValueError("args.max_steps must be set to a positive value if the dataloader "
                             f"does not have a length, was {args.max_steps}")
        return {"per_epoch": per_epoch, "max_steps": max_steps, "epochs": epochs,
                "batches": batches if batches is not None else max_steps * accumulation,
                "samples": samples, "examples": examples, "total_batch": total_batch}

    def _inner_training_loop(self, resume_from_checkpoint: str | None,
                             ignore_keys_for_eval: list[str] | None) -> TrainOutput:
        args = self.args
        train_dataloader = self.get_train_dataloader()
        sizes = self._training_lengths(train_dataloader)
        max_steps, per_epoch = sizes["max_steps"], sizes["per_epoch"]
        steps_in_epoch = sizes["batches"]

        self.state = TrainerState(stateful_callbacks=self._stateful_callbacks())
        self.state.train_batch_size = self._train_batch_size
        self.state.compute_steps(args, max_steps)
        epochs_trained, batches_skipped = 0, 0
        if resume_from_checkpoint is not None:
            self.state = TrainerState.load_from_json(
                os.path.join(resume_from_checkpoint, ckpt.TRAINER_STATE_NAME))
            if (self.state.best_model_checkpoint is not None
                    and not os.path.isdir(self.state.best_model_checkpoint)):
                logger.warning("The best checkpoint %s recorded in the resumed state does not "
                               "exist anymore; ignoring it.", self.state.best_model_checkpoint)
                self.state.best_model_checkpoint = None
            epochs_trained, batches_skipped = self._resume_position(
                resume_from_checkpoint, per_epoch, steps_in_epoch)
        self.state.max_steps = max_steps
        self.state.num_train_epochs = sizes["epochs"]
        self.state.is_local_process_zero = self.is_local_process_zero()
        self.state.is_world_process_zero = self.is_world_process_zero()

        model = self._prepare_for_training(max_steps, resume_from_checkpoint)
        self.callback_handler.train_dataloader = train_dataloader

        logger.info("***** Running training *****")
        logger.info("  Num examples = %s, epochs = %s, update steps per epoch = %s",
                    f"{sizes['examples']:,}", sizes["epochs"], per_epoch)
        logger.info("  Batch size per process = %s, total (processes x accumulation) = %s",
                    self._train_batch_size, sizes["total_batch"])
        logger.info("  Total optimization steps = %s", f"{max_steps:,}")

        start_time = time.time()
        self._initial_num_input_tokens_seen = self.state.num_input_tokens_seen
        self._initial_global_step = self.state.global_step
        # the loss since the last log, summed on the device: read (a sync) only when logged
        self._tr_loss = torch.tensor(0.0, device=self.accelerator.device)
        self._total_loss_scalar = 0.0
        self._globalstep_last_logged = self.state.global_step
        model.zero_grad(set_to_none=True)
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)

        for epoch in range(epochs_trained, sizes["epochs"]):
            self.control = self.callback_handler.on_epoch_begin(args, self.state, self.control)
            skip = batches_skipped if epoch == epochs_trained else 0
            self._run_epoch(model, epoch, train_dataloader, steps_in_epoch, per_epoch,
                            resume_from_checkpoint if epoch == epochs_trained else None, skip,
                            ignore_keys_for_eval, start_time)
            if self.control.should_training_stop:
                break
        return self._finalize_training(sizes["samples"], start_time)

    def _resume_position(self, checkpoint: str, per_epoch: int, steps_in_epoch: int,
                         ) -> tuple[int, int]:
        """(epoch, batches of it already trained on) for the resumed run: from the
        checkpoint's dataloader_state.json when it matches this run's data, else from the step
        count (as transformers, whose checkpoints lack the file)."""
        derived = (self.state.global_step // per_epoch,
                   (self.state.global_step % per_epoch) * self.args.gradient_accumulation_steps)
        path = os.path.join(checkpoint, ckpt.DATALOADER_STATE_NAME)
        if not os.path.isfile(path):
            return derived
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        if saved.get("batches_per_epoch") != steps_in_epoch:
            logger.warning("%s: the checkpoint's epochs had %s batches, this run's have %s (the "
                           "data or batch size changed); resuming by step count", checkpoint,
                           saved.get("batches_per_epoch"), steps_in_epoch)
            return derived
        epoch, taken = saved["epoch"], saved["batches_taken"]
        return (epoch + 1, 0) if taken >= steps_in_epoch else (epoch, taken)

    def _prepare_for_training(self, max_steps: int, checkpoint: str | None) -> nn.Module:
        """The optimizer, the wrapped model (DDP / FSDP2, autocast) and the schedule; the
        checkpoint's optimizer, scheduler and scaler states when resuming."""
        if self._created_lr_scheduler:  # a new train() call: a schedule for its length
            self.lr_scheduler = None
            self._created_lr_scheduler = False
        if not self._prepared:
            self.create_optimizer()
            self.model_wrapped, self.optimizer = self.accelerator.prepare(self.model,
                                                                          self.optimizer)
            if self.args.torch_compile:
                self.model_wrapped = torch.compile(self.model_wrapped,
                                                   backend=self.args.torch_compile_backend,
                                                   mode=self.args.torch_compile_mode)
            self._prepared = True
        if self.accelerator.is_fsdp2:  # FSDP2 shards the model in place: it is the model
            self.model = self.accelerator.unwrap_model(self.model_wrapped)
        self.create_scheduler(max_steps, self.optimizer)
        if checkpoint is not None:
            if self.accelerator.is_fsdp2:
                self._load_model_weights(checkpoint)
            self._load_optimizer_and_scheduler(checkpoint)
        for name in ("model", "optimizer", "lr_scheduler"):
            setattr(self.callback_handler, name, getattr(self, name))
        return self.model_wrapped

    def get_batch_samples(self, epoch_iterator: Iterator, num_batches: int,
                          ) -> tuple[list[Any], torch.Tensor | None]:
        """The next `num_batches` batches (fewer at the end) and the number of loss items in
        all of them on all processes (None when the batches hold no labels)."""
        batches = []
        for _ in range(num_batches):
            try:
                batches.append(next(epoch_iterator))
            except StopIteration:
                break
        return batches, self._num_items_in_batch(batches)

    def _items(self, batch: Mapping) -> torch.Tensor | None:
        """The loss items of one batch: label tokens (after the causal shift) for token-level
        losses, examples for per-example ones; None without labels."""
        labels = batch.get("labels") if isinstance(batch, Mapping) else None
        if not isinstance(labels, torch.Tensor):
            return None
        if self._loss_kind == _CAUSAL:
            return labels[..., 1:].ne(-100).sum()
        if self._loss_kind == _TOKEN:
            return labels.ne(-100).sum()
        return torch.tensor(labels.shape[0] if labels.ndim else 1, device=labels.device)

    def _num_items_in_batch(self, batches: list[Any]) -> torch.Tensor | None:
        counts = [self._items(b) for b in batches]
        if not counts or any(c is None for c in counts):
            return None
        total = torch.stack(counts).sum()
        if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
            total = self.accelerator.reduce(total, "sum")
        return total

    def _run_epoch(self, model: nn.Module, epoch: int, train_dataloader: Any,
                   steps_in_epoch: int, per_epoch: int, checkpoint: str | None, skip: int,
                   ignore_keys_for_eval: list[str] | None, start_time: float) -> None:
        args = self.args
        accumulation = args.gradient_accumulation_steps
        step = -1
        grad_norm = learning_rate = None
        rng_to_load = None
        updates_done = 0
        dataloader = train_dataloader
        if checkpoint is not None:
            if skip > 0:
                dataloader = self.accelerator.skip_first_batches(train_dataloader, skip)
                step = skip - 1
                updates_done = skip // accumulation
                # after the first batches are drawn: making the iterator draws random numbers
                rng_to_load = checkpoint
            else:
                self._load_rng_state(checkpoint)
        if hasattr(train_dataloader, "set_epoch"):
            train_dataloader.set_epoch(epoch)
        epoch_iterator = iter(dataloader)
        last_window = steps_in_epoch % accumulation or accumulation
        self._epoch_position = (epoch, max(skip, 0), steps_in_epoch)

        for update_step in range(updates_done, per_epoch):
            count = accumulation if update_step != per_epoch - 1 else last_window
            batches, num_items = self.get_batch_samples(epoch_iterator, count)
            self.current_gradient_accumulation_steps = len(batches)
            if rng_to_load is not None:
                self._load_rng_state(rng_to_load)
                rng_to_load = None
            for i, inputs in enumerate(batches):
                step += 1
                sync_step = (step + 1) % accumulation == 0 or step + 1 == steps_in_epoch
                self.accelerator.gradient_state._set_sync_gradients(sync_step)
                if step % accumulation == 0:
                    self.control = self.callback_handler.on_step_begin(args, self.state,
                                                                       self.control)
                context = (contextlib.nullcontext() if i == len(batches) - 1
                           else self.accelerator.no_sync(model))
                with context:
                    loss_step = self.training_step(model, inputs, num_items)
                self._tr_loss += loss_step
                self.current_flos += float(self.floating_point_ops(inputs))
                self._track_num_input_tokens(inputs)
                self._epoch_position = (epoch, step + 1, steps_in_epoch)

                if sync_step:
                    grad_norm = self._clip_grad_norm(model)
                    self.control = self.callback_handler.on_pre_optimizer_step(
                        args, self.state, self.control)
                    self.optimizer.step()
                    self.control = self.callback_handler.on_optimizer_step(
                        args, self.state, self.control)
                    learning_rate = self._get_learning_rate()  # the rate this step used
                    if not self.accelerator.optimizer_step_was_skipped and not isinstance(
                            self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                        self.lr_scheduler.step()
                    model.zero_grad(set_to_none=True)
                    self.state.global_step += 1
                    self.state.epoch = epoch + (step + 1) / steps_in_epoch
                    self.control = self.callback_handler.on_step_end(args, self.state,
                                                                     self.control)
                    self._maybe_log_save_evaluate(grad_norm, model, ignore_keys_for_eval,
                                                  start_time, learning_rate)
                else:
                    self.control = self.callback_handler.on_substep_end(args, self.state,
                                                                        self.control)
                if self.control.should_epoch_stop or self.control.should_training_stop:
                    break
            if self.control.should_epoch_stop or self.control.should_training_stop:
                break

        if step < 0:
            logger.warning("There seems not to be a single sample in your epoch_iterator, "
                           "stopping training at step %s!", self.state.global_step)
            self.control.should_training_stop = True
        self.control = self.callback_handler.on_epoch_end(args, self.state, self.control)
        self._maybe_log_save_evaluate(grad_norm, model, ignore_keys_for_eval, start_time,
                                      learning_rate)

    def _clip_grad_norm(self, model: nn.Module) -> torch.Tensor:
        """Clip to max_grad_norm (if set) and return the norm before clipping."""
        limit = self.args.max_grad_norm
        return self.accelerator.clip_grad_norm_(model.parameters(),
                                                limit if limit and limit > 0 else float("inf"))

    def training_step(self, model: nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: torch.Tensor | None = None) -> torch.Tensor:
        """Forward and backward of one micro-batch; returns its detached share of the step's
        loss (the shares of a step's micro-batches sum to the step's loss)."""
        model.train()
        inputs = self._prepare_inputs(inputs)
        loss = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        if num_items_in_batch is None:  # a loss without labels to count: a mean per batch
            loss = loss / self.current_gradient_accumulation_steps
        self.accelerator.backward(loss)
        return loss.detach()

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any],
                     return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None) -> Any:
        """The model's loss on `inputs`. Given `num_items_in_batch` (the loss items of the
        whole accumulated batch on all processes), the loss is this batch's share of the
        global batch's loss: token-level losses summed and divided by it, per-example means
        weighted by the batch's examples over it. Under DDP it is multiplied by the number of
        processes, since DDP averages the gradients."""
        inputs = dict(inputs)
        token_level = self._loss_kind in (_CAUSAL, _TOKEN)
        batch_items = self._items(inputs)
        labels = None
        # A token-level loss is the model's own (its mean times the batch's label tokens is
        # their sum: a causal LM's chunked head and loss then never hold the whole
        # log-softmax), except for a batch without label tokens, whose mean is NaN: that one
        # is summed here, from the logits, to 0.
        if "labels" in inputs and (self.compute_loss_func is not None
                                   or (num_items_in_batch is not None and token_level
                                       and batch_items is not None and int(batch_items) == 0)):
            labels = inputs.pop("labels")
        outputs = model(**inputs)
        if self.compute_loss_func is not None:
            loss = self.compute_loss_func(outputs, labels, num_items_in_batch=num_items_in_batch)
        elif labels is not None:
            logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]
            if self._loss_kind == _CAUSAL:
                labels = F.pad(labels, (0, 1), value=-100)[..., 1:]
            nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                  labels.reshape(-1).to(logits.device), ignore_index=-100,
                                  reduction="sum")
            loss = nll / torch.as_tensor(num_items_in_batch).clamp(min=1)
        else:
            if isinstance(outputs, Mapping) and outputs.get("loss") is None:
                raise ValueError(
                    "The model did not return a loss from the inputs, only the following keys: "
                    f"{', '.join(outputs.keys())}. For reference, the inputs it received are "
                    f"{', '.join(inputs.keys())}.")
            loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs[0]
            if num_items_in_batch is not None and batch_items is not None:
                loss = loss * batch_items / torch.as_tensor(num_items_in_batch).clamp(min=1)
        if (num_items_in_batch is not None and self.args.average_tokens_across_devices
                and self.accelerator.num_processes > 1):
            loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

    def _prepare_inputs(self, inputs: Any) -> Any:
        """The batch on this process's device (prepared dataloaders already put it there)."""
        if not isinstance(inputs, Mapping) or not inputs:
            raise ValueError("The batch received was empty or not a dict of inputs, your model "
                             "won't be able to train on it. Check that your training dataset "
                             "contains keys expected by the model: "
                             f"{', '.join(self._signature_columns or [])}.")
        device = self.accelerator.device
        return type(inputs)({k: v.to(device) if isinstance(v, torch.Tensor) else v
                             for k, v in inputs.items()})

    def floating_point_ops(self, inputs: Mapping) -> int:
        """6 x tokens x non-embedding parameters: a forward and backward pass's operations."""
        name = getattr(self.model, "main_input_name", "input_ids")
        if name not in inputs:
            return 0
        if self._flops_per_token is None:
            embeddings = {id(p) for m in self.model.modules() if isinstance(m, nn.Embedding)
                          for p in m.parameters()}
            self._flops_per_token = 6 * sum(p.numel() for p in self.model.parameters()
                                            if id(p) not in embeddings)
        return self._flops_per_token * inputs[name].numel()

    def _track_num_input_tokens(self, inputs: Mapping) -> None:
        mode = self.args.include_num_input_tokens_seen
        if mode == "no":
            return
        name = getattr(self.model, "main_input_name", "input_ids")
        if name not in inputs:
            logger.warning("Cannot count the input tokens: the batch has no %r", name)
            return
        if mode == "non_padding" and "attention_mask" in inputs:
            tokens = inputs["attention_mask"].sum()
        else:
            tokens = torch.tensor(inputs[name].numel())
        tokens = tokens.to(self.accelerator.device, torch.int64)
        self.state.num_input_tokens_seen += int(self.accelerator.reduce(tokens, "sum").item())

    def store_flos(self) -> None:
        """Add this process's (all processes') operations since the last call to the state."""
        if self.accelerator.num_processes > 1:
            total = self.accelerator.reduce(
                torch.tensor(self.current_flos, dtype=torch.float64,
                             device=self.accelerator.device), "sum")
            self.state.total_flos += total.item()
        else:
            self.state.total_flos += self.current_flos
        self.current_flos = 0.0

    def _maybe_log_save_evaluate(self, grad_norm: torch.Tensor | None, model: nn.Module,
                                 ignore_keys_for_eval: list[str] | None, start_time: float,
                                 learning_rate: float | None) -> None:
        if self.control.should_log and self.state.global_step > self._globalstep_last_logged:
            loss = self.accelerator.reduce(self._tr_loss, "mean").item()
            self._tr_loss.zero_()
            logs: dict[str, float] = {
                "loss": loss / (self.state.global_step - self._globalstep_last_logged)}
            if grad_norm is not None:
                logs["grad_norm"] = grad_norm.item() if torch.is_tensor(grad_norm) else grad_norm
            logs["learning_rate"] = (learning_rate if learning_rate is not None
                                     else self._get_learning_rate())
            self._total_loss_scalar += loss
            self._globalstep_last_logged = self.state.global_step
            self.store_flos()
            self.log(logs, start_time)
        if self.control.should_evaluate:
            metrics = self._evaluate(ignore_keys_for_eval)
            new_best = self._determine_best_metric(metrics)
            if self.args.save_strategy == SaveStrategy.BEST:
                self.control.should_save = new_best
        if self.control.should_save:
            self._save_checkpoint()
            self.control = self.callback_handler.on_save(self.args, self.state, self.control)

    def _finalize_training(self, num_train_samples: float, start_time: float) -> TrainOutput:
        self._total_loss_scalar += self.accelerator.reduce(self._tr_loss, "mean").item()
        steps = self.state.global_step - self._initial_global_step
        train_loss = self._total_loss_scalar / max(steps, 0.001)
        metrics = speed_metrics("train", start_time,
                                num_samples=num_train_samples * steps / max(self.state.max_steps, 1),
                                num_steps=steps)
        self.store_flos()
        metrics["total_flos"] = self.state.total_flos
        metrics["train_loss"] = train_loss
        self.log(metrics)
        if self.args.load_best_model_at_end and self.state.best_model_checkpoint is not None:
            logger.info("Loading best model from %s (score: %s).",
                        self.state.best_model_checkpoint, self.state.best_metric)
            self._load_model_weights(self.state.best_model_checkpoint)
        if (self.args.should_save and self.state.best_model_checkpoint is not None
                and self.args.save_total_limit == 1):
            best = Path(self.state.best_model_checkpoint).resolve()
            for folder in ckpt.sorted_checkpoints(self.args.output_dir):
                if Path(folder).resolve() != best:
                    shutil.rmtree(folder, ignore_errors=True)
        self.control = self.callback_handler.on_train_end(self.args, self.state, self.control)
        return TrainOutput(self.state.global_step, train_loss, metrics)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Record `logs` (with the epoch and step) in `state.log_history` and tell the
        callbacks (progress bar, log_history.jsonl, TensorBoard)."""
        if self.state.epoch is not None:
            logs["epoch"] = self.state.epoch
        if self.args.include_num_input_tokens_seen != "no":
            logs["num_input_tokens_seen"] = self.state.num_input_tokens_seen
            if start_time is not None:
                seen = self.state.num_input_tokens_seen - self._initial_num_input_tokens_seen
                logs.update(speed_metrics("train", start_time, num_tokens=seen))
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self.control = self.callback_handler.on_log(self.args, self.state, self.control, logs)

    # -- evaluation --------------------------------------------------------------------------

    def _evaluate(self, ignore_keys: list[str] | None) -> dict[str, float]:
        metrics = self.evaluate(ignore_keys=ignore_keys)
        if isinstance(self.lr_scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.lr_scheduler.step(metrics[self._metric_key(metrics)])
        return metrics

    def _metric_key(self, metrics: dict[str, float]) -> str:
        key = self.args.metric_for_best_model
        if not key.startswith("eval_"):
            key = f"eval_{key}"
        if key not in metrics:
            raise KeyError(f"The `metric_for_best_model` training argument is set to {key!r}, "
                           f"which is not found in the evaluation metrics. The available "
                           f"evaluation metrics are: {list(metrics)}. Make compute_metrics "
                           "return it, or change metric_for_best_model.")
        return key

    def _determine_best_metric(self, metrics: dict[str, float]) -> bool:
        if self.args.metric_for_best_model is None:
            return False
        value = metrics[self._metric_key(metrics)]
        greater = self.args.greater_is_better
        if self.state.best_metric is None:
            self.state.best_metric = float("-inf") if greater else float("inf")
        if (value > self.state.best_metric) if greater else (value < self.state.best_metric):
            self.state.best_metric = value
            if self.args.save_strategy != SaveStrategy.NO:
                self.state.best_global_step = self.state.global_step
            return True
        return False

    def evaluate(self, eval_dataset: Any = None, ignore_keys: list[str] | None = None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:
        """Evaluate on `eval_dataset` (a dataset, or a dict of named ones), else the Trainer's
        evaluation set(s): the mean loss, and `compute_metrics`' metrics, prefixed."""
        override = eval_dataset is not None
        dataset = eval_dataset if override else self.eval_dataset
        if isinstance(dataset, dict):
            metrics: dict[str, float] = {}
            for name, one in dataset.items():
                metrics.update(self.evaluate(one if override else name, ignore_keys,
                                             f"{metric_key_prefix}_{name}"))
            return metrics
        dataloader = self.get_eval_dataloader(dataset)
        start_time = time.time()
        output = self.evaluation_loop(dataloader, "Evaluation",
                                      prediction_loss_only=True if self.compute_metrics is None
                                      else None,
                                      ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)
        total = self.args.eval_batch_size * self.accelerator.num_processes
        output.metrics.update(speed_metrics(metric_key_prefix, start_time,
                                            num_samples=output.num_samples,
                                            num_steps=math.ceil(output.num_samples / total)))
        self.log(output.metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control,
                                                         output.metrics)
        return output.metrics

    def predict(self, test_dataset: Any, ignore_keys: list[str] | None = None,
                metric_key_prefix: str = "test") -> PredictionOutput:
        """The predictions on `test_dataset`, its label ids and metrics (when it has labels)."""
        dataloader = self.get_test_dataloader(test_dataset)
        start_time = time.time()
        output = self.evaluation_loop(dataloader, "Prediction", ignore_keys=ignore_keys,
                                      metric_key_prefix=metric_key_prefix)
        total = self.args.eval_batch_size * self.accelerator.num_processes
        output.metrics.update(speed_metrics(metric_key_prefix, start_time,
                                            num_samples=output.num_samples,
                                            num_steps=math.ceil(output.num_samples / total)))
        self.control = self.callback_handler.on_predict(self.args, self.state, self.control,
                                                        output.metrics)
        return PredictionOutput(output.predictions, output.label_ids, output.metrics)

    def _model_for_evaluation(self) -> nn.Module:
        """The model evaluation runs: the trained one (the sharded one under FSDP2), else the
        model on this process's device."""
        if self._prepared and self.accelerator.is_fsdp2:
            return self.model_wrapped
        if not self._prepared:
            self.model.to(self.accelerator.device)
        return self.model

    def evaluation_loop(self, dataloader: DataLoader, description: str,
                        prediction_loss_only: bool | None = None,
                        ignore_keys: list[str] | None = None,
                        metric_key_prefix: str = "eval") -> EvalLoopOutput:
        """The loop of `evaluate` and `predict`: per-example losses, predictions and labels of
        every process gathered (without the samples the last batch repeats), then metrics."""
        if prediction_loss_only is None:
            prediction_loss_only = self.args.prediction_loss_only
        model = self._model_for_evaluation()
        model.eval()
        self.callback_handler.eval_dataloader = dataloader
        losses, predictions, label_ids = [], [], []
        observed = 0
        for inputs in dataloader:
            batch_size = _find_batch_size(inputs) or 0
            observed += batch_size
            loss, logits, labels = self.prediction_step(model, inputs, prediction_loss_only,
                                                        ignore_keys=ignore_keys)
            if loss is not None:
                losses.append(to_numpy(self.accelerator.gather_for_metrics(
                    loss.reshape(1).repeat(max(batch_size, 1)))))
            if labels is not None:
                labels = self.accelerator.pad_across_processes(labels, dim=1, pad_index=-100)
            if logits is not None:
                logits = self.accelerator.pad_across_processes(logits, dim=1, pad_index=-100)
                if self.preprocess_logits_for_metrics is not None:
                    logits = self.preprocess_logits_for_metrics(logits, labels)
                predictions.append(to_numpy(self.accelerator.gather_for_metrics(logits)))
            if labels is not None:
                label_ids.append(to_numpy(self.accelerator.gather_for_metrics(labels)))
            self.control = self.callback_handler.on_prediction_step(self.args, self.state,
                                                                    self.control)
        all_losses = np.concatenate(losses) if losses else None
        all_predictions = concat_batches(predictions)
        all_labels = concat_batches(label_ids)
        num_samples = len(dataloader.dataset) if _has_length(dataloader.dataset) else observed
        if (self.compute_metrics is not None and all_predictions is not None
                and all_labels is not None):
            metrics = self.compute_metrics(EvalPrediction(all_predictions, all_labels))
            if not isinstance(metrics, dict):
                raise TypeError(f"compute_metrics must return a dict of metrics, got "
                                f"{type(metrics).__name__}")
            metrics = denumpify(metrics)
        else:
            metrics = {}
        if all_losses is not None and all_losses.size:
            metrics[f"{metric_key_prefix}_loss"] = float(all_losses.mean())
        metrics = {k if k.startswith(f"{metric_key_prefix}_") else f"{metric_key_prefix}_{k}": v
                   for k, v in metrics.items()}
        return EvalLoopOutput(all_predictions, all_labels, metrics, num_samples)

    def prediction_step(self, model: nn.Module, inputs: dict[str, Any],
                        prediction_loss_only: bool, ignore_keys: list[str] | None = None,
                        ) -> tuple[torch.Tensor | None, Any, Any]:
        """One evaluation batch: (mean loss if the batch has labels, logits, labels)."""
        has_labels = bool(self.label_names) and all(inputs.get(k) is not None
                                                    for k in self.label_names)
        inputs = self._prepare_inputs(inputs)
        if ignore_keys is None:
            ignore_keys = list(getattr(getattr(self.model, "config", None),
                                       "keys_to_ignore_at_inference", None) or [])
            ignore_keys += ["past_key_values", "cache"]
        labels = None
        if has_labels:
            labels = tuple(inputs[name].detach() for name in self.label_names)
            labels = labels[0] if len(labels) == 1 else labels
        with torch.no_grad(), self.accelerator.autocast():
            if has_labels:
                loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
                loss = loss.detach().float().mean()
            else:
                loss, outputs = None, model(**inputs)
        if prediction_loss_only:
            return loss, None, None
        if isinstance(outputs, Mapping):
            logits = tuple(v for k, v in outputs.items()
                           if k not in ignore_keys and k != "loss" and torch.is_tensor(v))
        else:
            logits = tuple(outputs[1:] if has_labels else outputs)
        logits = tuple(t.detach() for t in logits)
        return loss, (logits[0] if len(logits) == 1 else logits), labels

    # -- checkpoints -------------------------------------------------------------------------

    def _save_checkpoint(self) -> None:
        """output_dir/checkpoint-<step>: model, optimizer, scheduler, random states, trainer
        state, arguments and the data position, written whole or not at all."""
        args = self.args
        self.store_flos()
        folder = os.path.join(args.output_dir, f"{ckpt.PREFIX_CHECKPOINT_DIR}-"
                                               f"{self.state.global_step}")
        if args.save_strategy != SaveStrategy.NO and self.state.best_global_step:
            best = os.path.join(args.output_dir, f"{ckpt.PREFIX_CHECKPOINT_DIR}-"
                                                 f"{self.state.best_global_step}")
            if self.state.best_global_step == self.state.global_step or os.path.isdir(best):
                self.state.best_model_checkpoint = best
        weights = (self.accelerator.get_state_dict(self.model_wrapped)  # a collective
                   if self.accelerator.is_fsdp2 else None)
        optimizer_state = None
        if not args.save_only_model:
            fsdp_model = self.model_wrapped if self.accelerator.is_fsdp2 else None
            optimizer_state = accelerate_checkpointing.optimizer_state_dict(
                fsdp_model, getattr(self.optimizer, "optimizer", self.optimizer))
        main = self.accelerator.is_main_process
        with accelerate_checkpointing.atomic_folder(folder, main) as temp:
            if main:
                self._write_model(temp, weights)
                ckpt.write_json(os.path.join(temp, ckpt.TRAINING_ARGS_NAME), args.to_dict())
                epoch, taken, per_epoch = self._epoch_position
                ckpt.write_json(os.path.join(temp, ckpt.DATALOADER_STATE_NAME),
                                {"epoch": epoch, "batches_taken": taken,
                                 "batches_per_epoch": per_epoch,
                                 "global_step": self.state.global_step})
            if not args.save_only_model:
                if main:
                    accelerate_checkpointing.torch_save(
                        optimizer_state, os.path.join(temp, ckpt.OPTIMIZER_NAME))
                    accelerate_checkpointing.torch_save(
                        self.lr_scheduler.state_dict(), os.path.join(temp, ckpt.SCHEDULER_NAME))
                    if self.accelerator.scaler is not None:
                        accelerate_checkpointing.torch_save(
                            self.accelerator.scaler.state_dict(),
                            os.path.join(temp, ckpt.SCALER_NAME))
                ckpt.save_rng_state(ckpt.rng_file(temp, self.accelerator.process_index,
                                                  self.accelerator.num_processes))
            if main:
                for callback in self._stateful_callbacks():
                    name = type(callback).__name__
                    if isinstance(self.state.stateful_callbacks.get(name), list):
                        self.state.stateful_callbacks[name].append(callback.state())
                    else:
                        self.state.stateful_callbacks[name] = callback.state()
                self.state.save_to_json(os.path.join(temp, ckpt.TRAINER_STATE_NAME))
        if args.push_to_hub:
            self._push_from_checkpoint(folder)
        if main:
            for deleted in ckpt.rotate_checkpoints(args.output_dir, args.save_total_limit,
                                                   self.state.best_model_checkpoint):
                logger.info("Deleted older checkpoint %s (save_total_limit=%s)", deleted,
                            args.save_total_limit)

    def _write_model(self, folder: str, weights: dict[str, torch.Tensor] | None) -> None:
        """The model (and processing class) into `folder`, as from_pretrained reads them;
        `weights`: the full weights FSDP2 gathered (None: the model's own)."""
        model = self.accelerator.unwrap_model(self.model_wrapped, keep_torch_compile=False)
        if weights is None and hasattr(model, "save_pretrained"):
            model.save_pretrained(folder)
        else:  # a plain module, or FSDP2's gathered weights: the weights (and the config)
            accelerate_checkpointing.save_weights(
                model.state_dict() if weights is None else weights, folder, None, True)
            config = getattr(model, "config", None)
            if config is not None and hasattr(config, "save_pretrained"):
                config.architectures = [type(model).__name__]
                config.save_pretrained(folder)
        processor = self.processing_class
        if processor is None:
            processor = getattr(self.data_collator, "tokenizer", None)
        if processor is not None and hasattr(processor, "save_pretrained"):
            processor.save_pretrained(folder)

    def _load_model_weights(self, folder: str) -> None:
        """Weights of a checkpoint (Cove's or transformers') into the model."""
        from cove.models import checkpoint as model_files
        from cove.models.modeling import find_checkpoint

        state = model_files.read_weights(find_checkpoint(folder))
        model = self.accelerator.unwrap_model(self.model_wrapped, keep_torch_compile=False)
        if self.accelerator.is_fsdp2:
            accelerate_checkpointing.load_model_state_dict(model, state)
            return
        result = model.load_state_dict(state, strict=False)
        tied = set(model.active_ties()) if hasattr(model, "active_ties") else set()
        missing = [k for k in result.missing_keys if k not in tied]
        if missing:
            logger.warning("There were missing keys in the checkpoint model loaded: %s.", missing)
        if result.unexpected_keys:
            logger.warning("There were unexpected keys in the checkpoint model loaded: %s.",
                           result.unexpected_keys)
        if hasattr(model, "tie_weights"):
            model.tie_weights()

    def _load_optimizer_and_scheduler(self, checkpoint: str) -> None:
        optimizer_file = os.path.join(checkpoint, ckpt.OPTIMIZER_NAME)
        if not os.path.isfile(optimizer_file):
            logger.warning("%s has no %s: the optimizer starts afresh", checkpoint,
                           ckpt.OPTIMIZER_NAME)
            return
        device = "cpu" if self.accelerator.is_fsdp2 else self.accelerator.device
        fsdp_model = self.model_wrapped if self.accelerator.is_fsdp2 else None
        accelerate_checkpointing.load_optimizer_state_dict(
            fsdp_model, getattr(self.optimizer, "optimizer", self.optimizer),
            ckpt.load_torch_state(optimizer_file, device))
        scheduler_file = os.path.join(checkpoint, ckpt.SCHEDULER_NAME)
        if os.path.isfile(scheduler_file):
            self.lr_scheduler.load_state_dict(ckpt.load_torch_state(scheduler_file))
        scaler_file = os.path.join(checkpoint, ckpt.SCALER_NAME)
        if self.accelerator.scaler is not None and os.path.isfile(scaler_file):
            self.accelerator.scaler.load_state_dict(ckpt.load_torch_state(scaler_file))

    def _load_rng_state(self, checkpoint: str) -> None:
        path = ckpt.rng_file(checkpoint, self.accelerator.process_index,
                             self.accelerator.num_processes)
        if not ckpt.load_rng_state(path):
            logger.info("%s has no %s: random numbers will differ from the original run",
                        checkpoint, os.path.basename(path))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The model (and processing class, and arguments as training_args.json) in
        `output_dir` (default `args.output_dir`), loadable by `from_pretrained`. Each file is
        replaced whole. Every process must call it; the main one writes."""
        output_dir = self.args.output_dir if output_dir is None else output_dir
        weights = (self.accelerator.get_state_dict(self.model_wrapped)  # a collective
                   if self.accelerator.is_fsdp2 and self._prepared else None)
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            temp = os.path.join(output_dir, f".save-{os.getpid()}-{time.time_ns()}")
            os.makedirs(temp)
            try:
                self._write_model(temp, weights)
                ckpt.write_json(os.path.join(temp, ckpt.TRAINING_ARGS_NAME),
                                self.args.to_dict())
                for name in os.listdir(temp):  # each file replaced whole
                    os.replace(os.path.join(temp, name), os.path.join(output_dir, name))
            finally:
                shutil.rmtree(temp, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save")

    # -- the Hub -----------------------------------------------------------------------------

    def _hub(self, token: str | None = None) -> Any:
        from cove.hub import HubApi

        return HubApi(token=token if token is not None else self.args.hub_token)

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        """Create the Hub repository `args.hub_model_id` (default: the output folder's name)
        if it does not exist (on the Hub that HF_ENDPOINT names, Cove's own included)."""
        if not self.is_world_process_zero():
            return
        name = self.args.hub_model_id or Path(self.args.output_dir).absolute().name
        private = private if private is not None else self.args.hub_private_repo
        url = self._hub(token).create_repo(name, private=private, exist_ok=True)
        self.hub_model_id = url.repo_id

    def create_model_card(self, model_name: str | None = None, **kwargs: Any) -> None:
        """Write output_dir/README.md: metadata, hyper-parameters and the results table."""
        if not self.is_world_process_zero():
            return
        name = model_name or (self.args.hub_model_id or "").split("/")[-1] \
            or Path(self.args.output_dir).absolute().name
        text = model_card(name, self.args, self.state.log_history,
                          self.accelerator.num_processes, self.state.max_steps, **kwargs)
        accelerate_checkpointing.write_text(os.path.join(self.args.output_dir, "README.md"), text)

    def push_to_hub(self, commit_message: str | None = "End of training",
                    token: str | None = None, revision: str | None = None,
                    private: bool | None = None, **kwargs: Any) -> Any:
        """Save the model (and processing class) in `args.output_dir`, write its model card,
        and upload the folder (checkpoints left out) to `args.hub_model_id` as one commit.
        `kwargs` go to `create_model_card` (finetuned_from, tags, language, license, dataset,
        tasks). Returns the commit's information (None on other processes)."""
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        model_name = kwargs.pop("model_name", None)
        if self.hub_model_id is None:
            self.init_hf_repo(token=token, private=private)
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        self.create_model_card(model_name=model_name, **kwargs)
        return self._hub(token).upload_folder(
            repo_id=self.hub_model_id, folder_path=self.args.output_dir,
            commit_message=commit_message, revision=revision,
            ignore_patterns=["_*", ".*", f"{ckpt.PREFIX_CHECKPOINT_DIR}-*"])

    def _push_from_checkpoint(self, checkpoint: str) -> None:
        """With args.push_to_hub: the checkpoint's model files copied to output_dir and pushed."""
        if not self.is_world_process_zero():
            return
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        for entry in os.scandir(checkpoint):
            if entry.is_file() and entry.name not in (
                    ckpt.OPTIMIZER_NAME, ckpt.SCHEDULER_NAME, ckpt.SCALER_NAME,
                    ckpt.TRAINER_STATE_NAME, ckpt.DATALOADER_STATE_NAME) \
                    and not entry.name.startswith("rng_state"):
                shutil.copy(entry.path, os.path.join(self.args.output_dir, entry.name))
        message = (f"Training in progress, step {self.state.global_step}"
                   if self.args.save_strategy == SaveStrategy.STEPS
                   else f"Training in progress, epoch {int(self.state.epoch)}")
        self._hub().upload_folder(repo_id=self.hub_model_id, folder_path=self.args.output_dir,
                                  commit_message=message,
                                  ignore_patterns=["_*", ".*", f"{ckpt.PREFIX_CHECKPOINT_DIR}-*"])
