"""Learning-rate schedules step by step, and the optimizer's parameter groups, against transformers."""

from __future__ import annotations

import io
import warnings

import pytest
import torch

from cove.trainer import TrainingArguments, create_optimizer, get_decay_parameter_names
from cove.trainer import optimization as cove_optimization

transformers = pytest.importorskip("transformers")
tf_optimization = pytest.importorskip("transformers.optimization")

STEPS = 50


def learning_rates(make, lr: float = 1e-3) -> list[float]:
    """The learning rate of each of STEPS steps, of the schedule `make(optimizer)` builds."""
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([param], lr=lr)
    scheduler = make(optimizer)
    rates = []
    for _ in range(STEPS):
        rates.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return rates


CASES = [  # (name, warmup, total, kwargs)
    *[("linear", w, t, {}) for w in (0, 1, 5, 20) for t in (10, 40, 50)],
    *[("cosine", w, t, kw) for w in (0, 3, 10) for t in (30, 50)
      for kw in ({}, {"num_cycles": 1.0}, {"num_cycles": 2.25})],
    *[("cosine_with_restarts", w, 50, {"num_cycles": c}) for w in (0, 4) for c in (1, 2, 3, 5)],
    *[("polynomial", w, t, kw) for w in (0, 6) for t in (25, 50)
      for kw in ({}, {"power": 2.0}, {"power": 0.5, "lr_end": 1e-4}, {"lr_end": 5e-4})],
    ("constant", None, None, {}),
    *[("constant_with_warmup", w, None, {}) for w in (0, 1, 7, 60)],
    *[("inverse_sqrt", w, None, kw) for w in (0, 5, 20) for kw in ({}, {"timescale": 3})],
    *[("cosine_with_min_lr", w, 50, kw) for w in (0, 8)
      for kw in ({"min_lr": 1e-5}, {"min_lr_rate": 0.1, "num_cycles": 1.5})],
    *[("cosine_warmup_with_min_lr", w, t, kw) for w in (0, 1, 8) for t in (30, 50)
      for kw in ({"min_lr_rate": 0.05}, {"min_lr": 2e-4, "warmup_lr_rate": 0.1})],
    *[("warmup_stable_decay", w, t, kw) for w in (0, 5) for t in (40, 50, None)
      for kw in ({"num_decay_steps": 10, **({"num_stable_steps": 20} if t is None else {})},
                 {"num_decay_steps": 15, "warmup_type": "cosine", "decay_type": "1-sqrt",
                  "min_lr_ratio": 0.1, "num_stable_steps": 12},
                 {"num_decay_steps": 8, "warmup_type": "1-sqrt", "decay_type": "linear",
                  "num_stable_steps": 10})],
]


@pytest.mark.parametrize(("name", "warmup", "total", "kwargs"), CASES)
def test_get_scheduler_rates_equal_transformers(name, warmup, total, kwargs):
    def build(get_scheduler):
        def make(optimizer):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # both warn when wsd gets both step counts
                return get_scheduler(name, optimizer, num_warmup_steps=warmup,
                                     num_training_steps=total,
                                     scheduler_specific_kwargs=dict(kwargs))
        return make

    ours = learning_rates(build(cove_optimization.get_scheduler))
    theirs = learning_rates(build(tf_optimization.get_scheduler))
    assert len(ours) == STEPS
    assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) <= 1e-12


@pytest.mark.parametrize("function", [
    "get_linear_schedule_with_warmup", "get_cosine_schedule_with_warmup",
    "get_cosine_with_hard_restarts_schedule_with_warmup",
    "get_polynomial_decay_schedule_with_warmup"])
def test_named_schedules_equal_transformers(function):
    ours = learning_rates(lambda o: getattr(cove_optimization, function)(o, 4, 45))
    theirs = learning_rates(lambda o: getattr(tf_optimization, function)(o, 4, 45))
    assert max(abs(a - b) for a, b in zip(ours, theirs, strict=True)) <= 1e-12
    assert ours[0] == 0.0 and ours[4] == pytest.approx(1e-3)


