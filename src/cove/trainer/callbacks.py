"""The training loop's state, its control switches, and the callbacks that watch and steer it.

`TrainerState` is what a checkpoint's trainer_state.json holds (the same JSON as transformers',
so checkpoints move between the two); `TrainerControl` carries the decisions (log, evaluate,
save, stop) that callbacks take at each event; `DefaultFlowCallback` takes them from the
logging/eval/save strategies of `TrainingArguments`, as transformers 5.25 does.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cove.trainer.trainer_utils import IntervalStrategy, SaveStrategy
from cove.trainer.training_args import TrainingArguments, resolve_report_to

logger = logging.getLogger("cove.trainer")

TRAINER_STATE_NAME = "trainer_state.json"
LOG_HISTORY_NAME = "log_history.jsonl"


@dataclass
class TrainerState:
    """The loop's state, saved with each checkpoint and passed to every callback.

    A step is an update step: with `gradient_accumulation_steps=n` it takes n batches.
    `epoch` counts fractions of epochs; `logging_steps`, `eval_steps` and `save_steps` are the
    absolute step counts (`compute_steps` turns the arguments' ratios into them).
    """

    epoch: float = 0
    global_step: int = 0
    max_steps: int = 0
    logging_steps: int = 500
    eval_steps: int = 500
    save_steps: int = 500
    train_batch_size: int | None = None
    num_train_epochs: int = 0
    num_input_tokens_seen: int = 0
    total_flos: float = 0
    log_history: list[dict[str, float]] | None = None
    best_metric: float | None = None
    best_global_step: int | None = None
    best_model_checkpoint: str | None = None
    is_local_process_zero: bool = True
    is_world_process_zero: bool = True
    is_hyper_param_search: bool = False
    trial_name: str | None = None
    trial_params: dict[str, str | float | int | bool] | None = None
    # callbacks' saved states by class name (a list where a class has several); given callbacks,
    # their states are taken
    stateful_callbacks: dict[str, Any] | list[ExportableState] | None = None

    def __post_init__(self) -> None:
        if self.log_history is None:
            self.log_history = []
        if self.stateful_callbacks is None:
            self.stateful_callbacks = {}
        elif not isinstance(self.stateful_callbacks, dict):
            states: dict[str, Any] = {}
            for callback in self.stateful_callbacks:
                if not isinstance(callback, ExportableState):
                    raise TypeError("All callbacks passed to be saved must inherit "
                                    f"`ExportableState`, but received {type(callback)}")
                name = type(callback).__name__
                if name not in states:
                    states[name] = callback.state()
                else:  # several of one class: a list of their states, in order
                    if not isinstance(states[name], list):
                        states[name] = [states[name]]
                    states[name].append(callback.state())
            self.stateful_callbacks = states

    def save_to_json(self, json_path: str | os.PathLike) -> None:
        """Write the state as transformers' trainer_state.json does (indented, sorted keys)."""
        text = json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"
        with open(json_path, "w", encoding="utf-8") as f:
            f.write(text)

    @classmethod
    def load_from_json(cls, json_path: str | os.PathLike) -> TrainerState:
        """Read a trainer_state.json (Cove's or transformers')."""
        with open(json_path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{json_path} is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{json_path} does not hold a trainer state (a JSON object)")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:  # written by a later version: keep what this one knows
            logger.warning("%s: ignoring fields this version does not know: %s", json_path,
                           unknown)
        return cls(**{k: v for k, v in data.items() if k in known})

    def compute_steps(self, args: TrainingArguments, max_steps: int) -> None:
        """Set the logging, eval and save step counts from `args` (ratios of `max_steps`)."""
        for kind in ("logging", "eval", "save"):
            steps = getattr(args, f"{kind}_steps")
            if steps is not None:
                if steps < 1:
                    steps = math.ceil(max_steps * steps)
                setattr(self, f"{kind}_steps", steps)


class ExportableState:
    """An object whose state a checkpoint saves (as JSON, in `TrainerState.stateful_callbacks`).

    `state()` returns {"args": constructor arguments, "attributes": attributes to set after};
    `from_state` rebuilds the object from it.
    """

    def state(self) -> dict:
        raise NotImplementedError(f"{type(self).__name__} must implement `state()` to have its "
                                  "state saved")

    @classmethod
    def from_state(cls, state: dict) -> ExportableState:
        instance = cls(**state["args"])
        for key, value in state["attributes"].items():
            setattr(instance, key, value)
        return instance


@dataclass
class TrainerControl(ExportableState):
    """The switches callbacks set to steer the loop.

    `should_training_stop` stays set; `should_epoch_stop` is reset at each epoch's start; the
    log/evaluate/save switches at each step's start (and each once its action is done).
    """

    should_training_stop: bool = False
    should_epoch_stop: bool = False
    should_save: bool = False
    should_evaluate: bool = False
    should_log: bool = False

    def _new_training(self) -> None:
        self.should_training_stop = False

    def _new_epoch(self) -> None:
        self.should_epoch_stop = False

    def _new_step(self) -> None:
        self.should_save = False
        self.should_evaluate = False
        self.should_log = False

    def state(self) -> dict:
        return {"args": dataclasses.asdict(self), "attributes": {}}


class TrainerCallback:
    """A hook into the training loop: override the events you need.

    Every event gets `args` (`TrainingArguments`), `state` (`TrainerState`) and `control`
    (`TrainerControl`) positionally, and as keyword arguments `model`, `processing_class`,
    `optimizer`, `lr_scheduler`, `train_dataloader`, `eval_dataloader` (and `metrics` for
    on_evaluate/on_predict, `logs` for on_log). An event may change `control` and return it.
    """

    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> TrainerControl | None:
        """At the end of the Trainer's initialisation."""

    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, **kwargs: Any) -> TrainerControl | None:
        """At the beginning of training."""

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> TrainerControl | None:
        """At the end of training."""

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, **kwargs: Any) -> TrainerControl | None:
        """At the beginning of an epoch."""

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> TrainerControl | None:
        """At the end of an epoch."""

    def on_step_begin(self, args: TrainingArguments, state: TrainerState,
                      control: TrainerControl, **kwargs: Any) -> TrainerControl | None:
        """At the beginning of an update step (which may take several batches)."""

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState,
                              control: TrainerControl, **kwargs: Any) -> TrainerControl | None:
        """After gradient clipping, before the optimizer step (to look at the gradients)."""

    def on_optimizer_step(self, args: TrainingArguments, state: TrainerState,
                          control: TrainerControl, **kwargs: Any) -> TrainerControl | None:
        """After the optimizer step, before the gradients are zeroed."""

    def on_substep_end(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, **kwargs: Any) -> TrainerControl | None:
        """At the end of a batch within a gradient-accumulation step."""

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> TrainerControl | None:
        """At the end of an update step."""

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> TrainerControl | None:
        """After an evaluation (`metrics` in kwargs)."""

    def on_predict(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                   metrics: dict[str, float], **kwargs: Any) -> TrainerControl | None:
        """After a successful prediction."""

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> TrainerControl | None:
        """After a checkpoint is saved."""

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               **kwargs: Any) -> TrainerControl | None:
        """After logs are recorded (`logs` in kwargs)."""

    def on_prediction_step(self, args: TrainingArguments, state: TrainerState,
                           control: TrainerControl, **kwargs: Any) -> TrainerControl | None:
        """After a prediction (evaluation) step."""

    def on_push_begin(self, args: TrainingArguments, state: TrainerState,
                      control: TrainerControl, **kwargs: Any) -> TrainerControl | None:
        """Before the model is pushed to the Hub."""


