"""PPOTrainer: PPO from a reward model, with the older TRL PPOTrainer's arguments, config
fields and logged names (trl 1.16 has no PPO), on Cove's Trainer, Accelerator and generate.

Each rollout batch: sample responses to the prompts (KV-cached generate), score them with the
reward model, take per-token log-probs of the policy and the reference and the values; the
reward of each token is -kl_coef x KL, plus the score at the response's last token;
advantages and returns come from GAE; then `num_ppo_epochs` passes of clipped policy and
value losses over mini-batches.

    trainer = PPOTrainer(args=PPOConfig("out"), processing_class=tokenizer, model=policy,
                         ref_model=None, reward_model=reward_model, train_dataset=prompts)
    trainer.train()
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import defaultdict
from typing import Any

import torch
from torch import nn

from cove.trainer.trainer import Trainer, TrainOutput
from cove.trl.base import (
    apply_peft,
    create_reference_model,
    is_peft_model,
    load_model,
    load_processing_class,
)
from cove.trl.data_utils import (
    apply_chat_template,
    column_names,
    is_conversational,
    require_format,
)
from cove.trl.ppo_config import PPOConfig
from cove.trl.value_head import AutoModelForCausalLMWithValueHead

# -- the math, as functions on tensors --------------------------------------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """The mean of `x` where `mask` is 1 (over `dim`, or all of it)."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The unbiased variance of `x` where `mask` is 1."""
    mean = masked_mean(x, mask)
    count = mask.sum()
    if count < 2:
        raise ValueError("whitening needs at least 2 unmasked values")
    return masked_mean((x - mean) ** 2, mask) * count / (count - 1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """`x` scaled to unit variance over the masked values, and centred unless `shift_mean` is
    False (then its mean is kept): (x - mean) / sqrt(var + 1e-8) [+ mean]."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    return whitened if shift_mean else whitened + mean


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
                lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens ([batch, length]; `mask` 1 on
    each response's tokens, a prefix of the row). delta_t = r_t + gamma V_{t+1} - V_t (V past
    the response is 0); A_t = delta_t + gamma lam A_{t+1}; returns R_t = A_t + V_t. Both are
    0 outside the mask."""
    mask = mask.to(values.dtype)
    rewards, values = rewards * mask, values * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.size(1))):
        following = values[:, t + 1] if t + 1 < values.size(1) else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * following - values[:, t]
        running = delta + gamma * lam * running
        advantages[:, t] = running
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, cliprange: float) -> tuple[torch.Tensor, dict[str, Any]]:
    """PPO's clipped surrogate: mean over masked tokens of max(-A r, -A clip(r, 1 +- eps)),
    r = exp(logp - logp_old). Also returns the clipped fraction, approx KL
    (0.5 mean (logp - logp_old)^2) and the ratios."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((clipped > unclipped).float(), mask),
                 "approxkl": 0.5 * masked_mean((logprobs - old_logprobs) ** 2, mask),
                 "ratio": masked_mean(ratio, mask)}
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, cliprange_value: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped value loss: 0.5 mean over masked tokens of max((V - R)^2,
    (V_old + clip(V - V_old, +-eps) - R)^2); and the fraction where the clipped one won."""
    clipped_values = old_values + torch.clamp(values - old_values, -cliprange_value,
                                              cliprange_value)
    unclipped = (values - returns) ** 2
    clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped > unclipped).float(), mask)
    return loss, clipfrac


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str,
               ) -> torch.Tensor:
    """Per-token KL(policy || reference) estimate at the sampled tokens: "k1" logp - logr,
    "k3" (r/p - 1) - log(r/p)."""
    log_ratio = ref_logprobs - logprobs
    if estimator == "k1":
        return -log_ratio
    if estimator == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"kl_estimator must be 'k1' or 'k3', got {estimator!r}")


# -- models -------------------------------------------------------------------------------------