def test_schedule_resumes_from_its_state_dict():
    """A checkpointed schedule (torch.save of its state_dict) continues where it stopped."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = cove_optimization.get_scheduler("cosine", optimizer, 3, 20)
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    optimizer2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    resumed = cove_optimization.get_scheduler("cosine", optimizer2, 3, 20)
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    optimizer.step()
    scheduler.step()
    optimizer2.step()
    resumed.step()
    assert resumed.get_last_lr() == scheduler.get_last_lr()


def test_reduce_on_plateau_is_torchs():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = cove_optimization.get_scheduler("reduce_lr_on_plateau", optimizer,
                                                scheduler_specific_kwargs={"patience": 0})
    assert isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    scheduler.step(1.0)
    scheduler.step(2.0)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda o: cove_optimization.get_scheduler("linear", o, 2), ValueError,
     "linear requires `num_training_steps`"),
    (lambda o: cove_optimization.get_scheduler("cosine", o, num_training_steps=10), ValueError,
     "cosine requires `num_warmup_steps`"),
    (lambda o: cove_optimization.get_scheduler("nope", o, 1, 2), ValueError,
     "nope is not a valid SchedulerType"),
    (lambda o: cove_optimization.get_scheduler("greedy", o, 1, 2), ValueError,
     "Cove does not implement"),
    (lambda o: cove_optimization.get_scheduler("linear", o, 1, 10, {"power": 2}), TypeError,
     "power"),
    (lambda o: cove_optimization.get_scheduler("polynomial", o, 1, 10, {"lr_end": 0.5}),
     ValueError, r"lr_end \(0.5\) must be smaller than initial lr"),
    (lambda o: cove_optimization.get_scheduler("cosine_with_min_lr", o, 1, 10), ValueError,
     "One of min_lr or min_lr_rate"),
    (lambda o: cove_optimization.get_scheduler("cosine_with_min_lr", o, 1, 10,
                                               {"min_lr": 1e-5, "min_lr_rate": 0.1}),
     ValueError, "Only one of min_lr or min_lr_rate"),
    (lambda o: cove_optimization.get_scheduler("warmup_stable_decay", o, 1, None,
                                               {"num_decay_steps": 3}),
     ValueError, "Either num_training_steps or num_stable_steps"),
    (lambda o: cove_optimization.get_scheduler("warmup_stable_decay", o, 1, 10,
                                               {"num_decay_steps": 3, "decay_type": "exp"}),
     ValueError, "Unknown decay type: exp"),
])
def test_schedule_errors(call, error, message):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    with pytest.raises(error, match=message):
        call(optimizer)


# --- the optimizer ------------------------------------------------------------------------

def tiny_models():
    """Cove's and transformers' BERT and Llama classes on tiny configs."""
    import cove.models as cove_models

    bert = {"vocab_size": 40, "hidden_size": 16, "num_hidden_layers": 2,
            "num_attention_heads": 2, "intermediate_size": 20, "max_position_embeddings": 32}
    llama = {"vocab_size": 40, "hidden_size": 16, "num_hidden_layers": 2,
             "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 20,
             "max_position_embeddings": 32, "attention_bias": True, "mlp_bias": True}
    return {
        "cove-bert-cls": cove_models.BertForSequenceClassification(
            cove_models.BertConfig(**bert, num_labels=3)),
        "cove-bert-mlm": cove_models.BertForMaskedLM(cove_models.BertConfig(**bert)),
        "cove-llama": cove_models.LlamaForCausalLM(cove_models.LlamaConfig(**llama)),
        "tf-bert-mlm": transformers.BertForMaskedLM(transformers.BertConfig(**bert)),
        "tf-llama": transformers.LlamaForCausalLM(transformers.LlamaConfig(**llama)),
        "tf-distilbert": transformers.DistilBertForSequenceClassification(
            transformers.DistilBertConfig(vocab_size=40, dim=16, n_layers=1, n_heads=2,
                                          hidden_dim=20, max_position_embeddings=32)),
    }


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return tiny_models()


@pytest.mark.parametrize("name", ["cove-bert-cls", "cove-bert-mlm", "cove-llama", "tf-bert-mlm",
                                  "tf-llama", "tf-distilbert"])
def test_decay_parameters_are_transformers(models, name):
    model = models[name]
    ours = get_decay_parameter_names(model)
    theirs = transformers.Trainer.get_decay_parameter_names(None, model)
    assert set(ours) == set(theirs)
    no_decay = {n for n, _ in model.named_parameters()} - set(ours)
    assert no_decay and all("bias" in n or "norm" in n.lower() for n in no_decay)
    assert any(n.endswith(".weight") and "norm" not in n.lower() for n in ours)


def test_layernorm_modules_are_caught_by_type():
    model = torch.nn.Sequential()
    model.add_module("proj", torch.nn.Linear(3, 3))
    model.add_module("final", torch.nn.LayerNorm(3))  # a name without "norm"
    model.add_module("head_norm", torch.nn.Linear(3, 1))  # "_norm" component
    assert get_decay_parameter_names(model) == ["proj.weight"]
    assert set(transformers.Trainer.get_decay_parameter_names(None, model)) == {"proj.weight"}


@pytest.mark.parametrize("optim_kwargs", [
    {}, {"optim": "adamw_torch"}, {"optim": "adamw_torch_fused", "adam_beta1": 0.8,
                                   "adam_beta2": 0.95, "adam_epsilon": 1e-6},
    {"optim": "sgd"}, {"optim": "sgd", "optim_args": "momentum=0.9, nesterov=True"},
    {"optim": "adagrad", "optim_args": "lr_decay=0.01,eps=1e-5"},
    {"optim": "rmsprop", "optim_args": "alpha=0.9,centered=true,momentum=0.5"},
])
def test_optimizer_class_and_arguments_match(optim_kwargs):
    kwargs = {"learning_rate": 3e-4, "weight_decay": 0.01, **optim_kwargs}
    ours = cove_optimization.get_optimizer_cls_and_kwargs(TrainingArguments(**kwargs))
    theirs = transformers.Trainer.get_optimizer_cls_and_kwargs(
        transformers.TrainingArguments(**kwargs))
    assert ours == theirs


def test_create_optimizer_groups_and_steps_like_transformers(models, tmp_path):
    model = models["cove-bert-cls"]
    args = TrainingArguments(output_dir=str(tmp_path), weight_decay=0.1, learning_rate=1e-2)
    optimizer = create_optimizer(model, args)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"]
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in decay["params"]} == set(get_decay_parameter_names(model))
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))

    # transformers' Trainer builds the same groups on the same model
    trainer = transformers.Trainer(model=model, args=transformers.TrainingArguments(
        output_dir=str(tmp_path), weight_decay=0.1, learning_rate=1e-2, report_to="none"))
    reference = trainer.create_optimizer()
    for ours, theirs in zip(optimizer.param_groups, reference.param_groups, strict=True):
        assert [id(p) for p in ours["params"]] == [id(p) for p in theirs["params"]]
        assert {k: v for k, v in ours.items() if k != "params"} == {
            k: v for k, v in theirs.items() if k != "params"}


def test_frozen_parameters_are_left_out(models):
    model = models["cove-llama"]
    model.model.embed_tokens.weight.requires_grad_(False)
    try:
        optimizer = create_optimizer(model, TrainingArguments(optim="adamw_torch"))
        params = [p for g in optimizer.param_groups for p in g["params"]]
        assert all(p is not model.model.embed_tokens.weight for p in params)
        assert len(params) == sum(p.requires_grad for p in model.parameters())
    finally:
        model.model.embed_tokens.weight.requires_grad_(True)
    frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        create_optimizer(frozen, TrainingArguments())


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"optim": "sgd", "optim_args": "momentum"}, "optim_args must be 'key=value' pairs"),
    ({"optim": "sgd", "optim_args": "betas=0.9"}, r"optim_args \['betas'\] are not arguments "
                                                 r"of 'sgd' \(it takes"),
    ({"optim": "adamw_torch", "optim_args": "x=1"}, r"are not arguments of 'adamw_torch'$"),
    ({"optim": "rmsprop", "optim_args": "alpha=high"}, "optim_args alpha='high' is not a number"),
])
def test_optimizer_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_optimizer(torch.nn.Linear(2, 2), TrainingArguments(**kwargs))