class CallbackHandler(TrainerCallback):
    """Calls the Trainer's callbacks in order, and resets the switches each event starts with."""

    def __init__(self, callbacks: list[TrainerCallback | type[TrainerCallback]], model: Any,
                 processing_class: Any, optimizer: Any, lr_scheduler: Any) -> None:
        self.callbacks: list[TrainerCallback] = []
        for callback in callbacks:
            self.add_callback(callback)
        self.model = model
        self.processing_class = processing_class
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self.train_dataloader = None
        self.eval_dataloader = None
        if not any(isinstance(cb, DefaultFlowCallback) for cb in self.callbacks):
            logger.warning("The Trainer will not log, evaluate or save on schedule without a "
                           "DefaultFlowCallback among its callbacks: %s", self.callback_list)

    def add_callback(self, callback: TrainerCallback | type[TrainerCallback]) -> None:
        """Add a callback (an instance, or a class to instantiate)."""
        cb = callback() if isinstance(callback, type) else callback
        if not isinstance(cb, TrainerCallback):
            raise TypeError(f"callbacks must be TrainerCallback instances or classes, got "
                            f"{type(cb).__name__}")
        if type(cb) in [type(c) for c in self.callbacks]:
            logger.warning("Adding a second %s to the Trainer's callbacks: %s",
                           type(cb).__name__, self.callback_list)
        self.callbacks.append(cb)

    def pop_callback(self, callback: TrainerCallback | type[TrainerCallback],
                     ) -> TrainerCallback | None:
        """Remove and return the callback (the first of a class, given a class), or None."""
        for cb in self.callbacks:
            if (isinstance(cb, callback) if isinstance(callback, type) else cb == callback):
                self.callbacks.remove(cb)
                return cb
        return None

    def remove_callback(self, callback: TrainerCallback | type[TrainerCallback]) -> None:
        """Remove the callback (the first of a class, given a class)."""
        if isinstance(callback, type):
            self.pop_callback(callback)
        else:
            self.callbacks.remove(callback)

    @property
    def callback_list(self) -> str:
        return "\n".join(type(cb).__name__ for cb in self.callbacks)

    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> TrainerControl | None:
        return self.call_event("on_init_end", args, state, control, **kwargs)

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> TrainerControl | None:
        control.should_training_stop = False
        return self.call_event("on_train_begin", args, state, control, **kwargs)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> TrainerControl | None:
        return self.call_event("on_train_end", args, state, control, **kwargs)

    def on_epoch_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> TrainerControl | None:
        control.should_epoch_stop = False
        return self.call_event("on_epoch_begin", args, state, control, **kwargs)

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> TrainerControl | None:
        return self.call_event("on_epoch_end", args, state, control, **kwargs)

    def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                      **kwargs: Any) -> TrainerControl | None:
        control.should_log = control.should_evaluate = control.should_save = False
        return self.call_event("on_step_begin", args, state, control, **kwargs)

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState,
                              control: TrainerControl, **kwargs: Any) -> TrainerControl | None:
        return self.call_event("on_pre_optimizer_step", args, state, control, **kwargs)

    def on_optimizer_step(self, args: TrainingArguments, state: TrainerState,
                          control: TrainerControl, **kwargs: Any) -> TrainerControl | None:
        return self.call_event("on_optimizer_step", args, state, control, **kwargs)

    def on_substep_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> TrainerControl | None:
        return self.call_event("on_substep_end", args, state, control, **kwargs)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> TrainerControl | None:
        return self.call_event("on_step_end", args, state, control, **kwargs)

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    metrics: dict[str, float], **kwargs: Any) -> TrainerControl | None:
        control.should_evaluate = False
        return self.call_event("on_evaluate", args, state, control, metrics=metrics, **kwargs)

    def on_predict(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                   metrics: dict[str, float], **kwargs: Any) -> TrainerControl | None:
        return self.call_event("on_predict", args, state, control, metrics=metrics, **kwargs)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> TrainerControl | None:
        control.should_save = False
        return self.call_event("on_save", args, state, control, **kwargs)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, Any], **kwargs: Any) -> TrainerControl | None:
        control.should_log = False
        return self.call_event("on_log", args, state, control, logs=logs, **kwargs)

    def on_prediction_step(self, args: TrainingArguments, state: TrainerState,
                           control: TrainerControl, **kwargs: Any) -> TrainerControl | None:
        return self.call_event("on_prediction_step", args, state, control, **kwargs)

    def on_push_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                      **kwargs: Any) -> TrainerControl | None:
        return self.call_event("on_push_begin", args, state, control, **kwargs)

    def call_event(self, event: str, args: TrainingArguments, state: TrainerState,
                   control: TrainerControl, **kwargs: Any) -> TrainerControl:
        """Call `event` on each callback; a callback's returned control replaces the current."""
        for callback in self.callbacks:
            result = getattr(callback, event)(
                args, state, control, model=self.model, processing_class=self.processing_class,
                optimizer=self.optimizer, lr_scheduler=self.lr_scheduler,
                train_dataloader=self.train_dataloader, eval_dataloader=self.eval_dataloader,
                **kwargs)
            if result is not None:
                control = result
        return control


