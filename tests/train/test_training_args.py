"""TrainingArguments against transformers 5.25's: defaults, derived values, checks, JSON."""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest

from cove.trainer import IntervalStrategy, SaveStrategy, SchedulerType, TrainingArguments
from cove.trainer import training_args as cove_training_args

transformers = pytest.importorskip("transformers")


def reference(**kwargs):
    # disable_tqdm's default follows the library logger's level: other tests may have quieted
    # transformers' (set_verbosity_error), so build the reference at its default level
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_warning()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # transformers' deprecation notes
            return transformers.TrainingArguments(**kwargs)
    finally:
        transformers.logging.set_verbosity(verbosity)


def shared(cove_args, tf_args) -> tuple[dict, dict]:
    """Both to_dict()s restricted to the fields Cove has."""
    ours = cove_args.to_dict()
    theirs = tf_args.to_dict()
    return ours, {k: theirs[k] for k in ours}


def test_fields_are_transformers_fields_or_named_as_missing():
    ours = {f.name for f in dataclasses.fields(TrainingArguments)}
    theirs = {f.name for f in dataclasses.fields(transformers.TrainingArguments) if f.init}
    assert ours <= theirs
    assert theirs - ours == cove_training_args._NOT_IMPLEMENTED
    assert not set(cove_training_args._REMOVED) & theirs


def test_defaults_match(tmp_path):
    ours, theirs = shared(TrainingArguments(), reference())
    assert ours == theirs
    assert ours["optim"] == "adamw_torch_fused" and ours["save_strategy"] == "steps"
    assert ours["logging_steps"] == 500 and ours["report_to"] == []
    assert ours["output_dir"] == "trainer_output"


@pytest.mark.parametrize("kwargs", [
    {"eval_strategy": "steps"},
    {"eval_strategy": "steps", "logging_steps": 0.1},
    {"eval_strategy": "steps", "eval_steps": 0, "logging_steps": 7},
    {"load_best_model_at_end": True, "eval_strategy": "steps", "save_steps": 1000,
     "eval_steps": 500},
    {"load_best_model_at_end": True, "eval_strategy": "epoch", "save_strategy": "epoch"},
    {"load_best_model_at_end": True, "save_strategy": "best", "eval_strategy": "epoch"},
    {"load_best_model_at_end": True, "eval_strategy": "steps", "save_steps": 0.2,
     "eval_steps": 0.1},
    {"metric_for_best_model": "accuracy"},
    {"metric_for_best_model": "eval_loss"},
    {"metric_for_best_model": "f1", "greater_is_better": False},
    {"lr_scheduler_type": "reduce_lr_on_plateau", "eval_strategy": "epoch"},
    {"logging_steps": 10.0, "save_steps": 20.0, "eval_steps": 5.0, "eval_strategy": "steps"},
    {"logging_strategy": "epoch", "logging_steps": 2.5},
    {"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": False}},
    {"activation_checkpointing": True},
    {"torch_compile_mode": "reduce-overhead"},
    {"torch_compile": True},
    {"include_num_input_tokens_seen": True},
    {"include_num_input_tokens_seen": "non_padding"},
    {"lr_scheduler_kwargs": '{"num_cycles": 3, "power": 2.0}'},
    {"lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {"min_lr": 1e-6}},
    {"report_to": "none"}, {"report_to": ["none"]},
    {"use_cpu": True}, {"bf16": True, "use_cpu": True}, {"fp16": True},
    {"output_dir": "~/runs/x", "hub_token": "secret", "run_name": "r"},
    {"warmup_steps": 0.1, "optim": "sgd", "optim_args": "momentum=0.9"},
    {"per_device_train_batch_size": 3, "gradient_accumulation_steps": 4, "max_steps": 12,
     "train_sampling_strategy": "group_by_length", "data_seed": 3},
])
def test_derived_values_match(kwargs):
    ours, theirs = TrainingArguments(**kwargs), reference(**kwargs)
    a, b = shared(ours, theirs)
    assert a == b
    assert ours.mixed_precision == theirs.mixed_precision
    assert ours.torch_compile_backend == theirs.torch_compile_backend
    assert ours.dataloader_pin_memory == theirs.dataloader_pin_memory
    for name in ("eval_steps", "logging_steps", "save_steps"):  # ints where they became ints
        assert type(getattr(ours, name)) is type(getattr(theirs, name))
    assert (ours.train_batch_size, ours.eval_batch_size) == (
        theirs.train_batch_size, theirs.eval_batch_size)


