"""cove.trainer.Trainer against transformers.Trainer (5.25) and against the math.

Tiny random models are saved by transformers and loaded by each library, so both start from
the same weights; dropout is off where curves are compared, so every step's loss, learning
rate and gradient norm must agree.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from cove.models import AutoModelForCausalLM, AutoModelForSequenceClassification
from cove.trainer import (
    EarlyStoppingCallback,
    EvalPrediction,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

transformers = pytest.importorskip("transformers")

QUIET = {"report_to": "none", "disable_tqdm": True, "use_cpu": True}


# -- tiny models and data (shared with the other test_trainer_* files) -----------------------

def save_tiny_bert(folder, dropout: float = 0.0) -> str:
    config = transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, max_position_embeddings=64, num_labels=3,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    return str(folder)


def save_tiny_llama(folder) -> str:
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64, pad_token_id=0)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return str(folder)


def classification_data(n: int, seed: int = 1, extra_column: bool = True) -> list[dict]:
    """Padded rows of random tokens with a label the first token decides (learnable)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(4, 12, (1,), generator=g))
        ids = torch.randint(5, 64, (12,), generator=g)
        ids[length:] = 0
        row = {"input_ids": ids.tolist(), "attention_mask": [1] * length + [0] * (12 - length),
               "labels": int(ids[0]) % 3}
        if extra_column:
            row["text"] = "dropped by remove_unused_columns"
        rows.append(row)
    return rows


def lm_data(n: int, seed: int = 1) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(1, 64, (int(torch.randint(3, 14, (1,), generator=g)),),
                                        generator=g).tolist()} for _ in range(n)]


