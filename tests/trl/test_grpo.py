"""GRPOTrainer against trl 1.16's GRPOTrainer (advantages, reference log-probs and every loss
type on the same completions and weights), against the documented formulas by hand, and in
short real runs on the tiny Llama."""

from __future__ import annotations

import math

import pytest
import torch

from cove.datasets import Dataset
from cove.trl import GRPOConfig, GRPOTrainer
from cove.trl.grpo_trainer import (
    aggregate_loss,
    completion_logps,
    group_advantages,
    per_token_loss,
)

# prompts of the same token length: trl's forward numbers positions from 0 even under left
# padding while Cove's follows the mask (as generate does), so equal lengths compare exactly
PROMPTS = ["the cat", "the mat"]


def _common(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2,
                  max_completion_length=6, report_to="none", bf16=False, use_cpu=True,
                  gradient_checkpointing=False, logging_steps=1, disable_tqdm=True)
    values.update(overrides)
    return values


def reward_len(completions, **kwargs):
    """Longer completions score higher; the second completion of each prompt is not scored."""
    return [None if i % 4 == 1 else float(len(c)) for i, c in enumerate(completions)]


def reward_tag(completions, tag, **kwargs):
    """A reward that reads a dataset column."""
    return [float(t in c) for c, t in zip(completions, tag, strict=True)]


# fixed completions (token ids), two per prompt: an EOS-ended one, a truncated one, ...
FIXED = [[277, 278, 0], [263, 277, 278, 263, 278, 277], [278, 0], [263, 263, 263, 0]]


@pytest.fixture(scope="module")
def pair(tiny, tmp_path_factory):
    """A trl and a Cove GRPOTrainer on the same weights and prompts (beta > 0), whose
    generation is replaced by the fixed completions."""
    import datasets
    import trl

    tmp = tmp_path_factory.mktemp("grpo-pair")
    path = str(tiny["llama"])
    rows = {"prompt": [p for p in PROMPTS for _ in range(2)], "tag": ["a", "a", "b", "b"]}
    trl_trainer = trl.GRPOTrainer(
        path, [reward_len, reward_tag], args=trl.GRPOConfig(
            **_common(tmp / "trl", beta=0.1, reward_weights=[1.0, 0.5])),
        train_dataset=datasets.Dataset.from_dict(rows))
    cove_trainer = GRPOTrainer(
        path, [reward_len, reward_tag], args=GRPOConfig(
            **_common(tmp / "cove", beta=0.1, reward_weights=[1.0, 0.5])),
        train_dataset=Dataset.from_dict(rows))
    tokenizer = cove_trainer.processing_class
    prompt_ids = tokenizer(text=PROMPTS)["input_ids"]
    assert len({len(p) for p in prompt_ids}) == 1
    texts = tokenizer.batch_decode(FIXED, skip_special_tokens=True)

    def trl_generate(prompts):
        ids = [tokenizer(text=p)["input_ids"] for p in prompts]
        return ids, FIXED, None, texts, None, {}, None, []

    trl_trainer._generate = trl_generate
    cove_trainer._generate = lambda prompt_ids: FIXED
    inputs = [{"prompt": p, "tag": t} for p, t in zip(rows["prompt"], rows["tag"], strict=True)]
    return trl_trainer, cove_trainer, inputs


def test_advantages_and_reference_logps_equal_trl(pair):
    trl_trainer, cove_trainer, inputs = pair
    trl_trainer.model.train()
    cove_trainer.model.train()
    expected = trl_trainer._generate_and_score_completions([dict(x) for x in inputs])
    got = cove_trainer._generate_and_score_completions([dict(x) for x in inputs])
    torch.testing.assert_close(got["advantages"], expected["advantages"], atol=1e-5, rtol=0)
    torch.testing.assert_close(got["completion_mask"], expected["completion_mask"].long())
    torch.testing.assert_close(got["completion_ids"], expected["completion_ids"])
    mask = got["completion_mask"].bool()
    torch.testing.assert_close(got["ref_per_token_logps"][mask],
                               expected["ref_per_token_logps"][mask], atol=1e-5, rtol=0)
    assert int(got["num_items_in_batch"]) == int(expected["num_items_in_batch"])
    for key in ("reward", "reward_std", "rewards/reward_len/mean", "rewards/reward_tag/mean",
                "frac_reward_zero_std"):
        assert cove_trainer._metrics["train"][key][-1] == pytest.approx(
            trl_trainer._metrics["train"][key][-1], abs=1e-6), key