@pytest.mark.parametrize("kwargs", [
    {"load_best_model_at_end": True},
    {"load_best_model_at_end": True, "eval_strategy": "steps", "save_strategy": "epoch"},
    {"load_best_model_at_end": True, "eval_strategy": "steps", "save_steps": 750,
     "eval_steps": 500},
    {"load_best_model_at_end": True, "eval_strategy": "steps", "save_steps": 0.3,
     "eval_steps": 0.2},
    {"load_best_model_at_end": True, "eval_strategy": "steps", "save_steps": 0.5,
     "eval_steps": 3},
    {"fp16": True, "bf16": True},
    {"bf16": True},  # on a machine without a bf16 GPU
    {"logging_steps": 0},
    {"logging_steps": 2.5},
    {"eval_strategy": "steps", "eval_steps": 7.5},
    {"save_steps": 1.5},
    {"eval_strategy": "steps", "logging_steps": 0, "logging_strategy": "no"},
    {"lr_scheduler_type": "reduce_lr_on_plateau"},
    {"lr_scheduler_type": "not_a_schedule"},
    {"eval_strategy": "sometimes"},
    {"save_strategy": "always"},
    {"optim": "adamw_nope"},
    {"warmup_steps": -1},
    {"dataloader_prefetch_factor": 2},
    {"lr_scheduler_kwargs": "{not json"},
])
def test_invalid_combinations_fail_as_in_transformers(kwargs):
    with pytest.raises(ValueError):
        reference(**kwargs)
    with pytest.raises(ValueError):
        TrainingArguments(**kwargs)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"per_device_train_batch_size": 0}, "per_device_train_batch_size must be a positive"),
    ({"per_device_eval_batch_size": -2}, "per_device_eval_batch_size must be a positive"),
    ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps must be a positive"),
    ({"learning_rate": -1e-3}, "learning_rate must be >= 0"),
    ({"num_train_epochs": -1}, "num_train_epochs must be >= 0"),
    ({"adam_beta2": 1.0}, r"adam_beta2 must be in \[0, 1\)"),
    ({"max_grad_norm": -1}, "max_grad_norm must be >= 0"),
    ({"save_steps": -5}, "save_steps must be positive"),
    ({"lr_scheduler_type": "greedy"}, "'greedy' is a transformers SchedulerType that Cove "
                                      "does not implement"),
    ({"optim": "adafactor"}, "'adafactor' is a transformers OptimizerNames that Cove does not"),
    ({"report_to": "wandb"}, "Cove does not report to wandb"),
    ({"report_to": ["tensorboard", "nope"]}, "report_to has 'nope'"),
    ({"train_sampling_strategy": "batch_rebalance"}, "'batch_rebalance' is not implemented"),
    ({"include_num_input_tokens_seen": "some"}, "include_num_input_tokens_seen must be"),
    ({"label_names": "labels"}, "label_names must be a list"),
    ({"lr_scheduler_kwargs": "[1, 2]"}, "lr_scheduler_kwargs must be a dict"),
])
def test_cove_refuses_more_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainingArguments(**kwargs)