def pad_lm(features: list[dict]) -> dict[str, torch.Tensor]:
    """Right-padded causal LM batches: labels are the ids, -100 on padding."""
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.zeros(len(features), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, f in enumerate(features):
        ids[i, : len(f["input_ids"])] = torch.tensor(f["input_ids"])
        mask[i, : len(f["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def accuracy(p: EvalPrediction) -> dict:
    return {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}


def curve(trainer, after: int = 0, keys=("loss", "learning_rate", "grad_norm")) -> np.ndarray:
    """Each logged step's values (after step `after`: a resumed run's history has the
    checkpoint's steps first)."""
    return np.array([[e[k] for k in keys] for e in trainer.state.log_history
                     if "loss" in e and e["step"] > after])


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> str:
    return save_tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> str:
    return save_tiny_llama(tmp_path_factory.mktemp("llama"))


# -- the curves ----------------------------------------------------------------------------

def test_classifier_curve_and_evaluation_equal_transformers(bert, tmp_path):
    """Full batches (the order cannot matter), cosine with warmup, weight decay, clipping;
    evaluation every 5 steps with compute_metrics: the same numbers as transformers."""
    train, test = classification_data(16), classification_data(10, seed=2)
    common = dict(per_device_train_batch_size=16, per_device_eval_batch_size=4, max_steps=20,
                  learning_rate=1e-3, lr_scheduler_type="cosine", warmup_steps=5,
                  weight_decay=0.1, max_grad_norm=0.5, logging_steps=1, eval_strategy="steps",
                  eval_steps=5, save_strategy="no", **QUIET)
    reference = transformers.Trainer(
        transformers.AutoModelForSequenceClassification.from_pretrained(bert),
        transformers.TrainingArguments(str(tmp_path / "ref"), **common), train_dataset=train,
        eval_dataset=test, compute_metrics=accuracy)
    reference.train()
    ours = Trainer(AutoModelForSequenceClassification.from_pretrained(bert),
                   TrainingArguments(str(tmp_path / "ours"), **common), train_dataset=train,
                   eval_dataset=test, compute_metrics=accuracy)
    result = ours.train()

    expected, got = curve(reference), curve(ours)
    assert got.shape == (20, 3)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    assert got[0, 1] == 0.0  # the rate step 1 used: 0 under warmup, as transformers logs
    evals = [[e["eval_loss"], e["eval_accuracy"], e["step"]] for e in ours.state.log_history
             if "eval_loss" in e]
    expected_evals = [[e["eval_loss"], e["eval_accuracy"], e["step"]]
                      for e in reference.state.log_history if "eval_loss" in e]
    assert len(evals) == 4
    np.testing.assert_allclose(evals, expected_evals, atol=1e-5)
    assert result.global_step == 20
    assert result.training_loss == pytest.approx(reference.state.log_history[-1]["train_loss"],
                                                  abs=1e-6)

    # predict: the same logits, the labels, test_ metrics
    ours_pred, ref_pred = ours.predict(test), reference.predict(test)
    np.testing.assert_allclose(ours_pred.predictions, ref_pred.predictions, atol=1e-5)
    np.testing.assert_array_equal(ours_pred.label_ids, [r["labels"] for r in test])
    assert ours_pred.metrics["test_loss"] == pytest.approx(ref_pred.metrics["test_loss"],
                                                           abs=1e-5)
    assert "test_accuracy" in ours_pred.metrics

    # log_history.jsonl mirrors state.log_history
    lines = (tmp_path / "ours" / "log_history.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == ours.state.log_history


def test_causal_lm_accumulation_equals_full_batch_and_transformers(llama, tmp_path):
    """Padded examples of different lengths, shuffled over 3 epochs: 4 micro-batches of 2
    accumulated give the curve of batches of 8 (loss = token NLL sum / label tokens of the
    whole batch), and transformers' curves (right for causal LMs)."""
    data = lm_data(16)

    def args(folder, batch, accumulation):
        return dict(output_dir=str(tmp_path / folder), per_device_train_batch_size=batch,
                    gradient_accumulation_steps=accumulation, num_train_epochs=3,
                    learning_rate=3e-3, lr_scheduler_type="cosine", warmup_steps=0.2,
                    weight_decay=0.1, logging_steps=1, save_strategy="no", seed=3, **QUIET)

    curves = {}
    for batch, accumulation in ((8, 1), (2, 4)):
        ours = Trainer(AutoModelForCausalLM.from_pretrained(llama),
                       TrainingArguments(**args(f"ours{batch}", batch, accumulation)),
                       train_dataset=data, data_collator=pad_lm)
        ours.train()
        reference = transformers.Trainer(
            transformers.AutoModelForCausalLM.from_pretrained(llama),
            transformers.TrainingArguments(**args(f"ref{batch}", batch, accumulation)),
            train_dataset=data, data_collator=pad_lm)
        reference.train()
        curves[batch] = curve(ours)
        assert curves[batch].shape == (6, 3)
        np.testing.assert_allclose(curves[batch], curve(reference), rtol=0, atol=1e-5)
    np.testing.assert_allclose(curves[2], curves[8], rtol=0, atol=1e-5)


def test_classifier_accumulation_is_the_full_batch_math(bert, tmp_path):
    """A per-example mean loss: 4 x 4 accumulated equals 1 x 16 (gradients and logged loss).
    transformers 5.25 is wrong here (reference-notes): BERT's forward takes **kwargs, so it
    skips dividing by the accumulation steps and logs about 4x the loss; we compare with the
    math and show its error."""
    data = classification_data(16)

    def run(batch, accumulation, library):
        kwargs = dict(output_dir=str(tmp_path / f"{library.__name__}{batch}"),
                      per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                      max_steps=4, learning_rate=1e-3, logging_steps=1, save_strategy="no",
                      seed=7, **QUIET)
        if library is transformers:
            trainer = transformers.Trainer(
                transformers.AutoModelForSequenceClassification.from_pretrained(bert),
                transformers.TrainingArguments(**kwargs), train_dataset=data)
        else:
            trainer = Trainer(AutoModelForSequenceClassification.from_pretrained(bert),
                              TrainingArguments(**kwargs), train_dataset=data)
        trainer.train()
        return curve(trainer)

    import cove

    full, accumulated = run(16, 1, cove), run(4, 4, cove)
    np.testing.assert_allclose(accumulated, full, rtol=0, atol=1e-5)
    np.testing.assert_allclose(run(16, 1, transformers), full, rtol=0, atol=1e-5)
    wrong = run(4, 4, transformers)
    assert wrong[0, 0] == pytest.approx(4 * full[0, 0], rel=1e-4)  # its logged loss: 4x


# -- checkpoints, best model, callbacks -------------------------------------------------------

class Record(TrainerCallback):
    def __init__(self):
        self.events = []

    def on_save(self, args, state, control, **kwargs):
        self.events.append(("save", state.global_step))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        # before the Trainer updates the best metric (EarlyStoppingCallback relies on it)
        self.events.append(("evaluate", state.global_step, state.best_metric))


def test_checkpoints_rotation_best_model_and_transformers_loading(bert, tmp_path):
    out = tmp_path / "out"
    record = Record()
    trainer = Trainer(
        AutoModelForSequenceClassification.from_pretrained(bert),
        TrainingArguments(str(out), per_device_train_batch_size=4, max_steps=12,
                          learning_rate=5e-3, eval_strategy="steps", eval_steps=2, save_steps=2,
                          save_total_limit=2, load_best_model_at_end=True,
                          metric_for_best_model="accuracy", logging_steps=2, **QUIET),
        train_dataset=classification_data(16), eval_dataset=classification_data(8, seed=5),
        compute_metrics=accuracy, callbacks=[record])
    trainer.train()

    state = trainer.state
    best = state.best_model_checkpoint
    assert best is not None and state.best_global_step == int(best.rsplit("-", 1)[1])
    kept = sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-"))
    assert f"checkpoint-{state.best_global_step}" in kept and "checkpoint-12" in kept
    assert len(kept) <= 3 and len(kept) == len({*kept})  # the limit, the best and the last
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary folders
    assert [e for e in record.events if e[0] == "save"] == [("save", s) for s in range(2, 13, 2)]
    first_eval = next(e for e in record.events if e[0] == "evaluate")
    assert first_eval[2] is None

    folder = out / "checkpoint-12"
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth",
            "trainer_state.json", "training_args.json", "dataloader_state.json"} <= names
    saved = json.loads((folder / "trainer_state.json").read_text())
    assert saved["global_step"] == 12 and saved["best_model_checkpoint"] == best
    reference_state = transformers.TrainerState.load_from_json(str(folder / "trainer_state.json"))
    assert reference_state.global_step == 12
    assert json.loads((folder / "dataloader_state.json").read_text())["batches_taken"] == 4

    # the best model is what training leaves; transformers loads a checkpoint to the same outputs
    batch = {k: torch.tensor([r[k] for r in classification_data(3, seed=9)])
             for k in ("input_ids", "attention_mask")}
    theirs = transformers.AutoModelForSequenceClassification.from_pretrained(best).eval()
    trainer.model.eval()
    with torch.no_grad():
        np.testing.assert_allclose(trainer.model(**batch).logits, theirs(**batch).logits,
                                   atol=1e-6)


def test_transformers_checkpoint_resumes_in_cove_and_back(bert, tmp_path):
    """A transformers Trainer checkpoint (shuffled batches, mid-epoch) resumes in Cove's
    Trainer: the rest of the curve is transformers' uninterrupted one; and transformers
    resumes from Cove's checkpoint the same way."""
    data = classification_data(24)
    common = dict(per_device_train_batch_size=4, num_train_epochs=2, learning_rate=5e-3,
                  lr_scheduler_type="linear", warmup_steps=2, weight_decay=0.05,
                  logging_steps=1, save_steps=4, seed=11, **QUIET)
    reference = transformers.Trainer(
        transformers.AutoModelForSequenceClassification.from_pretrained(bert),
        transformers.TrainingArguments(str(tmp_path / "ref"), **common), train_dataset=data)
    reference.train()
    full = curve(reference)
    assert full.shape == (12, 3)

    ours = Trainer(AutoModelForSequenceClassification.from_pretrained(bert),
                   TrainingArguments(str(tmp_path / "ours"), **common), train_dataset=data)
    ours.train(resume_from_checkpoint=str(tmp_path / "ref" / "checkpoint-4"))
    assert len(curve(ours)) == 12  # the checkpoint's history, then the resumed steps
    np.testing.assert_allclose(curve(ours, after=4), full[4:], rtol=0, atol=1e-5)

    back = transformers.Trainer(
        transformers.AutoModelForSequenceClassification.from_pretrained(bert),
        transformers.TrainingArguments(str(tmp_path / "back"), **common), train_dataset=data)
    back.train(resume_from_checkpoint=str(tmp_path / "ours" / "checkpoint-8"))
    np.testing.assert_allclose(curve(back, after=8), full[8:], rtol=0, atol=1e-5)


def test_early_stopping_and_cove_datasets_columns(bert, tmp_path):
    """remove_unused_columns on a cove.datasets Dataset and an HF datasets one; early stopping
    stops on patience."""
    from cove.datasets import Dataset

    datasets = pytest.importorskip("datasets")
    rows = classification_data(16)
    train = Dataset.from_list(rows)
    assert "text" in train.column_names

    class Dummy(TrainerCallback):
        pass

    trainer = Trainer(
        AutoModelForSequenceClassification.from_pretrained(bert),
        TrainingArguments(str(tmp_path / "es"), per_device_train_batch_size=8, max_steps=40,
                          learning_rate=0.0, eval_strategy="steps", eval_steps=2,
                          save_strategy="steps", save_steps=2, load_best_model_at_end=True,
                          **QUIET),
        train_dataset=train, eval_dataset=datasets.Dataset.from_list(rows[:4]),
        callbacks=[EarlyStoppingCallback(early_stopping_patience=2), Dummy()])
    trainer.train()
    # lr 0: the loss never improves, so training stops after 1 + 2 evaluations
    assert trainer.state.global_step == 6
    assert trainer.pop_callback(Dummy) is not None
    assert trainer.pop_callback(Dummy) is None


def test_gradient_checkpointing_keeps_the_curve(llama, tmp_path):
    """gradient_checkpointing=True recomputes the blocks in the backward: same losses."""
    curves = []
    for checkpointing in (False, True):
        model = AutoModelForCausalLM.from_pretrained(llama)
        trainer = Trainer(model, TrainingArguments(
            str(tmp_path / str(checkpointing)), per_device_train_batch_size=4, max_steps=4,
            logging_steps=1, gradient_checkpointing=checkpointing, **QUIET),
            train_dataset=lm_data(8), data_collator=pad_lm)
        trainer.train()
        assert model.is_gradient_checkpointing == checkpointing
        curves.append(curve(trainer))
    np.testing.assert_allclose(curves[1], curves[0], rtol=1e-5, atol=1e-6)


# -- clear errors -------------------------------------------------------------------------------

def test_clear_errors(bert, tmp_path):
    model = AutoModelForSequenceClassification.from_pretrained(bert)
    trainer = Trainer(model, TrainingArguments(str(tmp_path / "e"), max_steps=1, **QUIET),
                      train_dataset=classification_data(4))
    with pytest.raises(ValueError, match="evaluation requires an eval_dataset"):
        trainer.evaluate()
    with pytest.raises(ValueError, match="No valid checkpoint found in output directory"):
        trainer.train(resume_from_checkpoint=True)
    (tmp_path / "not-a-checkpoint").mkdir()
    with pytest.raises(ValueError, match="is not a Trainer checkpoint .no trainer_state.json"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "not-a-checkpoint"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="does not support activation checkpointing"):
        Trainer(torch.nn.Linear(2, 2), TrainingArguments(str(tmp_path / "gc"), max_steps=1,
                                                         gradient_checkpointing=True, **QUIET),
                train_dataset=classification_data(4)).train()
    with pytest.raises(ValueError, match="No columns in the training dataset match"):
        from cove.datasets import Dataset

        Trainer(model, TrainingArguments(str(tmp_path / "cols"), max_steps=1, **QUIET),
                train_dataset=Dataset.from_list([{"words": "a"}] * 4)).train()
    from cove.models import AutoModel

    with pytest.raises(ValueError, match="only computes hidden states"):
        Trainer(AutoModel.from_pretrained(bert), TrainingArguments(str(tmp_path / "m"), **QUIET))
    with pytest.raises(ValueError, match="training requires a train_dataset"):
        Trainer(model, TrainingArguments(str(tmp_path / "t"), **QUIET)).train()
    assert not os.path.exists(tmp_path / "e" / "checkpoint-1")


# -- precision, sampling, evaluation sets, reporting ------------------------------------------

@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_autocast(llama, tmp_path, precision):
    """bf16/fp16 autocast through the Accelerator: master weights stay float32, losses follow
    the float32 run closely, evaluation runs under the same autocast."""
    data = lm_data(16)

    def run(name, **extra):
        trainer = Trainer(AutoModelForCausalLM.from_pretrained(llama),
                          TrainingArguments(str(tmp_path / name), per_device_train_batch_size=4,
                                            max_steps=4, learning_rate=3e-3, logging_steps=1,
                                            save_strategy="no", **extra, **QUIET),
                          train_dataset=data, eval_dataset=data[:4], data_collator=pad_lm)
        trainer.train()
        return trainer

    reduced, full = run(precision, **{precision: True}), run("fp32")
    assert reduced.accelerator.mixed_precision == precision
    assert all(p.dtype == torch.float32 for p in reduced.model.parameters())
    np.testing.assert_allclose(curve(reduced)[:, 0], curve(full)[:, 0], rtol=3e-2)
    assert reduced.evaluate()["eval_loss"] == pytest.approx(full.evaluate()["eval_loss"],
                                                            rel=3e-2)


def test_length_grouped_sampler_is_seeded_per_epoch():
    from cove.trainer.samplers import LengthGroupedSampler, SeededRandomSampler

    lengths = [int(n) for n in torch.randint(1, 200, (400,), generator=torch.Generator()
                                             .manual_seed(0))]
    sampler = LengthGroupedSampler(8, lengths, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(400)) and first == list(sampler)  # a pass repeats
    assert lengths[first[0]] == max(lengths)  # the longest batch first
    sampler.set_epoch(1)
    assert list(sampler) != first
    # padding per batch of 8: far below a plain shuffle's
    batches = [first[i:i + 8] for i in range(0, 400, 8)]
    plain = list(SeededRandomSampler(400, 3))
    plain_batches = [plain[i:i + 8] for i in range(0, 400, 8)]

    def padding(bs):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)

    assert padding(batches) < padding(plain_batches) / 4
    # the shuffle is transformers' seedable one: randperm from seed + epoch
    assert plain == torch.randperm(400, generator=torch.Generator().manual_seed(3)).tolist()


def test_group_by_length_training_and_evaluation_sets(llama, tmp_path):
    """train_sampling_strategy='group_by_length' (lengths read from the examples), a dict of
    evaluation sets (metrics prefixed by name), the input tokens counted, a callback's own
    TrainerControl changes obeyed."""
    from cove.datasets import Dataset

    data = Dataset.from_list(lm_data(24))

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            control.should_training_stop = state.global_step == 3

    trainer = Trainer(
        AutoModelForCausalLM.from_pretrained(llama),
        TrainingArguments(str(tmp_path / "g"), per_device_train_batch_size=4, max_steps=6,
                          train_sampling_strategy="group_by_length", logging_steps=1,
                          include_num_input_tokens_seen="non_padding", eval_strategy="steps",
                          eval_steps=3, save_strategy="no", **QUIET),
        train_dataset=data, eval_dataset={"a": data.select(range(4)), "b": data.select(range(8))},
        data_collator=pad_lm, callbacks=[StopAt()])
    trainer.train()
    assert trainer.state.global_step == 3
    last_eval = [e for e in trainer.state.log_history if "eval_a_loss" in e or "eval_b_loss" in e]
    assert {k for e in last_eval for k in e} >= {"eval_a_loss", "eval_b_loss"}
    tokens = sum(len(r["input_ids"]) for r in lm_data(24))
    assert 0 < trainer.state.num_input_tokens_seen <= tokens


def test_reporting_to_tensorboard(bert, tmp_path):
    from cove.trainer import TensorBoardCallback

    args = TrainingArguments(str(tmp_path / "tb"), max_steps=1, report_to="tensorboard",
                             use_cpu=True, disable_tqdm=True)
    model = AutoModelForSequenceClassification.from_pretrained(bert)
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="needs the tensorboard package"):
            Trainer(model, args, train_dataset=classification_data(4))
        return
    trainer = Trainer(model, args, train_dataset=classification_data(4))
    assert any(isinstance(cb, TensorBoardCallback) for cb in trainer.callback_handler.callbacks)
    trainer.train()
    assert list((tmp_path / "tb" / "runs").glob("*/events.out.tfevents.*"))


def test_custom_optimizer_loss_and_logits_hooks(bert, tmp_path):
    """optimizers=(optimizer, scheduler), optimizer_cls_and_kwargs, compute_loss_func (given
    the items of the whole accumulated batch) and preprocess_logits_for_metrics."""
    data = classification_data(16)
    args = dict(per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=3,
                learning_rate=1e-3, logging_steps=1, save_strategy="no", seed=4, **QUIET)

    def trainer(name, **kwargs):
        return Trainer(AutoModelForSequenceClassification.from_pretrained(bert),
                       TrainingArguments(str(tmp_path / name), **args), train_dataset=data,
                       **kwargs)

    default = trainer("default")
    default.train()
    seen = []

    def summed_cross_entropy(outputs, labels, num_items_in_batch):
        seen.append(int(num_items_in_batch))
        return torch.nn.functional.cross_entropy(outputs.logits, labels,
                                                 reduction="sum") / num_items_in_batch

    custom_loss = trainer("loss", compute_loss_func=summed_cross_entropy)
    custom_loss.train()
    assert set(seen) == {8}  # the examples of the 2 accumulated micro-batches
    np.testing.assert_allclose(curve(custom_loss), curve(default), rtol=0, atol=1e-6)

    model = AutoModelForSequenceClassification.from_pretrained(bert)
    sgd = torch.optim.SGD(model.parameters(), lr=0.05)
    constant = torch.optim.lr_scheduler.LambdaLR(sgd, lambda step: 1.0)
    given = Trainer(model, TrainingArguments(str(tmp_path / "given"), **args),
                    train_dataset=data, optimizers=(sgd, constant))
    given.train()
    assert [e["learning_rate"] for e in given.state.log_history if "loss" in e] == [0.05] * 3

    by_class = trainer("cls", optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 0.1}))
    by_class.train()
    groups = by_class.optimizer.param_groups
    assert isinstance(by_class.optimizer.optimizer, torch.optim.SGD) and len(groups) == 2
    assert groups[1]["weight_decay"] == 0.0 and groups[0]["initial_lr"] == 0.1

    received = []

    def to_classes(logits, labels):
        received.append(logits.shape)
        return logits.argmax(-1)

    def check(p):
        assert p.predictions.ndim == 1 and p.predictions.dtype == np.int64
        return {"accuracy": float((p.predictions == p.label_ids).mean())}

    evaluated = Trainer(default.model, TrainingArguments(str(tmp_path / "ev"), **args),
                        compute_metrics=check, preprocess_logits_for_metrics=to_classes)
    metrics = evaluated.evaluate(data[:10])
    assert received == [(8, 3), (2, 3)] and 0 <= metrics["eval_accuracy"] <= 1
    assert metrics["eval_loss"] == pytest.approx(default.evaluate(data[:10])["eval_loss"])


def test_causal_lm_share_of_the_loss_comes_from_the_model(llama, tmp_path):
    """Under accumulation a causal LM's micro-batch loss is the model's own (its chunked head
    and loss: the logits come back without a gradient) scaled to the global batch's label
    tokens; a micro-batch without label tokens adds 0, not NaN."""
    model = AutoModelForCausalLM.from_pretrained(llama)
    trainer = Trainer(model, TrainingArguments(str(tmp_path), report_to=[], use_cpu=True))
    batch = pad_lm(lm_data(2))
    items = int(batch["labels"][:, 1:].ne(-100).sum())
    loss, outputs = trainer.compute_loss(model, batch, return_outputs=True,
                                         num_items_in_batch=torch.tensor(items + 7))
    assert not outputs.logits.requires_grad
    torch.testing.assert_close(loss, outputs.loss * items / (items + 7))
    empty = dict(batch, labels=torch.full_like(batch["labels"], -100))
    loss = trainer.compute_loss(model, empty, num_items_in_batch=torch.tensor(5))
    loss.backward()
    assert loss.item() == 0.0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