class _PolicyAndValue(nn.Module):
    """A policy LM and a separate value model trained together (one optimizer)."""

    def __init__(self, policy: nn.Module, value_model: nn.Module) -> None:
        super().__init__()
        self.policy = policy
        self.value_model = value_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor) -> tuple[torch.Tensor, None, torch.Tensor]:
        logits = self.policy(input_ids=input_ids, attention_mask=attention_mask,
                             position_ids=position_ids).logits
        out = self.value_model(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids, output_hidden_states=True,
                               return_dict=True)
        values = self.value_model.score(out.hidden_states[-1]).squeeze(-1)
        return logits, None, values

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        self.policy.gradient_checkpointing_enable(**kwargs)
        self.value_model.gradient_checkpointing_enable(**kwargs)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    # positions count only real tokens, as in generate (prompts are left-padded)
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def _token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of `tokens` under `logits` / temperature (as sampled), and the entropies."""
    logp = torch.log_softmax(logits.float() / (temperature + 1e-7), dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), entropy


# -- the trainer --------------------------------------------------------------------------------

class PPOTrainer(Trainer):
    """PPO with a reward model (the older TRL PPOTrainer's arguments).

    `model`: the policy: a causal LM (or its id), given a value head
    (`AutoModelForCausalLMWithValueHead`) unless `value_model` is passed, or a model that
    already has one. `value_model`: a separate sequence classification model (or id) whose
    `score` head gives the value of each position. `ref_model`: the frozen reference (None: a
    copy of the policy; the policy's base without its adapter under `peft_config`).
    `reward_model`: a sequence classification model (or id) with one logit, scoring
    prompt + response with the same tokenizer. `train_dataset`: prompts, tokenized
    ("input_ids") or as text ("prompt", standard or conversational). `data_collator`, when
    given, turns a list of rows into left-padded "input_ids" and "attention_mask".
    `save_model` saves the policy (with its value head).
    """

    _tag_names = ["trl", "ppo"]

    def __init__(self, args: PPOConfig, processing_class: Any, model: str | nn.Module,
                 ref_model: str | nn.Module | None, reward_model: str | nn.Module,
                 train_dataset: Any, value_model: str | nn.Module | None = None,
                 data_collator: Any = None, eval_dataset: Any = None,
                 optimizers: tuple[torch.optim.Optimizer | None, Any] = (None, None),
                 callbacks: list | None = None, peft_config: Any = None) -> None:
        if not isinstance(args, PPOConfig):
            raise TypeError(f"args must be a PPOConfig, got {type(args).__name__}")
        if train_dataset is None:
            raise ValueError("PPOTrainer needs a train_dataset of prompts")
        columns = column_names(train_dataset)
        if "input_ids" not in columns:
            require_format(columns, "PPOTrainer (or pass the prompts tokenized as 'input_ids')",
                           ("prompt-only",))
        from cove.models.auto import AutoModelForSequenceClassification

        if isinstance(model, AutoModelForCausalLMWithValueHead):
            if value_model is not None:
                raise ValueError("the model already has a value head: pass no value_model")
            if peft_config is not None:
                model.pretrained_model = apply_peft(model.pretrained_model, peft_config, args)
            policy = model
            lm = model.pretrained_model
        else:
            lm = apply_peft(load_model(model, args), peft_config, args)
            if value_model is None:
                policy = AutoModelForCausalLMWithValueHead(lm)
            else:
                value_model = load_model(value_model, args, AutoModelForSequenceClassification,
                                         num_labels=1)
                if not isinstance(getattr(value_model, "score", None), nn.Module):
                    raise ValueError("value_model must be a sequence classification model "
                                     "with a `score` head")
                policy = _PolicyAndValue(lm, value_model)
        self.policy_lm = lm
        processing_class = load_processing_class(lm, processing_class)
        self._tokenizer = getattr(processing_class, "tokenizer", processing_class)

        if ref_model is None:
            ref_model = None if is_peft_model(lm) else create_reference_model(lm)
        elif is_peft_model(lm):
            raise ValueError("with an adapter the reference is the base model with the adapter "
                             "disabled: pass ref_model=None")
        else:
            ref_model = load_model(ref_model, args)
            for parameter in ref_model.parameters():
                parameter.requires_grad_(False)
            ref_model.eval()
        self.ref_model = ref_model
        reward_model = load_model(reward_model, args, AutoModelForSequenceClassification,
                                  num_labels=1)
        for parameter in reward_model.parameters():
            parameter.requires_grad_(False)
        self.reward_model = reward_model.eval()

        if data_collator is None:
            data_collator = self._collate
        super().__init__(model=policy, args=args, data_collator=data_collator,
                         train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processing_class, callbacks=callbacks,
                         optimizers=optimizers)
        device = self.accelerator.device
        for frozen in (self.ref_model, self.reward_model):
            if frozen is not None:
                frozen.to(device)
        self.eos_token_id = self._tokenizer.eos_token_id
        self.pad_token_id = self._tokenizer.pad_token_id
        ends = {self.eos_token_id}
        if args.stop_token_id is not None:
            ends.add(args.stop_token_id)
        self.stop_token_ids = sorted(e for e in ends if e is not None)
        from cove.generation import GenerationConfig

        self.generation_config = GenerationConfig(
            max_new_tokens=args.response_length, do_sample=True,
            temperature=args.temperature + 1e-7, top_k=0, top_p=1.0,
            pad_token_id=self.pad_token_id, eos_token_id=self.stop_token_ids)

    # -- data -------------------------------------------------------------------------------

    def _collate(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        """Left-padded prompt ids (tokenizing text prompts; a conversational prompt through
        the chat template with the generation prompt)."""
        if "input_ids" in rows[0]:
            ids = [list(row["input_ids"]) for row in rows]
        elif is_conversational(rows[0]):
            texts = [apply_chat_template({"prompt": row["prompt"]}, self.processing_class)
                     ["prompt"] for row in rows]
            ids = self._tokenizer(text=texts, add_special_tokens=False)["input_ids"]
        else:
            ids = self._tokenizer(text=[row["prompt"] for row in rows])["input_ids"]
        width = max(len(r) for r in ids)
        input_ids = torch.full((len(ids), width), self._tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), width), dtype=torch.long)
        for i, r in enumerate(ids):
            if r:
                input_ids[i, width - len(r):] = torch.tensor(r)
                attention_mask[i, width - len(r):] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = ["input_ids", "prompt"]

    def get_train_dataloader(self) -> torch.utils.data.DataLoader:
        """Rollout batches of `local_batch_size` prompts, shuffled, full batches only."""
        dataset, collator = self._remove_unused_columns(self.train_dataset, "training")
        generator = torch.Generator().manual_seed(self.args.seed)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=self.args.local_batch_size, shuffle=True, drop_last=True,
            collate_fn=collator, generator=generator)
        if len(loader) == 0:
            raise ValueError(f"the train_dataset ({len(dataset)} prompts) is smaller than one "
                             f"rollout batch ({self.args.local_batch_size}: "
                             "per_device_train_batch_size x gradient_accumulation_steps x "
                             "num_mini_batches)")
        return self.accelerator.prepare(loader)

    # -- rollouts -----------------------------------------------------------------------------

    def _forward(self, model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, context: int,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Response-token log-probs, entropies and (for the policy) values: the positions
        from the last prompt token on predict the response tokens."""
        out = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask))
        if isinstance(out, tuple):
            logits, _, values = out
            values = values[:, context - 1:-1]
        else:
            logits, values = out.logits, None
        logprobs, entropy = _token_logprobs(logits[:, context - 1:-1], ids[:, context:],
                                            self.args.temperature)
        return logprobs, entropy, values

    def _scores(self, queries: torch.Tensor, query_mask: torch.Tensor,
                responses: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
        """The reward model's logit for each prompt + response, right-padded so that its last
        real token is the response's last."""
        rows = [q[qm.bool()].tolist() + r[rm.bool()].tolist()
                for q, qm, r, rm in zip(queries, query_mask, responses, response_mask,
                                        strict=True)]
        pad = self.reward_model.config.pad_token_id
        pad = self.pad_token_id if pad is None else pad
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long, device=queries.device)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r, device=ids.device)
            mask[i, :len(r)] = 1
        if self.reward_model.config.pad_token_id is None:
            self.reward_model.config.pad_token_id = pad
        return self.reward_model(input_ids=ids, attention_mask=mask).logits[:, 0].float()

    @torch.no_grad()
    def _rollout(self, model: nn.Module, queries: torch.Tensor, query_mask: torch.Tensor,
                 ) -> dict[str, torch.Tensor]:
        """Responses, their masks, log-probs, values, rewards, advantages and returns."""
        args = self.args
        context = queries.size(1)
        lm = self.accelerator.unwrap_model(model)
        lm = lm.pretrained_model if isinstance(lm, AutoModelForCausalLMWithValueHead) \
            else lm.policy
        sequences = lm.generate(input_ids=queries, attention_mask=query_mask,
                                generation_config=self.generation_config)
        responses = sequences[:, context:]
        # a response runs up to and including its first stop token; the rest becomes padding
        is_stop = torch.isin(responses, torch.tensor(self.stop_token_ids,
                                                     device=responses.device))
        index = torch.arange(responses.size(1), device=responses.device)
        first = torch.where(is_stop.any(1), is_stop.int().argmax(1),
                            torch.full_like(is_stop[:, 0], responses.size(1), dtype=torch.long))
        mask = (index[None] <= first[:, None]).long()
        responses = responses.masked_fill(mask == 0, self.pad_token_id)
        full = torch.cat([queries, responses], dim=1)
        full_mask = torch.cat([query_mask, mask], dim=1)
        chunk = args.local_rollout_forward_batch_size
        logprobs, values, ref_logprobs, scores = [], [], [], []
        for i in range(0, full.size(0), chunk):
            part, part_mask = full[i:i + chunk], full_mask[i:i + chunk]
            lp, _, v = self._forward(model, part, part_mask, context)
            logprobs.append(lp)
            values.append(v)
            if self.ref_model is not None:
                ref_logprobs.append(self._forward(self.ref_model, part, part_mask, context)[0])
            else:
                with self.accelerator.unwrap_model(self.policy_lm).disable_adapter():
                    ref_logprobs.append(self._forward(self.policy_lm, part, part_mask,
                                                      context)[0])
            scores.append(self._scores(queries[i:i + chunk], query_mask[i:i + chunk],
                                       responses[i:i + chunk], mask[i:i + chunk]))
        logprobs, values = torch.cat(logprobs), torch.cat(values).float()
        ref_logprobs, scores = torch.cat(ref_logprobs), torch.cat(scores)
        has_eos = ((responses == self.eos_token_id) & mask.bool()).any(1)
        if args.missing_eos_penalty is not None:
            scores = scores - args.missing_eos_penalty * (~has_eos).float()

        fmask = mask.float()
        kl = kl_penalty(logprobs, ref_logprobs, args.kl_estimator) * fmask
        non_score_reward = -args.kl_coef * kl
        rewards = non_score_reward.clone()
        last = mask.sum(1) - 1
        rewards[torch.arange(rewards.size(0), device=rewards.device), last] += scores
        if args.whiten_rewards:
            rewards = masked_whiten(rewards, fmask, shift_mean=False) * fmask
        values = values * fmask
        advantages, returns = compute_gae(rewards, values, fmask, args.gamma, args.lam)
        advantages = masked_whiten(advantages, fmask) * fmask
        return {"queries": queries, "query_mask": query_mask, "responses": responses,
                "mask": fmask, "logprobs": logprobs, "ref_logprobs": ref_logprobs,
                "values": values, "scores": scores, "kl": kl,
                "non_score_reward": non_score_reward, "advantages": advantages,
                "returns": returns, "has_eos": has_eos}

    # -- training -----------------------------------------------------------------------------

    def _ppo_epochs(self, model: nn.Module, batch: dict[str, torch.Tensor],
                    ) -> dict[str, list[torch.Tensor]]:
        """num_ppo_epochs passes over the rollout batch: one optimizer step per mini-batch,
        accumulating the gradients of its micro-batches."""
        args = self.args
        stats: dict[str, list[torch.Tensor]] = defaultdict(list)
        context = batch["queries"].size(1)
        micro = args.per_device_train_batch_size
        for _ in range(args.num_ppo_epochs):
            order = torch.randperm(args.local_batch_size, device=batch["queries"].device)
            for start in range(0, args.local_batch_size, args.local_mini_batch_size):
                mini = order[start:start + args.local_mini_batch_size]
                steps = math.ceil(len(mini) / micro)
                for k in range(steps):
                    rows = mini[k * micro:(k + 1) * micro]
                    ids = torch.cat([batch["queries"][rows], batch["responses"][rows]], dim=1)
                    mask = batch["mask"][rows]
                    full_mask = torch.cat([batch["query_mask"][rows], mask.long()], dim=1)
                    last = k == steps - 1
                    self.accelerator.gradient_state._set_sync_gradients(last)
                    with (contextlib.nullcontext() if last
                          else self.accelerator.no_sync(model)):
                        logprobs, entropy, values = self._forward(model, ids, full_mask,
                                                                  context)
                        pg_loss, pg_stats = policy_loss(
                            logprobs, batch["logprobs"][rows], batch["advantages"][rows], mask,
                            args.cliprange)
                        vf_loss, vf_clipfrac = value_loss(
                            values.float() * mask, batch["values"][rows],
                            batch["returns"][rows], mask, args.cliprange_value)
                        loss = pg_loss + args.vf_coef * vf_loss
                        self.accelerator.backward(loss / steps)
                    stats["policy/approxkl_avg"].append(pg_stats["approxkl"])
                    stats["policy/clipfrac_avg"].append(pg_stats["clipfrac"])
                    stats["loss/policy_avg"].append(pg_loss.detach())
                    stats["loss/value_avg"].append(vf_loss.detach())
                    stats["val/clipfrac_avg"].append(vf_clipfrac)
                    stats["policy/entropy_avg"].append(masked_mean(entropy.detach(), mask))
                    stats["val/ratio"].append(pg_stats["ratio"])
                grad_norm = self._clip_grad_norm(model)
                stats["grad_norm"].append(grad_norm.detach().float())
                self.optimizer.step()
                model.zero_grad(set_to_none=True)
        return stats

    def train(self, resume_from_checkpoint: str | bool | None = None,
              ignore_keys_for_eval: list[str] | None = None) -> TrainOutput:
        """Run `num_total_batches` rollout-and-update rounds; one global step per round."""
        if resume_from_checkpoint:
            raise ValueError("PPOTrainer does not resume from checkpoints: its rollouts are "
                             "not saved; start a new run from the saved policy instead")
        args = self.args
        self.is_in_train = True
        if args.activation_checkpointing:
            self._enable_activation_checkpointing()
        dataloader = self.get_train_dataloader()
        total = args.num_total_batches(len(self.train_dataset))
        self.state.compute_steps(args, total)  # the log, save and eval intervals
        self.state.max_steps = total
        self.state.num_train_epochs = math.ceil(total / len(dataloader))
        self.state.is_local_process_zero = self.is_local_process_zero()
        self.state.is_world_process_zero = self.is_world_process_zero()
        model = self._prepare_for_training(total, None)
        self.callback_handler.train_dataloader = dataloader
        self._tr_loss = torch.tensor(0.0, device=self.accelerator.device)
        self._total_loss_scalar = 0.0
        self._globalstep_last_logged = 0
        self._initial_global_step = 0
        self._initial_num_input_tokens_seen = 0
        start_time = time.time()
        self.control = self.callback_handler.on_train_begin(args, self.state, self.control)
        batches = iter(dataloader)
        epoch = 0
        self.state.episode = 0
        try:
            for update in range(total):
                try:
                    data = next(batches)
                except StopIteration:
                    epoch += 1
                    batches = iter(dataloader)
                    data = next(batches)
                self._epoch_position = (epoch, update % len(dataloader) + 1, len(dataloader))
                self.control = self.callback_handler.on_step_begin(args, self.state,
                                                                   self.control)
                model.eval()  # sampling and the rollout's values without dropout
                batch = self._rollout(model, data["input_ids"].to(self.accelerator.device),
                                      data["attention_mask"].to(self.accelerator.device))
                model.train()
                stats = self._ppo_epochs(model, batch)
                learning_rate = self._get_learning_rate()
                self.lr_scheduler.step()
                self.state.episode += args.batch_size
                self.state.global_step += 1
                self.state.epoch = update / max(len(dataloader), 1) + 1 / len(dataloader)
                losses = torch.stack(stats["loss/policy_avg"]) \
                    + args.vf_coef * torch.stack(stats["loss/value_avg"])
                self._tr_loss += losses.mean()
                self.control = self.callback_handler.on_step_end(args, self.state,
                                                                 self.control)
                if self.control.should_log:
                    self.log(self._metrics(batch, stats, learning_rate, start_time), start_time)
                if self.control.should_save:
                    self._save_checkpoint()
                    self.control = self.callback_handler.on_save(args, self.state,
                                                                 self.control)
                if self.control.should_training_stop:
                    break
            return self._finalize_training(self.state.episode, start_time)
        finally:
            self.is_in_train = False

    def _metrics(self, batch: dict[str, torch.Tensor], stats: dict[str, list[torch.Tensor]],
                 learning_rate: float, start_time: float) -> dict[str, float]:
        """The old TRL PPOTrainer's logged names, averaged over processes."""
        def mean(x: torch.Tensor) -> float:
            return self.accelerator.reduce(x.float().mean().detach(), "mean").item()

        mask = batch["mask"]
        ratios = torch.stack(stats["val/ratio"])
        non_score = batch["non_score_reward"].sum(1)
        logs = {
            "eps": int(self.state.episode / max(time.time() - start_time, 1e-9)),
            "objective/kl": mean(batch["kl"].sum(1)),
            "objective/entropy": mean((-batch["logprobs"] * mask).sum(1)),
            "objective/non_score_reward": mean(non_score),
            "objective/rlhf_reward": mean(batch["scores"] + non_score),
            "objective/scores": mean(batch["scores"]),
            "val/num_eos_tokens": self.accelerator.reduce(
                batch["has_eos"].sum().float(), "sum").item(),
            "val/ratio_var": mean(ratios.var()) if ratios.numel() > 1 else 0.0,
            "lr": learning_rate,
            "episode": self.state.episode,
        }
        for key in ("policy/approxkl_avg", "policy/clipfrac_avg", "loss/policy_avg",
                    "loss/value_avg", "val/clipfrac_avg", "policy/entropy_avg", "val/ratio"):
            logs[key] = mean(torch.stack(stats[key]))
        logs["grad_norm"] = mean(torch.stack(stats["grad_norm"]))
        steps = self.state.global_step - self._globalstep_last_logged
        loss = self.accelerator.reduce(self._tr_loss, "mean").item()
        self._total_loss_scalar += loss
        self._tr_loss.zero_()
        self._globalstep_last_logged = self.state.global_step
        logs["loss"] = loss / max(steps, 1)
        return logs


__all__ = ["PPOTrainer", "compute_gae", "policy_loss", "value_loss", "masked_whiten",
           "masked_mean", "masked_var", "kl_penalty"]