@pytest.mark.parametrize(("name", "message"), [
    ("warmup_ratio", "transformers 5 removed it; use warmup_steps"),
    ("evaluation_strategy", "use eval_strategy"),
    ("group_by_length", "train_sampling_strategy='group_by_length'"),
    ("logging_dir", "TENSORBOARD_LOGGING_DIR"),
    ("deepspeed", "transformers 5.25 has it, Cove does not implement it"),
    ("label_smoothing_factor", "Cove does not implement it"),
    ("no_such_argument", r"unexpected keyword argument 'no_such_argument'$"),
])
def test_unknown_arguments_say_why(name, message):
    with pytest.raises(TypeError, match=message):
        TrainingArguments(**{name: 1})


def test_report_to_none_means_no_tracker():
    # (transformers 5.25 makes None into [None], which its Trainer then fails on)
    assert TrainingArguments(report_to=None).report_to == []


def test_enums_accept_strings_and_compare_equal():
    args = TrainingArguments(eval_strategy="epoch", save_strategy=SaveStrategy.BEST,
                             lr_scheduler_type="cosine")
    assert args.eval_strategy is IntervalStrategy.EPOCH and args.eval_strategy == "epoch"
    assert args.save_strategy is SaveStrategy.BEST
    assert args.lr_scheduler_type is SchedulerType.COSINE
    # the same values as transformers' enums
    assert {e.value for e in SchedulerType} == {
        e.value for e in transformers.SchedulerType} - {"greedy"}
    assert [e.value for e in SaveStrategy] == [
        e.value for e in transformers.trainer_utils.SaveStrategy]


@pytest.mark.parametrize("warmup", [0, 0.0, 0.1, 0.25, 0.999, 1, 1.0, 7, 12.0, 250])
def test_get_warmup_steps_matches(warmup):
    ours, theirs = TrainingArguments(warmup_steps=warmup), reference(warmup_steps=warmup)
    for total in (1, 10, 33, 1000):
        assert ours.get_warmup_steps(total) == theirs.get_warmup_steps(total)


def test_processes_come_from_the_launcher(monkeypatch):
    args = TrainingArguments()
    assert (args.world_size, args.process_index, args.local_process_index) == (1, 0, 0)
    assert args.should_log and args.should_save
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert (args.world_size, args.process_index, args.local_process_index) == (4, 3, 1)
    assert not args.should_log and not args.should_save
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert args.should_log and not args.should_save  # logs once per node, saves on rank 0 only
    assert TrainingArguments(save_on_each_node=True).should_save
    assert not TrainingArguments(log_on_each_node=False).should_log
    monkeypatch.setenv("RANK", "two")
    with pytest.raises(ValueError, match=r"RANK='two' is not an integer"):
        _ = args.process_index


def test_json_round_trip_hides_the_token():
    args = TrainingArguments(output_dir="out", hub_token="hf_secret", eval_strategy="steps",
                             eval_steps=0.25, lr_scheduler_kwargs={"num_cycles": 2},
                             report_to="none", label_names=["labels", "aux"])
    text = args.to_json_string()
    assert "hf_secret" not in text and "hf_secret" not in repr(args)
    data = json.loads(text)
    assert data["hub_token"] == "<HUB_TOKEN>" and data["eval_strategy"] == "steps"
    data["hub_token"] = "hf_secret"
    assert TrainingArguments(**data) == args
    assert json.loads(text) == {k: v for k, v in json.loads(reference(
        output_dir="out", hub_token="hf_secret", eval_strategy="steps", eval_steps=0.25,
        lr_scheduler_kwargs={"num_cycles": 2}, report_to="none",
        label_names=["labels", "aux"]).to_json_string()).items() if k in data}


def test_replace_and_subclass_keep_the_checks():
    args = TrainingArguments(eval_strategy="steps")
    assert dataclasses.replace(args, logging_steps=10).eval_steps == 500  # kept as given

    @dataclasses.dataclass
    class MyArgs(TrainingArguments):
        extra: int = 1

    assert MyArgs(extra=3, learning_rate=1e-3).extra == 3
    with pytest.raises(TypeError, match="use warmup_steps"):
        MyArgs(warmup_ratio=0.1)
    with pytest.raises(ValueError, match="positive integer"):
        dataclasses.replace(args, per_device_train_batch_size=0)
