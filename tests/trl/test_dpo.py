"""cove.trl.DPOTrainer against trl.DPOTrainer (1.16) on the same tiny models and pairs: the same
tokenization (standard, conversational, implicit prompt), the same losses (sigmoid, ipo, hinge,
robust, a weighted list) and logged metrics, all equal to the formulas computed by hand from
the models' log-probs; LoRA training with the adapter-disabled reference; precomputed reference
log-probs; a given reference copy; clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cove.datasets import Dataset
from cove.models.auto import AutoModelForCausalLM
from cove.trl import DPOConfig, DPOTrainer
from tests.trl.conftest import CONVERSATIONAL_PREFERENCE as CONVERSATIONAL
from tests.trl.conftest import IMPLICIT_PREFERENCE as IMPLICIT
from tests.trl.conftest import PREFERENCE

LOGGED = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins",
          "logps/chosen", "logps/rejected", "logits/chosen", "logits/rejected", "entropy",
          "mean_token_accuracy", "num_tokens")


@pytest.fixture(scope="module")
def reference_dir(tiny, tmp_path_factory):
    """The tiny Llama with perturbed weights, saved by transformers: a reference that differs
    from the policy, so the rewards are not all zero."""
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(tiny["llama"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("dpo-reference")
    model.save_pretrained(folder)
    return folder


def _common(**kwargs):
    return dict(report_to="none", bf16=False, gradient_checkpointing=False, max_steps=1,
                logging_steps=1, per_device_train_batch_size=4, learning_rate=0.0,
                save_strategy="no", disable_tqdm=True, **kwargs)


def _ours(model, data, tmp_path, ref_model=None, **kwargs):
    return DPOTrainer(model, ref_model=ref_model,
                      args=DPOConfig(str(tmp_path / "cove"), **_common(**kwargs)),
                      train_dataset=Dataset.from_dict(data))


def _trl(model, data, tmp_path, ref_model=None, **kwargs):
    import datasets
    import trl

    return trl.DPOTrainer(model, ref_model=ref_model,
                          args=trl.DPOConfig(str(tmp_path / "trl"), use_cpu=True,
                                             **_common(**kwargs)),
                          train_dataset=datasets.Dataset.from_dict(data))


def _ids(dataset):
    return [(r["prompt_ids"], r["chosen_ids"], r["rejected_ids"]) for r in dataset]


@pytest.mark.parametrize("data", [PREFERENCE, CONVERSATIONAL, IMPLICIT],
                         ids=["standard", "conversational", "implicit"])
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_tokenization_equals_trl(tiny, tmp_path, data, kind):
    ours = _ours(str(tiny[kind]), data, tmp_path)
    ref = _trl(str(tiny[kind]), data, tmp_path)
    assert _ids(ours.train_dataset) == _ids(ref.train_dataset)


def _sequence_logps(model, dataset):
    """Summed completion log-probs of each (prompt + completion) alone, from a full
    log_softmax: [pairs, 2] (chosen, rejected), and the completions' lengths."""
    out, lengths = [], []
    with torch.no_grad():
        for row in dataset:
            pair, lens = [], []
            for key in ("chosen_ids", "rejected_ids"):
                ids = torch.tensor([row["prompt_ids"] + row[key]])
                logp = model(input_ids=ids).logits[0, :-1].double().log_softmax(-1)
                n = len(row[key])
                pair.append(logp[-n:].gather(-1, ids[0, -n:, None]).sum().item())
                lens.append(n)
            out.append(pair)
            lengths.append(lens)
    return torch.tensor(out, dtype=torch.float64), torch.tensor(lengths, dtype=torch.float64)


def _hand(policy, reference, dataset, loss_type, beta, label_smoothing=0.0):
    """DPO's documented per-pair losses from the summed completion log-probs."""
    logps, lengths = _sequence_logps(policy, dataset)
    ref, _ = _sequence_logps(reference, dataset)
    ratio = logps - ref
    delta = ratio[:, 0] - ratio[:, 1]
    if loss_type == "sigmoid":
        per_pair = -F.logsigmoid(beta * delta)
    elif loss_type == "hinge":
        per_pair = torch.relu(1 - beta * delta)
    elif loss_type == "ipo":
        per_pair = ((ratio / lengths)[:, 0] - (ratio / lengths)[:, 1] - 1 / (2 * beta)) ** 2
    else:
        eps = label_smoothing
        per_pair = (-(1 - eps) * F.logsigmoid(beta * delta)
                    + eps * F.logsigmoid(-beta * delta)) / (1 - 2 * eps)
    rewards = beta * ratio
    return {"loss": per_pair.mean().item(), "rewards/chosen": rewards[:, 0].mean().item(),
            "rewards/rejected": rewards[:, 1].mean().item(),
            "rewards/accuracies": (rewards[:, 0] > rewards[:, 1]).double().mean().item(),
            "rewards/margins": (rewards[:, 0] - rewards[:, 1]).mean().item(),
            "logps/chosen": logps[:, 0].mean().item(), "logps/rejected": logps[:, 1].mean().item()}


