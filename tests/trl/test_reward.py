"""cove.trl.RewardTrainer against trl.RewardTrainer (1.16) on the same tiny reward models and
pairs: the same tokenization (standard, conversational, implicit prompt), the same loss and
logged metrics, and both equal to the pairwise loss computed by hand."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from cove.datasets import Dataset
from cove.models.auto import AutoModelForSequenceClassification
from cove.trl import RewardConfig, RewardTrainer
from tests.trl.conftest import CONVERSATIONAL_PREFERENCE as CONVERSATIONAL
from tests.trl.conftest import IMPLICIT_PREFERENCE as IMPLICIT
from tests.trl.conftest import PREFERENCE

MARGIN = {**PREFERENCE, "margin": [0.5, 0.0, -1.0, 2.0]}


@pytest.fixture(scope="module")
def reward_models(tiny, tmp_path_factory) -> dict:
    """The tiny causal LMs as one-logit sequence classifiers saved by transformers (the same
    random score head for both libraries)."""
    import transformers

    out = {}
    for kind, folder in tiny.items():
        target = tmp_path_factory.mktemp(f"reward-{kind}")
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(folder / name, target / name)
        torch.manual_seed(0)
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            str(folder), num_labels=1)
        model.config.pad_token_id = model.config.pad_token_id \
            if model.config.pad_token_id is not None else model.config.eos_token_id
        model.save_pretrained(target)
        out[kind] = target
    return out


def _configs(tmp_path, **kwargs):
    import trl

    common = dict(report_to="none", bf16=False, gradient_checkpointing=False, max_steps=1,
                  logging_steps=1, per_device_train_batch_size=4, learning_rate=0.0,
                  save_strategy="no", disable_tqdm=True, **kwargs)
    return (RewardConfig(str(tmp_path / "cove"), **common),
            trl.RewardConfig(str(tmp_path / "trl"), use_cpu=True, **common))


def _pair(model_dir, data, tmp_path, **kwargs):
    import datasets
    import trl

    ours_args, ref_args = _configs(tmp_path, **kwargs)
    ours = RewardTrainer(str(model_dir), args=ours_args, train_dataset=Dataset.from_dict(data))
    ref = trl.RewardTrainer(str(model_dir), args=ref_args,
                            train_dataset=datasets.Dataset.from_dict(data))
    return ours, ref


def _ids(dataset):
    return [(r["chosen_ids"], r["rejected_ids"]) for r in dataset]


@pytest.mark.parametrize("data", [PREFERENCE, CONVERSATIONAL, IMPLICIT],
                         ids=["standard", "conversational", "implicit"])
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_tokenization_equals_trl(reward_models, tmp_path, data, kind):
    ours, ref = _pair(reward_models[kind], data, tmp_path)
    assert _ids(ours.train_dataset) == _ids(ref.train_dataset)


def _hand_loss(model_dir, dataset, margins=None, center=None):
    """-log sigmoid(r_c - r_r - m) averaged over pairs (+ centering), each sequence scored
    alone (no padding)."""
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    with torch.no_grad():
        score = [[model(input_ids=torch.tensor([row[k]])).logits[0, 0].item()
                  for k in ("chosen_ids", "rejected_ids")] for row in dataset]
    chosen, rejected = torch.tensor(score, dtype=torch.float64).T
    diff = chosen - rejected - (torch.tensor(margins, dtype=torch.float64) if margins else 0)
    loss = -F.logsigmoid(diff).mean()
    if center is not None:
        loss = loss + center * ((chosen + rejected) ** 2).mean()
    rewards = torch.cat([chosen, rejected])
    return {"loss": loss.item(), "accuracy": (chosen > rejected).double().mean().item(),
            "margin": (chosen - rejected).mean().item(), "min_reward": rewards.min().item(),
            "mean_reward": rewards.mean().item(), "max_reward": rewards.max().item()}


@pytest.mark.parametrize("data,kwargs", [
    (PREFERENCE, {}), (MARGIN, {}), (PREFERENCE, {"center_rewards_coefficient": 0.01}),
    (CONVERSATIONAL, {})], ids=["plain", "margin", "centered", "conversational"])
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_loss_and_logs_equal_trl_and_formula(reward_models, tmp_path, data, kwargs, kind):
    ours, ref = _pair(reward_models[kind], data, tmp_path, **kwargs)
    ours.train()
    ref.train()
    got, expected = ours.state.log_history[0], ref.state.log_history[0]
    hand = _hand_loss(reward_models[kind], ours.train_dataset, data.get("margin"),
                      kwargs.get("center_rewards_coefficient"))
    for key in ("loss", "accuracy", "margin", "min_reward", "mean_reward", "max_reward",
                "num_tokens"):
        assert got[key] == pytest.approx(expected[key], abs=1e-5), key
        if key in hand:
            assert got[key] == pytest.approx(hand[key], abs=1e-5), key


def test_learns_preferences_with_lora(reward_models, tmp_path):
    from cove.peft import LoraConfig, TaskType

    args = RewardConfig(str(tmp_path), bf16=False, report_to="none", max_steps=30,
                        per_device_train_batch_size=4, learning_rate=5e-3, logging_steps=1,
                        save_strategy="no", disable_tqdm=True, gradient_checkpointing=True)
    trainer = RewardTrainer(str(reward_models["llama"]), args=args,
                            train_dataset=Dataset.from_dict(PREFERENCE),
                            peft_config=LoraConfig(task_type=TaskType.SEQ_CLS, r=8,
                                                   lora_alpha=16,
                                                   target_modules=["q_proj", "v_proj"]))
    trainer.train()
    first, last = trainer.state.log_history[0], trainer.state.log_history[-2]
    assert last["accuracy"] == 1.0
    assert last["loss"] < first["loss"]


def test_errors_name_what_is_wrong(reward_models, tiny, tmp_path):
    args = _configs(tmp_path)[0]
    with pytest.raises(ValueError, match="'chosen', 'rejected'"):
        RewardTrainer(str(reward_models["llama"]), args=args,
                      train_dataset=Dataset.from_dict({"prompt": ["a"], "chosen": ["b"]}))
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny["llama"]), num_labels=3)
    with pytest.raises(ValueError, match="num_labels=3"):
        RewardTrainer(model, args=args, train_dataset=Dataset.from_dict(PREFERENCE))