@pytest.mark.parametrize("loss_type,level,delta", [
    ("dapo", "token", None), ("grpo", "token", None), ("bnpo", "token", None),
    ("dr_grpo", "token", None), ("cispo", "token", None), ("sapo", "token", None),
    ("luspo", "sequence", None), ("grpo", "sequence", None), ("dapo", "token", 1.1)])
def test_loss_equals_trl(pair, loss_type, level, delta):
    trl_trainer, cove_trainer, inputs = pair
    cove_trainer.model.train()
    trl_trainer.model.train()
    batch = cove_trainer._generate_and_score_completions([dict(x) for x in inputs])
    generator = torch.Generator().manual_seed(0)
    shape = batch["completion_ids"].shape
    with torch.no_grad():
        ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
        mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
        logps, _ = completion_logps(cove_trainer.model, ids, mask, shape[1])
    # old and reference log-probs near the policy's, far enough that both clips act
    batch["old_per_token_logps"] = logps + 0.3 * torch.randn(
        shape, generator=generator)
    batch["ref_per_token_logps"] = logps + 0.3 * torch.randn(
        shape, generator=generator)
    batch["advantages"] = torch.tensor([1.0, -0.5, 0.7, -1.2])
    for trainer in (trl_trainer, cove_trainer):
        trainer.loss_type = loss_type
        trainer.args.loss_type = loss_type
        trainer.args.importance_sampling_level = level
        trainer.args.delta = delta
        trainer.current_gradient_accumulation_steps = 1
    trl_trainer.importance_sampling_level = level
    trl_trainer.epsilon_high = cove_trainer.epsilon_high = 1.28 if loss_type == "cispo" else 0.2
    expected = trl_trainer._compute_loss(trl_trainer.model, dict(batch))
    got = cove_trainer.compute_loss(cove_trainer.model, dict(batch))
    assert got.item() == pytest.approx(expected.item(), abs=1e-5)
    if loss_type in ("dapo", "grpo"):
        for key in ("kl", "entropy", "clip_ratio/low_mean", "clip_ratio/high_mean"):
            assert cove_trainer._metrics["train"][key][-1] == pytest.approx(
                trl_trainer._metrics["train"][key][-1], abs=1e-5), key


def test_loss_formulas_by_hand():
    logps = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -1.5, -2.5]])
    old = torch.tensor([[-1.1, -1.0, -0.5], [-0.9, -1.5, -2.0]])
    ref = torch.tensor([[-1.2, -2.1, -0.4], [-0.3, -1.0, -2.5]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    adv = torch.tensor([0.8, -1.3])
    eps, beta = 0.2, 0.05
    token_loss, parts = per_token_loss(logps, old, adv, mask, epsilon_low=eps,
                                       epsilon_high=eps, beta=beta, ref_per_token_logps=ref,
                                       bias_correction_kl=False)
    expected = torch.zeros(2, 3)
    for i in range(2):
        for t in range(3):
            ratio = math.exp(logps[i, t] - old[i, t])
            clipped = min(max(ratio, 1 - eps), 1 + eps)
            surrogate = min(ratio * adv[i].item(), clipped * adv[i].item())
            d = (ref[i, t] - logps[i, t]).item()
            expected[i, t] = -surrogate + beta * (math.exp(d) - d - 1)
    torch.testing.assert_close(token_loss, expected)
    assert parts["kl"][0, 0].item() == pytest.approx(math.exp(-0.2) + 0.2 - 1)
    active = [[expected[i, t].item() for t in range(3) if mask[i, t]] for i in range(2)]
    # dapo / bnpo: over all active tokens; grpo: per sequence then over sequences
    dapo = sum(sum(r) for r in active) / 5
    grpo = sum(sum(r) / len(r) for r in active) / 2
    assert aggregate_loss(token_loss, mask, "dapo").item() == pytest.approx(dapo)
    assert aggregate_loss(token_loss, mask, "bnpo").item() == pytest.approx(dapo)
    assert aggregate_loss(token_loss, mask, "grpo").item() == pytest.approx(grpo)
    assert aggregate_loss(token_loss, mask, "dr_grpo", max_completion_length=8).item() \
        == pytest.approx(sum(sum(r) for r in active) / (2 * 8))
    assert aggregate_loss(token_loss, mask, "dapo", num_items=10).item() \
        == pytest.approx(sum(sum(r) for r in active) / 10)


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 3.0, 2.0, 2.0, 0.0, float("nan"), 4.0, 8.0])
    adv, std = group_advantages(rewards, 2, "group")
    s = math.sqrt(2.0)  # the unbiased std of {1, 3} (and of {4, 8}: 2 * sqrt(2))
    expected = [-1 / (s + 1e-4), 1 / (s + 1e-4), 0.0, 0.0, 0.0, 0.0,
                -2 / (2 * s + 1e-4), 2 / (2 * s + 1e-4)]
    torch.testing.assert_close(adv, torch.tensor(expected))
    assert math.isnan(std[4])  # a group with one scored completion has no std
    adv, _ = group_advantages(rewards, 2, "none")
    torch.testing.assert_close(adv, torch.tensor([-1.0, 1.0, 0, 0, 0, 0, -2.0, 2.0]))
    adv, std = group_advantages(torch.tensor([1.0, 3.0, 2.0, 6.0]), 2, "batch")
    batch_std = torch.tensor([1.0, 3.0, 2.0, 6.0]).std().item()
    torch.testing.assert_close(adv, torch.tensor([-1.0, 1.0, -2.0, 2.0]) / (batch_std + 1e-4))