@pytest.mark.parametrize("loss_type,kwargs", [
    ("sigmoid", {}), ("ipo", {}), ("hinge", {"beta": 0.5}), ("robust", {"label_smoothing": 0.2}),
], ids=["sigmoid", "ipo", "hinge", "robust"])
def test_losses_and_logs_equal_trl_and_formula(tiny, reference_dir, tmp_path, loss_type, kwargs):
    import transformers

    ours = _ours(str(tiny["llama"]), PREFERENCE, tmp_path,
                 ref_model=AutoModelForCausalLM.from_pretrained(str(reference_dir)),
                 loss_type=loss_type, **kwargs)
    ref = _trl(str(tiny["llama"]), PREFERENCE, tmp_path,
               ref_model=transformers.AutoModelForCausalLM.from_pretrained(str(reference_dir)),
               loss_type=loss_type, **kwargs)
    ours.train()
    ref.train()
    got, expected = ours.state.log_history[0], ref.state.log_history[0]
    # 1e-5, or float32's resolution for large values (an IPO loss of ~34 sums hundreds of
    # log-probs: its last bits depend on the order of the sums)
    for key in LOGGED:
        assert got[key] == pytest.approx(expected[key], abs=1e-5, rel=1e-6), key
    hand = _hand(AutoModelForCausalLM.from_pretrained(str(tiny["llama"])),
                 AutoModelForCausalLM.from_pretrained(str(reference_dir)), ours.train_dataset,
                 loss_type, kwargs.get("beta", 0.1), kwargs.get("label_smoothing", 0.0))
    for key, value in hand.items():
        assert got[key] == pytest.approx(value, abs=1e-5, rel=1e-6), key
    assert got["rewards/margins"] != 0  # the reference differs: a real test of the rewards


@pytest.mark.parametrize("data", [CONVERSATIONAL, IMPLICIT], ids=["conversational", "implicit"])
def test_weighted_loss_list_equals_trl(tiny, tmp_path, data):
    kwargs = dict(loss_type=["sigmoid", "ipo"], loss_weights=[0.7, 0.3])
    ours = _ours(str(tiny["gpt2"]), data, tmp_path, **kwargs)
    ref = _trl(str(tiny["gpt2"]), data, tmp_path, **kwargs)
    ours.train()
    ref.train()
    for key in LOGGED:
        assert ours.state.log_history[0][key] == pytest.approx(ref.state.log_history[0][key],
                                                               abs=1e-5), key


EIGHT = {"prompt": ["the quick brown", "hello world,", "once upon a time", "the cat",
                    "what is the capital of france?", "the sky is", "one two", "good"],
         "chosen": [" fox jumps", " how are you?", " there was a tiny model", " sat",
                    " paris.", " blue.", " three four", " morning"],
         "rejected": [" dog", " bye", " a cat", " on the mat, the lazy dog", " london.",
                      " green, very green", " five", " night, the end"]}


def test_lora_learns_preferences_with_the_adapter_disabled_reference(tiny, tmp_path):
    from cove.peft import LoraConfig

    args = DPOConfig(str(tmp_path), bf16=False, report_to="none", max_steps=40,
                     per_device_train_batch_size=8, learning_rate=3e-3, beta=0.1,
                     logging_steps=1, save_strategy="no", disable_tqdm=True)
    trainer = DPOTrainer(str(tiny["llama"]), args=args, train_dataset=Dataset.from_dict(EIGHT),
                         peft_config=LoraConfig(r=8, lora_alpha=16,
                                                target_modules=["q_proj", "v_proj"]))
    assert trainer.ref_model is None  # no second copy of the model
    trainer.train()
    logs = [h for h in trainer.state.log_history if "rewards/accuracies" in h]
    assert logs[-1]["rewards/accuracies"] >= 0.9
    assert logs[-1]["rewards/margins"] > logs[0]["rewards/margins"]
    # the reference (adapter disabled) is the base model, after training as before it
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    base = AutoModelForCausalLM.from_pretrained(str(tiny["llama"]))
    expected, _ = _sequence_logps(base, trainer.train_dataset)
    got = trainer._reference_logps(batch).double()
    # float32 sums of up to ~200 nats (padded batch) against float64 ones (one row each)
    torch.testing.assert_close(got.view(2, 8).T, expected, atol=1e-5, rtol=1e-6)


def test_precomputed_reference_equals_computing_it_each_step(tiny, reference_dir, tmp_path):
    def losses(given=False, **kwargs):
        args = DPOConfig(str(tmp_path), **{**_common(**kwargs), "max_steps": 3,
                                           "learning_rate": 1e-2, "seed": 3})
        trainer = DPOTrainer(str(tiny["llama"]), args=args,
                             train_dataset=Dataset.from_dict(PREFERENCE),
                             ref_model=AutoModelForCausalLM.from_pretrained(str(reference_dir))
                             if given else None)
        trainer.train()
        return trainer, [h["loss"] for h in trainer.state.log_history if "loss" in h]

    each_step, expected = losses()
    precomputed, got = losses(precompute_ref_log_probs=True)
    assert precomputed.ref_model is None and each_step.ref_model is not None
    assert "ref_chosen_logps" in precomputed.train_dataset.column_names
    assert got == pytest.approx(expected, abs=1e-5)
    _, given = losses(given=True)
    _, given_precomputed = losses(given=True, precompute_ref_log_probs=True)
    assert given_precomputed == pytest.approx(given, abs=1e-5)
    assert given != pytest.approx(expected, abs=1e-3)  # the given reference was used


def test_errors_name_what_is_wrong(tiny, tmp_path):
    with pytest.raises(ValueError, match=r"\['text'\].*'prompt', 'chosen', 'rejected'"):
        _ours(str(tiny["llama"]), {"text": ["a b"]}, tmp_path)
    with pytest.raises(ValueError, match="loss_type"):
        DPOConfig(str(tmp_path), loss_type="nope", bf16=False)
    with pytest.raises(ValueError, match="label_smoothing"):
        DPOConfig(str(tmp_path), loss_type="robust", label_smoothing=0.5, bf16=False)
    model = AutoModelForCausalLM.from_pretrained(str(tiny["llama"]))
    with pytest.raises(ValueError, match="ref_model is the model"):
        DPOTrainer(model, ref_model=model, args=DPOConfig(str(tmp_path), **_common()),
                   train_dataset=Dataset.from_dict(PREFERENCE))