class DefaultFlowCallback(TrainerCallback):
    """Decides when to log, evaluate and save from the strategies, and stops at `max_steps`.

    With a "steps" strategy, every `*_steps` steps (evaluation not before `eval_delay`); at the
    last step, an evaluation if the last one was not just done, and a final checkpoint.
    """

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> TrainerControl | None:
        step = state.global_step
        if step == 1 and args.logging_first_step:
            control.should_log = True
        if args.logging_strategy == IntervalStrategy.STEPS and step % state.logging_steps == 0:
            control.should_log = True
        eval_on_steps = args.eval_strategy == IntervalStrategy.STEPS and args.eval_delay <= step
        if eval_on_steps and step % state.eval_steps == 0:
            control.should_evaluate = True
        if (args.save_strategy == SaveStrategy.STEPS and state.save_steps > 0
                and step % state.save_steps == 0):
            control.should_save = True
        if step >= state.max_steps:
            control.should_training_stop = True
            if eval_on_steps and step % state.eval_steps != 0:
                control.should_evaluate = True
            if args.save_strategy == SaveStrategy.STEPS:
                control.should_save = True
        return control

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> TrainerControl | None:
        if args.logging_strategy == IntervalStrategy.EPOCH:
            control.should_log = True
        if args.eval_strategy == IntervalStrategy.EPOCH and args.eval_delay <= state.epoch:
            control.should_evaluate = True
        if args.save_strategy == SaveStrategy.EPOCH:
            control.should_save = True
        return control