def count_a(completions, **kwargs):
    return [c.count("a") / 4 for c in completions]


def test_training_raises_the_reward(tiny, tmp_path):
    data = Dataset.from_dict({"prompt": ["the quick brown", "hello world,", "once upon a time",
                                         "the cat"] * 4})
    args = GRPOConfig(**_common(tmp_path, per_device_train_batch_size=8, num_generations=4,
                                max_completion_length=8, learning_rate=3e-2, max_steps=8))
    trainer = GRPOTrainer(str(tiny["llama"]), count_a, args=args, train_dataset=data)
    trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    assert len(rewards) == 8
    assert sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2 + 0.5
    logged = trainer.state.log_history[0]
    for key in ("rewards/count_a/mean", "completions/mean_length", "entropy",
                "clip_ratio/region_mean", "frac_reward_zero_std"):
        assert key in logged
    assert "kl" not in logged  # beta = 0: no reference model
    assert trainer.ref_model is None
    metrics = trainer.evaluate(data.select(range(4)))
    assert metrics["eval_completions/mean_length"] > 0 and "eval_reward" in metrics


def test_conversational_reward_model_peft_and_kl(tiny, reward_model, tmp_path):
    from cove.peft import LoraConfig

    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": "hello there"}],
                                         [{"role": "user", "content": "the cat?"}]]})
    args = GRPOConfig(**_common(tmp_path, max_steps=2, beta=0.1, learning_rate=1e-2,
                                num_iterations=2))
    seen = []

    def spy(prompts, completions, **kwargs):
        seen.append((prompts[0], completions[0]))
        return [0.0] * len(prompts)

    trainer = GRPOTrainer(str(tiny["llama"]), [str(reward_model), spy], args=args,
                          train_dataset=data,
                          peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    base = {n: p.detach().clone() for n, p in trainer.model.named_parameters()
            if "lora_" not in n}
    trainer.train()
    assert trainer.ref_model is None  # the reference is the base without the adapter
    prompt, completion = seen[0]
    assert prompt[0]["role"] == "user" and completion[0]["role"] == "assistant"
    logged = [h for h in trainer.state.log_history if "kl" in h]
    assert len(logged) == 2
    assert f"rewards/{reward_model.name}/mean" in logged[0]
    # the second step reuses the first step's completions (num_iterations=2)
    assert len(seen) == 1
    for name, parameter in trainer.model.named_parameters():
        if "lora_" not in name:
            torch.testing.assert_close(parameter, base[name])


def test_bad_input_is_refused(tiny, tmp_path):
    with pytest.raises(ValueError, match="divisible by num_generations"):
        GRPOConfig(**_common(tmp_path, per_device_train_batch_size=3, num_generations=2))
    with pytest.raises(ValueError, match="'prompt'"):
        GRPOTrainer(str(tiny["llama"]), count_a, args=GRPOConfig(**_common(tmp_path)),
                    train_dataset=Dataset.from_dict({"text": ["a", "b"]}))
    with pytest.raises(ValueError, match="loss_type"):
        GRPOConfig(**_common(tmp_path, loss_type="nope"))
    trainer = GRPOTrainer(str(tiny["llama"]), lambda completions, **kw: [1.0],
                          args=GRPOConfig(**_common(tmp_path, max_steps=1)),
                          train_dataset=Dataset.from_dict({"prompt": ["a", "b"]}))
    with pytest.raises(ValueError, match="returned 1 rewards for 4 completions"):
        trainer.train()

