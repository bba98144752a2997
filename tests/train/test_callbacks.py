"""The loop's state and callbacks: DefaultFlowCallback's decisions and trainer_state.json against
transformers', the handler's event plumbing, early stopping, and the loggers."""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import logging
import warnings

import pytest

import cove.trainer.callbacks as cove_callbacks
from cove.trainer import (
    CallbackHandler,
    DefaultFlowCallback,
    EarlyStoppingCallback,
    LogHistoryJsonlCallback,
    PrinterCallback,
    ProgressCallback,
    TensorBoardCallback,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

transformers = pytest.importorskip("transformers")
tf_callbacks = pytest.importorskip("transformers.trainer_callback")


def reference_args(**kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return transformers.TrainingArguments(**kwargs)


# --- DefaultFlowCallback -----------------------------------------------------------------

SHAPES = [  # (steps per epoch, epochs, max_steps)
    (5, 3, 15), (4, 3, 10), (7, 2, 14), (3, 1, 3), (6, 4, 23)]
LOGGING = [{"logging_strategy": "steps", "logging_steps": 1},
           {"logging_strategy": "steps", "logging_steps": 3},
           {"logging_strategy": "steps", "logging_steps": 0.25},
           {"logging_strategy": "epoch"}, {"logging_strategy": "no"}]
EVAL = [{"eval_strategy": "no"}, {"eval_strategy": "steps"},
        {"eval_strategy": "steps", "eval_steps": 2},
        {"eval_strategy": "steps", "eval_steps": 0.3, "eval_delay": 2},
        {"eval_strategy": "epoch"}, {"eval_strategy": "epoch", "eval_delay": 2}]
SAVE = [{"save_strategy": "no"}, {"save_strategy": "steps", "save_steps": 4},
        {"save_strategy": "steps", "save_steps": 0.5}, {"save_strategy": "steps"},
        {"save_strategy": "epoch"}, {"save_strategy": "best"}]


def flow_trace(lib, args, steps_per_epoch: int, epochs: int, max_steps: int) -> list[tuple]:
    """The decisions of `lib`'s DefaultFlowCallback through a training loop, acting on each
    as the Trainer does (logging, evaluating, saving reset their switch)."""
    state, control = lib.TrainerState(), lib.TrainerControl()
    state.max_steps, state.num_train_epochs = max_steps, epochs
    state.compute_steps(args, max_steps)
    handler = lib.CallbackHandler([lib.DefaultFlowCallback()], None, None, None, None)
    trace = []

    def act(where):
        trace.append((where, state.global_step, control.should_log, control.should_evaluate,
                      control.should_save, control.should_training_stop))
        if control.should_log:
            handler.on_log(args, state, control, logs={})
        if control.should_evaluate:
            handler.on_evaluate(args, state, control, metrics={})
        if control.should_save:
            handler.on_save(args, state, control)

    control = handler.on_train_begin(args, state, control)
    for epoch in range(epochs):
        control = handler.on_epoch_begin(args, state, control)
        for step in range(steps_per_epoch):
            control = handler.on_step_begin(args, state, control)
            state.global_step += 1
            state.epoch = epoch + (step + 1) / steps_per_epoch
            control = handler.on_step_end(args, state, control)
            act("step")
            if control.should_epoch_stop or control.should_training_stop:
                break
        control = handler.on_epoch_end(args, state, control)
        act("epoch")
        if control.should_training_stop:
            break
    return trace


@pytest.mark.parametrize(("logging_kwargs", "first"), [
    (kw, first) for kw, first in itertools.product(LOGGING, (False, True))])
def test_flow_decisions_equal_transformers(logging_kwargs, first):
    for eval_kwargs, save_kwargs in itertools.product(EVAL, SAVE):
        kwargs = {**logging_kwargs, **eval_kwargs, **save_kwargs, "logging_first_step": first}
        ours, theirs = TrainingArguments(**kwargs), reference_args(**kwargs)
        for shape in SHAPES:
            expected = flow_trace(tf_callbacks, theirs, *shape)
            assert flow_trace(cove_callbacks, ours, *shape) == expected, (kwargs, shape)


def test_flow_saves_and_evaluates_at_the_end():
    args = TrainingArguments(eval_strategy="steps", eval_steps=4, save_steps=4, logging_steps=4)
    trace = flow_trace(cove_callbacks, args, 5, 2, 10)
    steps = {entry[1]: entry[2:] for entry in trace if entry[0] == "step"}
    assert steps[4] == (True, True, True, False) and steps[8] == (True, True, True, False)
    assert steps[10] == (False, True, True, True)  # a final evaluation and checkpoint
    assert steps[9] == (False, False, False, False)


@pytest.mark.parametrize(("kwargs", "max_steps"), [
    ({}, 1000), ({"logging_steps": 0.1, "eval_strategy": "steps", "save_steps": 0.33}, 95),
    ({"eval_strategy": "steps", "eval_steps": 0.05, "logging_steps": 7}, 3)])
def test_compute_steps_matches(kwargs, max_steps):
    ours, theirs = TrainerState(), tf_callbacks.TrainerState()
    ours.compute_steps(TrainingArguments(**kwargs), max_steps)
    theirs.compute_steps(reference_args(**kwargs), max_steps)
    assert dataclasses.asdict(ours) == dataclasses.asdict(theirs)


# --- trainer_state.json ------------------------------------------------------------------

STATE = {
    "epoch": 2.5, "global_step": 25, "max_steps": 30, "logging_steps": 5, "eval_steps": 10,
    "save_steps": 10, "train_batch_size": 8, "num_train_epochs": 3,
    "num_input_tokens_seen": 12345, "total_flos": 1.5e12,
    "log_history": [{"loss": 2.3025, "grad_norm": 1.25, "learning_rate": 4e-05, "epoch": 0.5,
                     "step": 5},
                    {"eval_loss": 1.9, "eval_accuracy": 0.5, "eval_runtime": 0.1, "epoch": 1.0,
                     "step": 10}],
    "best_metric": 1.9, "best_global_step": 10,
    "best_model_checkpoint": "out/checkpoint-10", "is_local_process_zero": True,
    "is_world_process_zero": True, "is_hyper_param_search": False, "trial_name": None,
    "trial_params": None,
}


def stateful(lib):
    return [lib.EarlyStoppingCallback(3, 0.01), lib.TrainerControl(should_save=True),
            lib.EarlyStoppingCallback(2)]


def test_trainer_state_json_is_transformers(tmp_path):
    ours = TrainerState(**STATE, stateful_callbacks=stateful(cove_callbacks))
    theirs = tf_callbacks.TrainerState(**STATE, stateful_callbacks=stateful(tf_callbacks))
    ours.save_to_json(tmp_path / "cove.json")
    theirs.save_to_json(tmp_path / "tf.json")
    assert (tmp_path / "cove.json").read_text() == (tmp_path / "tf.json").read_text()
    callbacks = json.loads((tmp_path / "cove.json").read_text())["stateful_callbacks"]
    assert [s["args"]["early_stopping_patience"] for s in callbacks["EarlyStoppingCallback"]] \
        == [3, 2]


def test_trainer_state_moves_both_ways(tmp_path):
    theirs = tf_callbacks.TrainerState(**STATE, stateful_callbacks=stateful(tf_callbacks))
    theirs.save_to_json(tmp_path / "from_tf.json")
    loaded = TrainerState.load_from_json(tmp_path / "from_tf.json")
    assert dataclasses.asdict(loaded) == dataclasses.asdict(theirs)
    loaded.global_step += 1
    loaded.log_history.append({"loss": float("nan"), "step": 26})
    loaded.save_to_json(tmp_path / "from_cove.json")
    back = tf_callbacks.TrainerState.load_from_json(tmp_path / "from_cove.json")
    assert back.global_step == 26 and back.stateful_callbacks == theirs.stateful_callbacks
    assert json.dumps(dataclasses.asdict(back)) == json.dumps(dataclasses.asdict(loaded))
    # callbacks come back from their saved state
    saved = loaded.stateful_callbacks["EarlyStoppingCallback"][0]
    restored = EarlyStoppingCallback.from_state(saved)
    assert (restored.early_stopping_patience, restored.early_stopping_threshold) == (3, 0.01)
    control = TrainerControl.from_state(loaded.stateful_callbacks["TrainerControl"])
    assert control == TrainerControl(should_save=True)


def test_trainer_state_errors(tmp_path, caplog):
    with pytest.raises(TypeError, match="must inherit `ExportableState`"):
        TrainerState(stateful_callbacks=[PrinterCallback()])
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        TrainerState.load_from_json(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ValueError, match="does not hold a trainer state"):
        TrainerState.load_from_json(tmp_path / "list.json")
    (tmp_path / "later.json").write_text(json.dumps({"global_step": 3, "new_field": 1}))
    with caplog.at_level(logging.WARNING, logger="cove.trainer"):
        assert TrainerState.load_from_json(tmp_path / "later.json").global_step == 3
    assert "new_field" in caplog.text


# --- the handler -------------------------------------------------------------------------

EVENTS = ["on_init_end", "on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end",
          "on_step_begin", "on_pre_optimizer_step", "on_optimizer_step", "on_substep_end",
          "on_step_end", "on_evaluate", "on_predict", "on_save", "on_log", "on_prediction_step",
          "on_push_begin"]


class Recorder(TrainerCallback):
    def __init__(self):
        self.calls = []

    def __getattribute__(self, name):
        if name in EVENTS:
            def record(args, state, control, **kwargs):
                self.calls.append((name, sorted(kwargs)))
            return record
        return super().__getattribute__(name)


def test_every_event_is_transformers_and_reaches_callbacks():
    assert [e for e in dir(tf_callbacks.TrainerCallback) if e.startswith("on_")] == sorted(EVENTS)
    assert [e for e in dir(TrainerCallback) if e.startswith("on_")] == sorted(EVENTS)
    recorder = Recorder()
    handler = CallbackHandler([DefaultFlowCallback(), recorder], "model", "tok", "opt", "sched")
    args, state, control = TrainingArguments(), TrainerState(), TrainerControl()
    common = ["eval_dataloader", "lr_scheduler", "model", "optimizer", "processing_class",
              "train_dataloader"]
    for event in EVENTS:
        extra = ({"metrics": {}} if event in ("on_evaluate", "on_predict")
                 else {"logs": {}} if event == "on_log" else {})
        assert getattr(handler, event)(args, state, control, **extra) is control
    assert recorder.calls == [(e, sorted(common + (["metrics"] if e in ("on_evaluate",
                                                                         "on_predict")
                                                   else ["logs"] if e == "on_log" else [])))
                              for e in EVENTS]


def test_handler_resets_switches_and_takes_returned_control():
    class Stopper(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            return TrainerControl(should_training_stop=True)

    handler = CallbackHandler([DefaultFlowCallback(), Stopper()], None, None, None, None)
    args, state = TrainingArguments(), TrainerState(max_steps=10)
    control = TrainerControl(should_log=True, should_evaluate=True, should_save=True,
                             should_epoch_stop=True, should_training_stop=True)
    control = handler.on_train_begin(args, state, control)
    assert not control.should_training_stop
    control = handler.on_epoch_begin(args, state, control)
    assert not control.should_epoch_stop
    control = handler.on_step_begin(args, state, control)
    assert not (control.should_log or control.should_evaluate or control.should_save)
    state.global_step = 1
    assert handler.on_step_end(args, state, control).should_training_stop
    for event, switch in (("on_log", "should_log"), ("on_evaluate", "should_evaluate"),
                          ("on_save", "should_save")):
        setattr(control, switch, True)
        extra = {"logs": {}} if event == "on_log" else {"metrics": {}} if event == "on_evaluate" \
            else {}
        assert not getattr(getattr(handler, event)(args, state, control, **extra), switch)


def test_handler_add_pop_remove(caplog):
    with caplog.at_level(logging.WARNING, logger="cove.trainer"):
        handler = CallbackHandler([PrinterCallback], None, None, None, None)
    assert "without a DefaultFlowCallback" in caplog.text
    caplog.clear()
    printer = handler.callbacks[0]
    assert isinstance(printer, PrinterCallback)
    with caplog.at_level(logging.WARNING, logger="cove.trainer"):
        handler.add_callback(PrinterCallback())
    assert "second PrinterCallback" in caplog.text
    flow = DefaultFlowCallback()
    handler.add_callback(flow)
    assert handler.callback_list == "PrinterCallback\nPrinterCallback\nDefaultFlowCallback"
    assert handler.pop_callback(PrinterCallback) is printer
    assert handler.pop_callback(flow) is flow
    assert handler.pop_callback(flow) is None
    handler.remove_callback(PrinterCallback)
    assert handler.callbacks == []
    with pytest.raises(TypeError, match="TrainerCallback instances or classes"):
        handler.add_callback(print)


# --- early stopping ----------------------------------------------------------------------

@pytest.mark.parametrize(("greater", "metric", "values"), [
    (False, "loss", [1.0, 0.9, 0.95, 0.91, 0.89, 0.9, 0.9, 0.9, 0.5]),
    (True, "accuracy", [0.5, 0.6, 0.6, 0.605, 0.7, 0.69, 0.68, 0.8, 0.8, 0.79]),
])
@pytest.mark.parametrize(("patience", "threshold"), [(1, 0.0), (2, 0.0), (2, 0.02), (3, 0.001)])
def test_early_stopping_decides_as_transformers(greater, metric, values, patience, threshold):
    def run(lib, args):
        callback = lib.EarlyStoppingCallback(patience, threshold)
        state, control = lib.TrainerState(), lib.TrainerControl()
        callback.on_train_begin(args, state, control)
        decisions = []
        for value in values:
            callback.on_evaluate(args, state, control, metrics={f"eval_{metric}": value})
            decisions.append((callback.early_stopping_patience_counter,
                              control.should_training_stop))
            # what the Trainer then does with the metric
            if state.best_metric is None or (value > state.best_metric if greater
                                             else value < state.best_metric):
                state.best_metric = value
        return decisions

    kwargs = {"eval_strategy": "epoch", "save_strategy": "epoch", "load_best_model_at_end": True,
              "metric_for_best_model": metric}
    expected = run(tf_callbacks, reference_args(**kwargs))
    assert run(cove_callbacks, TrainingArguments(**kwargs)) == expected
    assert any(stop for _, stop in expected) or patience > 1


def test_early_stopping_needs_a_metric_and_evaluations(caplog):
    callback = EarlyStoppingCallback(2)
    state, control = TrainerState(), TrainerControl()
    with pytest.raises(ValueError, match="requires metric_for_best_model"):
        callback.on_train_begin(TrainingArguments(eval_strategy="epoch"), state, control)
    with pytest.raises(ValueError, match="requires an eval_strategy"):
        callback.on_train_begin(TrainingArguments(metric_for_best_model="loss"), state, control)
    with caplog.at_level(logging.WARNING, logger="cove.trainer"):
        callback.on_train_begin(TrainingArguments(eval_strategy="epoch",
                                                  metric_for_best_model="loss"), state, control)
        assert "without load_best_model_at_end" in caplog.text
        callback.on_evaluate(TrainingArguments(eval_strategy="epoch",
                                               metric_for_best_model="f1"), state, control,
                             metrics={"eval_loss": 1.0})
        assert "needs the metric eval_f1" in caplog.text
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="early_stopping_patience must be a positive"):
            EarlyStoppingCallback(bad)
    with pytest.raises(ValueError, match="early_stopping_threshold must be >= 0"):
        EarlyStoppingCallback(1, -0.1)


# --- progress, printing, log files -------------------------------------------------------

def test_progress_bar_on_process_zero_only(capsys):
    args, control = TrainingArguments(), TrainerControl()
    state = TrainerState(max_steps=4)
    progress = ProgressCallback(max_str_len=10)
    progress.on_train_begin(args, state, control)
    for step in (1, 2, 3):
        state.global_step = step
        progress.on_step_end(args, state, control)
    assert progress.training_bar.n == 3 and progress.training_bar.total == 4
    progress.on_log(args, state, control, logs={"loss": 0.123456, "note": "x" * 20,
                                                "total_flos": 1.0, "step": 3})
    for _ in range(2):
        progress.on_prediction_step(args, state, control, eval_dataloader=[0, 1, 2])
    assert progress.prediction_bar.n == 2 and progress.prediction_bar.total == 3
    progress.on_prediction_step(args, state, control, eval_dataloader=iter([]))  # no length
    progress.on_evaluate(args, state, control)
    assert progress.prediction_bar is None
    progress.on_train_end(args, state, control)
    assert progress.training_bar is None
    out = capsys.readouterr().out
    assert "{'loss': '0.1235', 'note': '[String too long to display, length: 20 > 10." in out
    assert "total_flos" not in out

    other = TrainerState(max_steps=4, is_world_process_zero=False)
    quiet = ProgressCallback()
    quiet.on_train_begin(args, other, control)
    quiet.on_step_end(args, other, control)
    quiet.on_log(args, other, control, logs={"loss": 1.0})
    assert quiet.training_bar is None and capsys.readouterr().out == ""


def test_printer_prints_as_transformers(capsys):
    logs = {"loss": 0.123456, "learning_rate": 5e-05, "epoch": 1.0, "total_flos": 3.0, "step": 2}
    args, state, control = TrainingArguments(), TrainerState(), TrainerControl()
    tf_callbacks.PrinterCallback().on_log(args, state, control, logs=dict(logs))
    theirs = capsys.readouterr().out
    mine = dict(logs)
    PrinterCallback().on_log(args, state, control, logs=mine)
    assert capsys.readouterr().out == theirs
    assert mine == logs  # left for the other callbacks as it was
    PrinterCallback().on_log(args, TrainerState(is_local_process_zero=False), control, logs=logs)
    assert capsys.readouterr().out == ""


def test_log_history_jsonl_follows_the_state(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path / "run"))
    path = tmp_path / "run" / "log_history.jsonl"
    state, control = TrainerState(), TrainerControl()
    callback = LogHistoryJsonlCallback()
    callback.on_train_begin(args, state, control)
    assert path.read_text() == ""
    for step, loss in ((1, 2.5), (2, 2.25)):
        state.global_step = step
        state.log_history.append({"loss": loss, "epoch": step / 4, "step": step})
        callback.on_log(args, state, control, logs={"loss": loss})
    callback.on_log(args, state, control, logs={})  # nothing new: nothing written
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == state.log_history

    # a resumed run starts from the checkpoint's history, whatever the file had
    resumed = TrainerState(log_history=state.log_history[:1])
    fresh = LogHistoryJsonlCallback()
    fresh.on_train_begin(args, resumed, control)
    resumed.log_history.append({"eval_loss": 1.0, "step": 2})
    fresh.on_log(args, resumed, control, logs={"eval_loss": 1.0})
    assert [json.loads(line) for line in path.read_text().splitlines()] == resumed.log_history

    other = TrainerState(is_world_process_zero=False, log_history=[{"loss": 1.0, "step": 1}])
    elsewhere = TrainingArguments(output_dir=str(tmp_path / "rank1"))
    LogHistoryJsonlCallback().on_train_begin(elsewhere, other, control)
    LogHistoryJsonlCallback().on_log(elsewhere, other, control, logs={})
    assert not (tmp_path / "rank1").exists()


class FakeWriter:
    def __init__(self):
        self.scalars, self.texts, self.closed, self.flushes = [], [], False, 0

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def add_text(self, tag, text, step=None):
        self.texts.append((tag, step))

    def flush(self):
        self.flushes += 1

    def close(self):
        self.closed = True


def test_tensorboard_tags_as_transformers(caplog):
    from transformers.integrations.integration_utils import rewrite_logs

    logs = {"loss": 1.5, "eval_loss": 1.2, "test_accuracy": 0.5, "epoch": 1, "note": "hi",
            "bad": [1, 2]}
    assert cove_callbacks.rewrite_logs(logs) == rewrite_logs(logs)
    writer = FakeWriter()
    callback = TensorBoardCallback(tb_writer=writer)
    args, control = TrainingArguments(), TrainerControl()
    state = TrainerState(global_step=7)
    model = type("M", (), {"config": transformers.BertConfig(hidden_size=8)})()
    callback.on_train_begin(args, state, control, model=model)
    assert [tag for tag, _ in writer.texts] == ["args", "model_config"]
    with caplog.at_level(logging.WARNING, logger="cove.trainer"):
        callback.on_log(args, state, control, logs=logs)
    assert writer.scalars == [("train/loss", 1.5, 7), ("eval/loss", 1.2, 7),
                              ("test/accuracy", 0.5, 7), ("train/epoch", 1, 7)]
    assert ("train/note", 7) in writer.texts and "train/bad" in caplog.text
    assert writer.flushes == 1
    callback.on_log(args, TrainerState(is_world_process_zero=False), control, logs=logs)
    assert len(writer.scalars) == 4
    callback.on_train_end(args, state, control)
    assert writer.closed and callback.tb_writer is None


def test_tensorboard_writes_events_or_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", str(tmp_path / "tb"))
    args = TrainingArguments(output_dir=str(tmp_path))
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(ImportError, match="needs the tensorboard package: pip install"):
            TensorBoardCallback()
        with pytest.raises(ImportError, match="needs the tensorboard package"):
            cove_callbacks.get_reporting_integration_callbacks("tensorboard")[0]()
        return
    callback = TensorBoardCallback()
    state, control = TrainerState(global_step=1), TrainerControl()
    callback.on_train_begin(args, state, control)
    callback.on_log(args, state, control, logs={"loss": 1.0})
    callback.on_train_end(args, state, control)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_reporting_callbacks_by_name():
    assert cove_callbacks.get_reporting_integration_callbacks("none") == []
    assert cove_callbacks.get_reporting_integration_callbacks(["tensorboard"]) == [
        TensorBoardCallback]
    with pytest.raises(ValueError, match="Cove does not report to mlflow"):
        cove_callbacks.get_reporting_integration_callbacks("mlflow")