def _shown(value: Any, max_str_len: int) -> Any:
    """A log value as the progress bar and the printer show it."""
    if isinstance(value, str) and len(value) > max_str_len:
        return (f"[String too long to display, length: {len(value)} > {max_str_len}. "
                "Consider increasing `max_str_len` if needed.]")
    if isinstance(value, float):
        return f"{value:.4g}"
    return value


class ProgressCallback(TrainerCallback):
    """A tqdm bar over the training steps (and one over evaluation batches), on process 0 only.

    Logs are written under the bar, floats to 4 significant digits, strings longer than
    `max_str_len` replaced by a note.
    """

    def __init__(self, max_str_len: int = 100) -> None:
        self.training_bar = None
        self.prediction_bar = None
        self.max_str_len = max_str_len
        self.current_step = 0

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> TrainerControl | None:
        from tqdm.auto import tqdm

        if state.is_world_process_zero:
            self.training_bar = tqdm(total=state.max_steps, dynamic_ncols=True)
        self.current_step = 0

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> TrainerControl | None:
        if state.is_world_process_zero and self.training_bar is not None:
            self.training_bar.update(state.global_step - self.current_step)
            self.current_step = state.global_step

    def on_prediction_step(self, args: TrainingArguments, state: TrainerState,
                           control: TrainerControl, eval_dataloader: Any = None, **kwargs: Any
                           ) -> TrainerControl | None:
        from tqdm.auto import tqdm

        if not state.is_world_process_zero:
            return
        try:
            total = len(eval_dataloader)
        except TypeError:  # no length (streaming): no bar
            return
        if self.prediction_bar is None:
            self.prediction_bar = tqdm(total=total, leave=self.training_bar is None,
                                       dynamic_ncols=True)
        self.prediction_bar.update(1)

    def _close_prediction_bar(self, state: TrainerState) -> None:
        if state.is_world_process_zero and self.prediction_bar is not None:
            self.prediction_bar.close()
            self.prediction_bar = None

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> TrainerControl | None:
        self._close_prediction_bar(state)

    def on_predict(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                   **kwargs: Any) -> TrainerControl | None:
        self._close_prediction_bar(state)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, Any] | None = None, **kwargs: Any) -> TrainerControl | None:
        if state.is_world_process_zero and self.training_bar is not None:
            shown = {k: _shown(v, self.max_str_len) for k, v in logs.items() if k != "total_flos"}
            self.training_bar.write(str(shown))

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> TrainerControl | None:
        if state.is_world_process_zero and self.training_bar is not None:
            self.training_bar.close()
            self.training_bar = None


