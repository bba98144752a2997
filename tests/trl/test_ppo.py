"""PPOTrainer (trl 1.16 has no PPO: no oracle): GAE, the clipped losses, KL estimators and
whitening against the written-down formulas computed by hand; the value-head model against
the LM it wraps; short real runs on the tiny Llama with a tiny reward model."""

from __future__ import annotations

import math

import pytest
import torch

from cove.datasets import Dataset
from cove.trl import AutoModelForCausalLMWithValueHead, PPOConfig, PPOTrainer
from cove.trl.ppo_trainer import (
    compute_gae,
    kl_penalty,
    masked_whiten,
    policy_loss,
    value_loss,
)


def test_gae_equals_a_loop_by_hand():
    rewards = torch.tensor([[0.1, -0.2, 0.3, 1.5, 9.0], [0.0, 0.4, 2.0, 7.0, 7.0]])
    values = torch.tensor([[0.5, 0.1, -0.3, 0.2, 5.0], [1.0, -1.0, 0.5, 3.0, 3.0]])
    # row 0 has 4 response tokens, row 1 has 3: what lies past them is padding
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    gamma, lam = 0.9, 0.8
    advantages, returns = compute_gae(rewards, values, mask, gamma, lam)
    for row in range(2):
        n = int(mask[row].sum())
        r, v = rewards[row, :n].tolist(), values[row, :n].tolist()
        expected = [0.0] * n
        running = 0.0
        for t in range(n - 1, -1, -1):
            following = v[t + 1] if t + 1 < n else 0.0
            running = r[t] + gamma * following - v[t] + gamma * lam * running
            expected[t] = running
        assert advantages[row, :n].tolist() == pytest.approx(expected, abs=1e-6)
        assert returns[row, :n].tolist() == pytest.approx(
            [a + b for a, b in zip(expected, v, strict=True)], abs=1e-6)
        assert advantages[row, n:].abs().sum() == 0 and returns[row, n:].abs().sum() == 0