class PrinterCallback(TrainerCallback):
    """Prints each log (floats to 4 significant digits) on each machine's main process."""

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, Any] | None = None, **kwargs: Any) -> TrainerControl | None:
        # A copy: the other callbacks see the logs as they were (transformers pops total_flos).
        if state.is_local_process_zero and logs is not None:
            print({k: (f"{v:.4g}" if isinstance(v, float) else v)
                   for k, v in logs.items() if k != "total_flos"})


class EarlyStoppingCallback(TrainerCallback, ExportableState):
    """Stops training once `metric_for_best_model` has not improved for `early_stopping_patience`
    evaluations in a row (improving: beating the best by more than `early_stopping_threshold`).

    Needs `metric_for_best_model` and an eval strategy; without `load_best_model_at_end` the
    last model, not the best, is what training leaves (a warning says so).
    """

    def __init__(self, early_stopping_patience: int = 1,
                 early_stopping_threshold: float | None = 0.0) -> None:
        if (isinstance(early_stopping_patience, bool) or not isinstance(early_stopping_patience, int)
                or early_stopping_patience < 1):
            raise ValueError(f"early_stopping_patience must be a positive integer, got "
                             f"{early_stopping_patience!r}")
        if early_stopping_threshold is not None and early_stopping_threshold < 0:
            raise ValueError(f"early_stopping_threshold must be >= 0, got "
                             f"{early_stopping_threshold}")
        self.early_stopping_patience = early_stopping_patience
        self.early_stopping_threshold = early_stopping_threshold
        # how many evaluations in a row have not improved the metric
        self.early_stopping_patience_counter = 0

    def check_metric_value(self, args: TrainingArguments, state: TrainerState,
                           control: TrainerControl, metric_value: float) -> None:
        """Count one more evaluation without improvement, or start again from 0."""
        best = state.best_metric  # the Trainer updates it after the evaluation's callbacks
        if best is None:
            self.early_stopping_patience_counter = 0
            return
        better = metric_value > best if args.greater_is_better else metric_value < best
        if better and abs(metric_value - best) > (self.early_stopping_threshold or 0.0):
            self.early_stopping_patience_counter = 0
        else:
            self.early_stopping_patience_counter += 1

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> TrainerControl | None:
        if args.metric_for_best_model is None:
            raise ValueError("EarlyStoppingCallback requires metric_for_best_model to be set in "
                             "the TrainingArguments (or load_best_model_at_end=True, which "
                             "defaults it to 'loss')")
        if args.eval_strategy == IntervalStrategy.NO:
            raise ValueError("EarlyStoppingCallback requires an eval_strategy of 'steps' or "
                             "'epoch': it decides on the evaluation metric")
        if not args.load_best_model_at_end:
            logger.warning("Using EarlyStoppingCallback without load_best_model_at_end=True: "
                           "once training is finished, the best model will not be loaded.")

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    metrics: dict[str, float], **kwargs: Any) -> TrainerControl | None:
        name = args.metric_for_best_model
        if not name.startswith("eval_"):
            name = f"eval_{name}"
        value = metrics.get(name)
        if value is None:
            logger.warning("early stopping needs the metric %s, which the evaluation did not "
                           "return (it has %s): early stopping is disabled", name, list(metrics))
            return
        self.check_metric_value(args, state, control, value)
        if self.early_stopping_patience_counter >= self.early_stopping_patience:
            control.should_training_stop = True

    def state(self) -> dict:
        return {
            "args": {"early_stopping_patience": self.early_stopping_patience,
                     "early_stopping_threshold": self.early_stopping_threshold},
            "attributes": {"early_stopping_patience_counter": self.early_stopping_patience_counter},
        }