def test_clipped_losses_equal_the_formulas():
    new = torch.tensor([[-1.0, -0.5, -2.0], [-0.2, -3.0, -1.0]])
    old = torch.tensor([[-1.4, -0.5, -1.5], [-0.3, -2.0, -1.0]])
    adv = torch.tensor([[1.0, -2.0, 0.5], [-1.0, 2.0, 3.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    eps = 0.2
    loss, stats = policy_loss(new, old, adv, mask, eps)
    terms, clipped_count = [], 0
    for i in range(2):
        for t in range(3):
            if not mask[i, t]:
                continue
            ratio = math.exp(new[i, t] - old[i, t])
            a = adv[i, t].item()
            unclipped, clipped = -a * ratio, -a * min(max(ratio, 1 - eps), 1 + eps)
            terms.append(max(unclipped, clipped))
            clipped_count += clipped > unclipped
    assert loss.item() == pytest.approx(sum(terms) / len(terms), abs=1e-6)
    assert stats["clipfrac"].item() == pytest.approx(clipped_count / len(terms))
    assert stats["approxkl"].item() == pytest.approx(
        0.5 * sum((new[i, t] - old[i, t]).item() ** 2 for i in range(2) for t in range(3)
                  if mask[i, t]) / 5, abs=1e-6)

    v_new = torch.tensor([[0.5, 1.0, -1.0], [0.0, 2.0, 9.0]])
    v_old = torch.tensor([[0.2, 1.5, -1.05], [0.0, 1.0, 0.0]])
    ret = torch.tensor([[1.0, 0.0, -1.0], [0.3, 1.1, 0.0]])
    loss, clipfrac = value_loss(v_new, v_old, ret, mask, 0.2)
    terms, count = [], 0
    for i in range(2):
        for t in range(3):
            if not mask[i, t]:
                continue
            vc = v_old[i, t] + min(max(v_new[i, t] - v_old[i, t], -0.2), 0.2)
            a, b = (v_new[i, t] - ret[i, t]) ** 2, (vc - ret[i, t]) ** 2
            terms.append(max(a, b).item())
            count += (b > a).item()
    assert loss.item() == pytest.approx(0.5 * sum(terms) / len(terms), abs=1e-6)
    assert clipfrac.item() == pytest.approx(count / len(terms))


def test_kl_estimators_and_whitening_by_hand():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    assert kl_penalty(logp, ref, "k1").tolist() == pytest.approx([0.5, -1.0])
    assert kl_penalty(logp, ref, "k3").tolist() == pytest.approx(
        [math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0])
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 6.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    values = [1.0, 2.0, 3.0, 6.0]
    mean = sum(values) / 4
    var = sum((v - mean) ** 2 for v in values) / 3  # unbiased
    white = masked_whiten(x, mask)
    assert white[mask.bool()].tolist() == pytest.approx(
        [(v - mean) / math.sqrt(var + 1e-8) for v in values], abs=1e-6)
    kept = masked_whiten(x, mask, shift_mean=False)
    assert kept[mask.bool()].tolist() == pytest.approx(
        [(v - mean) / math.sqrt(var + 1e-8) + mean for v in values], abs=1e-6)


def test_value_head_model(tiny, tmp_path):
    from cove.models.auto import AutoModelForCausalLM

    model = AutoModelForCausalLMWithValueHead.from_pretrained(str(tiny["llama"]))
    lm = AutoModelForCausalLM.from_pretrained(str(tiny["llama"]))
    model.eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    logits, loss, values = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert loss is None and values.shape == (1, 4)
    torch.testing.assert_close(logits, lm(input_ids=ids).logits)
    hidden = lm(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(values, model.v_head.summary(hidden).squeeze(-1))
    with torch.no_grad():
        model.v_head.summary.bias.fill_(0.25)
    model.save_pretrained(tmp_path / "saved")
    # the folder is an ordinary causal LM checkpoint, and loads back with its head
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "saved"))
    torch.testing.assert_close(plain(input_ids=ids).logits, logits)
    again = AutoModelForCausalLMWithValueHead.from_pretrained(str(tmp_path / "saved")).eval()
    torch.testing.assert_close(again(input_ids=ids)[2], values + 0.25)
    assert again.v_head.summary.bias.item() == 0.25


def _args(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path), per_device_train_batch_size=2,
                  gradient_accumulation_steps=2, num_mini_batches=2, num_ppo_epochs=2,
                  response_length=6, total_episodes=16, logging_steps=1, learning_rate=1e-3,
                  bf16=False, report_to="none", use_cpu=True, disable_tqdm=True,
                  save_strategy="no")
    values.update(overrides)
    return PPOConfig(**values)


PROMPTS = ["the quick brown", "hello world,", "once upon a time", "the cat"] * 2


def test_ppo_run_updates_the_policy_and_logs(tiny, reward_model, tmp_path):
    from cove.tokenizers.auto import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny["llama"]))
    trainer = PPOTrainer(args=_args(tmp_path, whiten_rewards=True, missing_eos_penalty=1.0),
                         processing_class=tokenizer, model=str(tiny["llama"]), ref_model=None,
                         reward_model=str(reward_model),
                         train_dataset=Dataset.from_dict({"prompt": PROMPTS}))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    logs = [h for h in trainer.state.log_history if "objective/kl" in h]
    assert len(logs) == 2  # 16 episodes / 8 prompts per rollout batch
    for key in ("objective/kl", "objective/scores", "objective/entropy",
                "objective/non_score_reward", "objective/rlhf_reward", "loss/policy_avg",
                "loss/value_avg", "policy/approxkl_avg", "policy/clipfrac_avg",
                "val/clipfrac_avg", "policy/entropy_avg", "val/ratio", "episode"):
        assert math.isfinite(logs[0][key]), key
    assert logs[-1]["episode"] == 16
    # the first rollout is sampled from the reference itself: no KL yet
    assert logs[0]["objective/kl"] == pytest.approx(0.0, abs=1e-5)
    assert logs[-1]["objective/kl"] != 0.0
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.startswith("v_head") for n in changed)
    assert any(n.startswith("pretrained_model") for n in changed)
    # the reference stays where it was
    for name, parameter in trainer.ref_model.named_parameters():
        torch.testing.assert_close(parameter, before[f"pretrained_model.{name}"])
    trainer.save_model(str(tmp_path / "final"))
    assert (tmp_path / "final" / "value_head.safetensors").is_file()


def test_ppo_with_a_value_model_tokenized_prompts_and_lora(tiny, reward_model, tmp_path):
    from cove.peft import LoraConfig
    from cove.tokenizers.auto import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny["llama"]))
    data = Dataset.from_dict({"input_ids": [tokenizer(p)["input_ids"] for p in PROMPTS]})
    trainer = PPOTrainer(args=_args(tmp_path, total_episodes=8, kl_estimator="k3"),
                         processing_class=tokenizer, model=str(tiny["llama"]), ref_model=None,
                         reward_model=str(reward_model), value_model=str(reward_model),
                         train_dataset=data,
                         peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert trainer.ref_model is None  # the base with the adapter disabled
    score_before = trainer.model.value_model.score.weight.detach().clone()
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss/value_avg" in h]
    assert len(logs) == 1 and math.isfinite(logs[0]["loss/value_avg"])
    assert not torch.equal(trainer.model.value_model.score.weight, score_before)


def test_bad_input_is_refused(tiny, reward_model, tmp_path):
    with pytest.raises(ValueError, match="kl_estimator"):
        _args(tmp_path, kl_estimator="k2")
    with pytest.raises(ValueError, match="'prompt'"):
        PPOTrainer(args=_args(tmp_path), processing_class=None, model=str(tiny["llama"]),
                   ref_model=None, reward_model=str(reward_model),
                   train_dataset=Dataset.from_dict({"text": ["a", "b"]}))
    trainer = PPOTrainer(args=_args(tmp_path), processing_class=None, model=str(tiny["llama"]),
                         ref_model=None, reward_model=str(reward_model),
                         train_dataset=Dataset.from_dict({"prompt": ["a", "b"]}))
    with pytest.raises(ValueError, match="smaller than one rollout batch"):
        trainer.train()