class LogHistoryJsonlCallback(TrainerCallback):
    """Cove's own record of a run: `output_dir/log_history.jsonl`, one JSON object a line.

    The file holds `state.log_history` (the same entries as trainer_state.json's), appended as
    each log is made, so a run can be followed (`tail -f`) and read back while it trains; at
    the start of training it is rewritten from the state (a resumed run keeps its history).
    Written by process 0 only.
    """

    def __init__(self) -> None:
        self._written = 0

    def _path(self, args: TrainingArguments) -> str:
        return os.path.join(args.output_dir, LOG_HISTORY_NAME)

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> TrainerControl | None:
        if not state.is_world_process_zero:
            return
        os.makedirs(args.output_dir, exist_ok=True)
        with open(self._path(args), "w", encoding="utf-8") as f:
            f.writelines(json.dumps(entry) + "\n" for entry in state.log_history)
        self._written = len(state.log_history)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               **kwargs: Any) -> TrainerControl | None:
        if not state.is_world_process_zero or len(state.log_history) <= self._written:
            return
        os.makedirs(args.output_dir, exist_ok=True)
        with open(self._path(args), "a", encoding="utf-8") as f:
            f.writelines(json.dumps(entry) + "\n" for entry in state.log_history[self._written:])
        self._written = len(state.log_history)


def _tensorboard_writer_class() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ImportError("report_to='tensorboard' needs the tensorboard package: "
                              "pip install tensorboard") from None
    return SummaryWriter


def rewrite_logs(logs: dict[str, Any]) -> dict[str, Any]:
    """TensorBoard's tags: eval_x -> eval/x, test_x -> test/x, anything else -> train/x."""
    out = {}
    for key, value in logs.items():
        if key.startswith("eval_"):
            out["eval/" + key[len("eval_"):]] = value
        elif key.startswith("test_"):
            out["test/" + key[len("test_"):]] = value
        else:
            out["train/" + key] = value
    return out


class TensorBoardCallback(TrainerCallback):
    """Sends the logs to TensorBoard (process 0 only).

    The events go to $TENSORBOARD_LOGGING_DIR, else to output_dir/runs/<date>_<host> (as
    transformers). `tb_writer` replaces the SummaryWriter made otherwise.
    """

    def __init__(self, tb_writer: Any = None) -> None:
        self._writer_class = _tensorboard_writer_class() if tb_writer is None else None
        self.tb_writer = tb_writer
        self.logging_dir = os.environ.get("TENSORBOARD_LOGGING_DIR") or None
        if self.logging_dir is not None:
            self.logging_dir = os.path.expanduser(self.logging_dir)

    def _writer(self, args: TrainingArguments) -> Any:
        if self.tb_writer is None:
            if self.logging_dir is None:
                run = datetime.now().strftime("%b%d_%H-%M-%S") + "_" + socket.gethostname()
                self.logging_dir = os.path.join(args.output_dir, "runs", run)
            self.tb_writer = (self._writer_class or _tensorboard_writer_class())(
                log_dir=self.logging_dir)
        return self.tb_writer

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> TrainerControl | None:
        if not state.is_world_process_zero:
            return
        writer = self._writer(args)
        writer.add_text("args", args.to_json_string())
        config = getattr(kwargs.get("model"), "config", None)
        if config is not None and hasattr(config, "to_json_string"):
            writer.add_text("model_config", config.to_json_string())

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: dict[str, Any] | None = None, **kwargs: Any) -> TrainerControl | None:
        if not state.is_world_process_zero:
            return
        writer = self._writer(args)
        for key, value in rewrite_logs(logs or {}).items():
            if isinstance(value, (int, float)):
                writer.add_scalar(key, value, state.global_step)
            elif isinstance(value, str):
                writer.add_text(key, value, state.global_step)
            else:
                logger.warning("TensorBoard takes numbers and text: dropping log %r of type %s",
                               key, type(value).__name__)
        writer.flush()

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> TrainerControl | None:
        if self.tb_writer is not None:
            self.tb_writer.close()
            self.tb_writer = None


INTEGRATION_TO_CALLBACK = {"tensorboard": TensorBoardCallback}


def get_reporting_integration_callbacks(report_to: str | list[str] | None,
                                        ) -> list[type[TrainerCallback]]:
    """The callback classes for the trackers `report_to` names ("none", "all", or a list)."""
    names = resolve_report_to(report_to)
    return [INTEGRATION_TO_CALLBACK[name] for name in names]
