"""GRPOTrainer: Group Relative Policy Optimization (trl.GRPOTrainer's names, dataset format,
reward functions, losses and metrics) on Cove's Trainer and generate.

Each prompt gets `num_generations` sampled completions; their rewards, compared within the
group (reward minus the group mean, over the group's std), are the advantages of a clipped
policy-gradient loss, with an optional KL penalty to a reference model.

    def short(completions, **kwargs):
        return [-len(c) / 10 for c in completions]

    trainer = GRPOTrainer(model="my-org/base", reward_funcs=short, train_dataset=prompts,
                          args=GRPOConfig("out", num_generations=4))
    trainer.train()
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

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
from cove.trl.grpo_config import GRPOConfig
from cove.trl.utils import MetricsTrainer, disable_dropout

RewardFunc = str | nn.Module | Callable[..., list]


# -- the math, as functions on tensors --------------------------------------------------------

def nanstd(x: torch.Tensor, dim: int | None = None, keepdim: bool = False) -> torch.Tensor:
    """The unbiased standard deviation ignoring NaNs (NaN where fewer than 2 values)."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    count = (~torch.isnan(x)).sum(dim=dim, keepdim=True)
    variance = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True) * count / (count - 1)
    variance = torch.where(count > 1, variance, torch.full_like(variance, float("nan")))
    std = variance.sqrt()
    return std if keepdim else (std.squeeze(dim) if dim is not None else std.reshape(()))


def group_advantages(rewards: torch.Tensor, num_generations: int, scale_rewards: str = "group",
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages of `rewards` ([groups * num_generations], a prompt's completions adjacent,
    NaN for an unscored one): reward minus its group's mean, divided by (std + 1e-4) where the
    std is the group's ("group"), the whole batch's ("batch"), or not at all ("none").
    Returns the advantages (NaN made 0) and the std used per completion."""
    grouped = rewards.view(-1, num_generations)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(num_generations)
    if scale_rewards == "batch":
        std = nanstd(rewards).expand_as(rewards)
    elif scale_rewards in ("group", "none"):
        std = nanstd(grouped, dim=1).repeat_interleave(num_generations)
    else:
        raise ValueError(f"scale_rewards must be 'group', 'batch' or 'none', got {scale_rewards!r}")
    advantages = rewards - mean
    if scale_rewards != "none":
        advantages = advantages / (std + 1e-4)
    return torch.nan_to_num(advantages, nan=0.0), std


def per_token_loss(per_token_logps: torch.Tensor, old_per_token_logps: torch.Tensor,
                   advantages: torch.Tensor, mask: torch.Tensor, *, loss_type: str = "dapo",
                   epsilon_low: float = 0.2, epsilon_high: float = 0.2,
                   delta: float | None = None, importance_sampling_level: str = "token",
                   beta: float = 0.0, ref_per_token_logps: torch.Tensor | None = None,
                   bias_correction_kl: bool = True,
                   sapo_temperature_pos: float = 1.0, sapo_temperature_neg: float = 1.05,
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The GRPO loss of each completion token ([B, T]; advantages [B] or [B, T]) and its parts:
    "ratio" (the importance weight, [B, T] or [B, 1] at sequence level, capped at `delta`) and "kl" (the k3
    estimate exp(r - p) - (r - p) - 1, with r the reference log-prob, when beta > 0; times the
    ratio when `bias_correction_kl`)."""
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    log_ratio = per_token_logps - old_per_token_logps
    if importance_sampling_level == "sequence":  # GSPO: one weight per sequence, a mean log-ratio
        log_ratio = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    ratio = torch.exp(log_ratio)
    if loss_type == "cispo":  # clip the (detached) weight, keep the log-prob's gradient
        loss = -torch.clamp(ratio, max=epsilon_high).detach() * advantages * per_token_logps
    elif loss_type == "sapo":  # a soft gate in place of the hard clip
        temperature = torch.where(advantages > 0, sapo_temperature_pos, sapo_temperature_neg)
        loss = -torch.sigmoid(temperature * (ratio - 1)) * 4 / temperature * advantages
    else:
        clipped = torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high)
        unclipped = ratio if delta is None else torch.clamp(ratio, max=delta)
        loss = -torch.min(unclipped * advantages, clipped * advantages)
    # the clip statistics read the ratio after the delta cap, as trl's do
    parts = {"ratio": ratio if loss_type in ("cispo", "sapo") else unclipped}
    if beta != 0.0:
        if ref_per_token_logps is None:
            raise ValueError("beta > 0 needs the reference log-probs (ref_per_token_logps)")
        diff = ref_per_token_logps - per_token_logps
        parts["kl"] = torch.exp(diff) - diff - 1
        if bias_correction_kl:  # the ratio's gradient counts even where its value is 1
            parts["kl"] = parts["kl"] * ratio
        loss = loss + beta * parts["kl"]
    return loss, parts


def aggregate_loss(token_loss: torch.Tensor, mask: torch.Tensor, loss_type: str, *,
                   max_completion_length: int | None = None,
                   num_items: torch.Tensor | float | None = None) -> torch.Tensor:
    """The loss of a micro-batch from its token losses, as `loss_type` normalises: "grpo" and
    "sapo" a mean per sequence then over sequences; "bnpo" over the batch's active tokens;
    "dr_grpo" over batch size x max_completion_length; "dapo" and "cispo" over `num_items`
    (the active tokens of an average micro-batch of the accumulation window; default: this
    batch's); "luspo" the summed sequence losses' mean."""
    masked = token_loss * mask
    if loss_type in ("grpo", "sapo"):
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return masked.sum() / mask.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        if max_completion_length is None:
            raise ValueError("loss_type 'dr_grpo' needs max_completion_length")
        return masked.sum() / (token_loss.size(0) * max_completion_length)
    if loss_type in ("dapo", "cispo"):
        items = mask.sum() if num_items is None else torch.as_tensor(num_items)
        return masked.sum() / items.clamp(min=1.0)
    if loss_type == "luspo":
        return masked.sum(-1).mean()
    raise ValueError(f"unknown loss_type {loss_type!r}")


def completion_logps(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     completion_length: int, temperature: float = 1.0,
                     entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probabilities of the last `completion_length` tokens of `input_ids` under `model`
    (logits divided by `temperature`, as they were sampled) and, if asked, the entropy of each
    of those positions' distributions."""
    # positions count only real tokens, as in generate (prompts are left-padded)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                logits_to_keep=completion_length + 1)
    logits = out["logits"] if isinstance(out, dict) else out.logits
    logits = logits[:, -completion_length - 1:-1].float() / temperature
    logp = torch.log_softmax(logits, dim=-1)
    targets = input_ids[:, -completion_length:]
    token_logps = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropies = -(logp.exp() * logp).sum(-1) if entropy else None
    return token_logps, entropies


# -- data ---------------------------------------------------------------------------------------

class RepeatSampler(torch.utils.data.Sampler):
    """Indices of `batch_size` prompts at a time, each prompt `num_generations` times in a row,
    each such batch `repeat_count` times (for steps_per_generation x num_iterations steps)."""

    def __init__(self, size: int, num_generations: int, batch_size: int, repeat_count: int,
                 shuffle: bool, seed: int) -> None:
        self.size, self.num_generations = size, num_generations
        self.batch_size, self.repeat_count = batch_size, repeat_count
        self.shuffle, self.seed = shuffle, seed
        self._generator = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[int]:
        order = (torch.randperm(self.size, generator=self._generator).tolist() if self.shuffle
                 else list(range(self.size)))
        for start in range(0, self.size - self.batch_size + 1, self.batch_size):
            chunk = order[start:start + self.batch_size]
            for _ in range(self.repeat_count):
                for index in chunk:
                    yield from [index] * self.num_generations

    def __len__(self) -> int:
        return (self.size // self.batch_size) * self.batch_size * self.num_generations \
            * self.repeat_count


def _keep_rows(features: list[dict]) -> list[dict]:
    """The collator: the rows as they are (generation and rewards need the raw prompts)."""
    return features


# -- the trainer --------------------------------------------------------------------------------

class GRPOTrainer(MetricsTrainer):
    """Trains a causal LM with GRPO on a prompt-only dataset (column "prompt", standard or
    conversational; other columns go to the reward functions).

    `reward_funcs`: one or a list of reward functions: Python callables called with keyword
    arguments `prompts`, `completions`, `completion_ids`, `trainer_state` and the dataset's
    other columns, returning one float (or None: not applicable) per completion; or sequence
    classification models (a model or an id, scored on prompt + completion, first logit).
    `reward_processing_classes`: the tokenizers of the reward models (default: each model's).
    `peft_config` trains an adapter; with beta > 0 the reference is then the base model with
    the adapter disabled, else a frozen copy of the model.
    """

    skip_nan = True  # a reward function may give None (NaN) for a completion it does not judge

    _tag_names = ["trl", "grpo"]

    def __init__(self, model: str | nn.Module, reward_funcs: RewardFunc | list[RewardFunc],
                 args: GRPOConfig | None = None, train_dataset: Any = None,
                 eval_dataset: Any = None, processing_class: Any = None,
                 reward_processing_classes: Any = None,
                 callbacks: list | None = None,
                 optimizers: tuple[torch.optim.Optimizer | None, Any] = (None, None),
                 peft_config: Any = None) -> None:
        if args is None:
            name = model if isinstance(model, str) else getattr(model, "name_or_path", "model")
            args = GRPOConfig(f"{str(name).split('/')[-1]}-GRPO")
        if not isinstance(args, GRPOConfig):
            raise TypeError(f"args must be a GRPOConfig, got {type(args).__name__}")
        if train_dataset is None:
            raise ValueError("GRPOTrainer needs a train_dataset of prompts")
        for split, dataset in [("train", train_dataset)] + (
                list(eval_dataset.items()) if isinstance(eval_dataset, dict)
                else [("eval", eval_dataset)] if eval_dataset is not None else []):
            require_format(column_names(dataset), f"GRPOTrainer ({split} dataset)",
                           ("prompt-only",))
        model = load_model(model, args)
        processing_class = load_processing_class(model, processing_class)
        self._tokenizer = getattr(processing_class, "tokenizer", processing_class)
        model = apply_peft(model, peft_config, args)
        if args.disable_dropout:
            disable_dropout(model)

        self.reward_funcs, self.reward_processing_classes, self.reward_func_names = \
            self._load_reward_funcs(reward_funcs, reward_processing_classes, args)
        if args.reward_weights is None:
            weights = [1.0] * len(self.reward_funcs)
        elif len(args.reward_weights) != len(self.reward_funcs):
            raise ValueError(f"reward_weights has {len(args.reward_weights)} weights for "
                             f"{len(self.reward_funcs)} reward functions")
        else:
            weights = args.reward_weights
        self.reward_weights = torch.tensor(weights, dtype=torch.float32)

        self.num_generations = args.num_generations
        self.num_iterations = args.num_iterations
        self.beta = args.beta
        self.loss_type = args.loss_type
        self.epsilon_low = args.epsilon
        self.epsilon_high = args.epsilon_high if args.epsilon_high is not None else args.epsilon
        self.temperature = args.temperature
        self.max_completion_length = args.max_completion_length
        self.ref_model = None
        if self.beta != 0.0 and not is_peft_model(model):
            self.ref_model = create_reference_model(model)

        super().__init__(model=model, args=args, data_collator=_keep_rows,
                         train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processing_class, callbacks=callbacks,
                         optimizers=optimizers)
        device = self.accelerator.device
        if self.ref_model is not None:
            self.ref_model.to(device)
        for func in self.reward_funcs:
            if isinstance(func, nn.Module):
                func.to(device).eval()

        eos = {self._tokenizer.eos_token_id}
        configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
        eos.update(configured if isinstance(configured, list) else [configured])
        self.eos_token_ids = sorted(e for e in eos if e is not None)
        if not self.eos_token_ids:
            raise ValueError("the tokenizer has no eos_token: GRPOTrainer needs one to know "
                             "where a completion ends")
        from cove.generation import GenerationConfig

        self.generation_config = GenerationConfig(
            max_new_tokens=args.max_completion_length, do_sample=True,
            pad_token_id=self._tokenizer.pad_token_id, eos_token_id=self.eos_token_ids,
            temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
            min_p=args.min_p, repetition_penalty=args.repetition_penalty,
            **(args.generation_kwargs or {}))
        self._step = 0
        self._buffered_inputs: list[dict[str, Any]] | None = None

    # -- reward functions -------------------------------------------------------------------

    @staticmethod
    def _load_reward_funcs(reward_funcs: Any, processing_classes: Any, args: GRPOConfig,
                           ) -> tuple[list, list, list[str]]:
        funcs = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
        if not funcs:
            raise ValueError("GRPOTrainer needs at least one reward function")
        if processing_classes is None:
            processing_classes = [None] * len(funcs)
        elif not isinstance(processing_classes, list):
            processing_classes = [processing_classes]
        if len(processing_classes) != len(funcs):
            raise ValueError(f"reward_processing_classes has {len(processing_classes)} entries "
                             f"for {len(funcs)} reward functions")
        loaded, tokenizers, names = [], [], []
        for func, tokenizer in zip(funcs, processing_classes, strict=True):
            if isinstance(func, str):
                from cove.models.auto import AutoModelForSequenceClassification

                func = load_model(func, args, AutoModelForSequenceClassification, num_labels=1)
            if isinstance(func, nn.Module):
                tokenizer = load_processing_class(func, tokenizer)
                pad = getattr(tokenizer, "tokenizer", tokenizer).pad_token_id
                func.config.pad_token_id = pad  # the model scores the last non-pad token
                for parameter in func.parameters():
                    parameter.requires_grad_(False)
                source = getattr(func, "name_or_path", None) or type(func).__name__
                names.append(str(source).rstrip("/").split("/")[-1])
            elif callable(func):
                tokenizer = None
                names.append(getattr(func, "__name__", type(func).__name__))
            else:
                raise TypeError(f"a reward function must be a callable, a sequence "
                                f"classification model or its id, got {type(func).__name__}")
            loaded.append(func)
            tokenizers.append(tokenizer)
        return loaded, tokenizers, names

    def _calculate_rewards(self, inputs: list[dict], prompts: list, completions: list,
                           completion_ids: list[list[int]]) -> torch.Tensor:
        """[completions, reward functions] on all processes; NaN where a function gave None."""
        device = self.accelerator.device
        rewards = torch.zeros(len(prompts), len(self.reward_funcs), device=device)
        extra = {key: [row[key] for row in inputs] for key in inputs[0]
                 if key not in ("prompt", "completion", "completion_ids")}
        for i, (func, tokenizer, name) in enumerate(zip(
                self.reward_funcs, self.reward_processing_classes, self.reward_func_names,
                strict=True)):
            if isinstance(func, nn.Module):
                if is_conversational({"prompt": prompts[0]}):
                    texts = [apply_chat_template({"messages": p + c}, tokenizer,
                                                 **(self.args.chat_template_kwargs or {}))["text"]
                             for p, c in zip(prompts, completions, strict=True)]
                else:
                    texts = [p + c for p, c in zip(prompts, completions, strict=True)]
                batch = tokenizer(text=texts, return_tensors="pt", padding=True,
                                  padding_side="right", add_special_tokens=False)
                batch = {k: v.to(device) for k, v in batch.items()
                         if k in ("input_ids", "attention_mask")}
                with torch.inference_mode():
                    rewards[:, i] = func(**batch)["logits"][:, 0].float()
                continue
            values = func(prompts=prompts, completions=completions,
                          completion_ids=completion_ids, trainer_state=self.state, **extra)
            if len(values) != len(prompts):
                raise ValueError(f"the reward function {name!r} returned {len(values)} rewards "
                                 f"for {len(prompts)} completions: it must return one per "
                                 "completion")
            rewards[:, i] = torch.tensor([float("nan") if v is None else float(v) for v in values],
                                         dtype=torch.float32, device=device)
        return self.accelerator.gather(rewards)

    # -- data ---------------------------------------------------------------------------------

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:  # what generation and the rewards read
            self._signature_columns = ["prompt"]

    def get_train_dataloader(self) -> torch.utils.data.DataLoader:
        """Generation batches (per_device_train_batch_size x steps_per_generation rows), each
        prompt num_generations times, each batch repeated for every step that uses it."""
        args = self.args
        sampler = RepeatSampler(
            len(self.train_dataset), self.num_generations,
            args.generation_batch_size // self.num_generations,
            self.num_iterations * args.steps_per_generation, args.shuffle_dataset, args.seed)
        return self._dataloader(self.train_dataset, "training",
                                self._train_batch_size * args.steps_per_generation, sampler,
                                training=True)

    def get_eval_dataloader(self, eval_dataset: Any = None) -> torch.utils.data.DataLoader:
        """Evaluation batches in order, each prompt num_generations times."""
        if isinstance(eval_dataset, str):
            eval_dataset = self.eval_dataset[eval_dataset]
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("GRPOTrainer: evaluation requires an eval_dataset")
        batch = self.args.per_device_eval_batch_size * self.args.world_size
        if batch % self.num_generations:
            raise ValueError(f"the global eval batch size ({batch}) must be divisible by "
                             f"num_generations ({self.num_generations})")
        sampler = RepeatSampler(len(dataset), self.num_generations, 1, 1, False, self.args.seed)
        return self._dataloader(dataset, "evaluation", self.args.eval_batch_size, sampler,
                                training=False)

    # -- generation and scoring -------------------------------------------------------------

    def _prompt_ids(self, prompts: list) -> list[list[int]]:
        if is_conversational({"prompt": prompts[0]}):
            # the rendered template already holds its special tokens
            texts = [apply_chat_template({"prompt": p}, self.processing_class,
                                         **(self.args.chat_template_kwargs or {}))["prompt"]
                     for p in prompts]
            return self._tokenizer(text=texts, add_special_tokens=False)["input_ids"]
        return self._tokenizer(text=prompts)["input_ids"]

    def _pad(self, rows: list[list[int]], value: int, left: bool) -> torch.Tensor:
        """`rows` as one tensor on the device, padded with `value` on the left or right."""
        width = max(len(r) for r in rows)
        out = torch.full((len(rows), width), value, dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                if left:
                    out[i, width - len(r):] = torch.tensor(r)
                else:
                    out[i, :len(r)] = torch.tensor(r)
        return out.to(self.accelerator.device)

    def _generate(self, prompt_ids: list[list[int]]) -> list[list[int]]:
        """Sampled completions, each up to and including its first EOS."""
        pad = self._tokenizer.pad_token_id
        ids = self._pad(prompt_ids, pad, left=True)
        mask = self._pad([[1] * len(p) for p in prompt_ids], 0, left=True)
        model = self.accelerator.unwrap_model(self.model_wrapped)
        with torch.no_grad():
            sequences = model.generate(input_ids=ids, attention_mask=mask,
                                       generation_config=self.generation_config)
        completions = []
        for row in sequences[:, ids.size(1):].tolist():
            end = next((j for j, t in enumerate(row) if t in self.eos_token_ids), None)
            completions.append(row if end is None else row[:end + 1])
        return completions

    def _generate_and_score_completions(self, inputs: list[dict]) -> dict[str, Any]:
        device = self.accelerator.device
        mode = "train" if self.model.training else "eval"
        metrics = self._metrics[mode]
        prompts = [row["prompt"] for row in inputs]
        prompt_ids_list = self._prompt_ids(prompts)
        completion_ids_list = self._generate(prompt_ids_list)
        if is_conversational({"prompt": prompts[0]}):
            completions = [[{"role": "assistant", "content": text}] for text in
                           self._tokenizer.batch_decode(completion_ids_list,
                                                        skip_special_tokens=True)]
        else:
            completions = self._tokenizer.batch_decode(completion_ids_list,
                                                       skip_special_tokens=True)
        pad = self._tokenizer.pad_token_id
        prompt_ids = self._pad(prompt_ids_list, pad, left=True)
        prompt_mask = self._pad([[1] * len(p) for p in prompt_ids_list], 0, left=True)
        completion_ids = self._pad([c or [pad] for c in completion_ids_list], pad, left=False)
        completion_mask = self._pad([[1] * len(c) for c in completion_ids_list], 0, left=False)
        # a completion that ends neither with EOS nor with padding hit max_completion_length
        ends = set(self.eos_token_ids) | {pad}
        is_truncated = torch.tensor([not c or c[-1] not in ends for c in completion_ids_list],
                                    device=device)
        if self.args.mask_truncated_completions:
            completion_mask = completion_mask * (~is_truncated).unsqueeze(1).long()
        num_items = self.accelerator.gather(completion_mask.sum()).sum()

        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        length = completion_ids.size(1)
        generate_every = self.args.steps_per_generation * self.num_iterations
        with torch.no_grad():
            # old log-probs are needed when the policy will have moved before a batch is used
            old_logps = None
            if mode == "train" and self.args.gradient_accumulation_steps % generate_every:
                old_logps, _ = completion_logps(self.model, input_ids, attention_mask, length,
                                                self.temperature)
            ref_logps = None
            if self.beta != 0.0:
                if self.ref_model is not None:
                    ref_logps, _ = completion_logps(self.ref_model, input_ids, attention_mask,
                                                    length, self.temperature)
                else:
                    model = self.accelerator.unwrap_model(self.model)
                    with model.disable_adapter():
                        ref_logps, _ = completion_logps(model, input_ids, attention_mask,
                                                        length, self.temperature)

        rewards_per_func = self._calculate_rewards(inputs, prompts, completions,
                                                   completion_ids_list)
        weighted = (rewards_per_func * self.reward_weights.to(device)).nansum(dim=1)
        unscored = torch.isnan(rewards_per_func).all(dim=1)
        weighted[unscored] = float("nan")
        advantages, std = group_advantages(weighted, self.num_generations,
                                           self.args.scale_rewards)
        rank = self.accelerator.process_index
        advantages = advantages[rank * len(prompts):(rank + 1) * len(prompts)]

        lengths = self.accelerator.gather(torch.tensor([len(c) for c in completion_ids_list],
                                                       device=device)).float()
        truncated = self.accelerator.gather(is_truncated)
        if mode == "train":
            self.state.num_input_tokens_seen += int(
                self.accelerator.gather(prompt_mask.sum()).sum().item() + lengths.sum().item())
        metrics["num_tokens"] = [self.state.num_input_tokens_seen]
        metrics["completions/mean_length"].append(lengths.mean().item())
        metrics["completions/min_length"].append(lengths.min().item())
        metrics["completions/max_length"].append(lengths.max().item())
        metrics["completions/clipped_ratio"].append(truncated.float().mean().item())
        terminated = lengths[~truncated] if (~truncated).any() else torch.zeros(1, device=device)
        metrics["completions/mean_terminated_length"].append(terminated.mean().item())
        metrics["completions/min_terminated_length"].append(terminated.min().item())
        metrics["completions/max_terminated_length"].append(terminated.max().item())
        for i, name in enumerate(self.reward_func_names):
            metrics[f"rewards/{name}/mean"].append(torch.nanmean(rewards_per_func[:, i]).item())
            metrics[f"rewards/{name}/std"].append(nanstd(rewards_per_func[:, i]).item())
        metrics["reward"].append(torch.nanmean(weighted).item())
        metrics["reward_std"].append(nanstd(weighted).item())
        metrics["frac_reward_zero_std"].append(
            torch.isclose(std, torch.zeros_like(std)).float().mean().item())

        out = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
               "completion_ids": completion_ids, "completion_mask": completion_mask,
               "advantages": advantages, "num_items_in_batch": num_items}
        if old_logps is not None:
            out["old_per_token_logps"] = old_logps
        if ref_logps is not None:
            out["ref_per_token_logps"] = ref_logps
        return out

    # -- training -------------------------------------------------------------------------------

    def _prepare_inputs(self, generation_batch: Any) -> dict[str, Any]:
        """Train: generate once per steps_per_generation x num_iterations steps, shuffle the
        completions, and hand out one slice per step. Eval: generate for the batch."""
        if not self.model.training:
            return self._generate_and_score_completions(generation_batch)
        steps = self.args.steps_per_generation
        if self._step % (steps * self.num_iterations) == 0 or self._buffered_inputs is None:
            batch = self._generate_and_score_completions(generation_batch)
            rows = batch["prompt_ids"].size(0)
            order = torch.randperm(rows, device=batch["prompt_ids"].device)
            per_step = rows // steps
            self._buffered_inputs = [
                {k: (v[order[i * per_step:(i + 1) * per_step]]
                     if isinstance(v, torch.Tensor) and v.dim() > 0 else v)
                 for k, v in batch.items()} for i in range(steps)]
        return self._buffered_inputs[self._step % steps]

    def training_step(self, model: nn.Module, inputs: Any,
                      num_items_in_batch: torch.Tensor | None = None) -> torch.Tensor:
        loss = super().training_step(model, inputs, None)
        self._step += 1
        return loss

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
        """The micro-batch's loss before the Trainer's division by the accumulation steps."""
        if return_outputs:
            raise ValueError("GRPOTrainer does not return outputs from compute_loss")
        mode = "train" if model.training else "eval"
        mask = inputs["completion_mask"]
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], mask], dim=1)
        logps, entropies = completion_logps(model, input_ids, attention_mask, mask.size(1),
                                            self.temperature, entropy=True)
        old = inputs.get("old_per_token_logps")
        advantages = inputs["advantages"]
        token_loss, parts = per_token_loss(
            logps, logps.detach() if old is None else old, advantages, mask,
            loss_type=self.loss_type, epsilon_low=self.epsilon_low,
            epsilon_high=self.epsilon_high, delta=self.args.delta,
            importance_sampling_level=self.args.importance_sampling_level, beta=self.beta,
            ref_per_token_logps=inputs.get("ref_per_token_logps"),
            bias_correction_kl=self.args.use_bias_correction_kl,
            sapo_temperature_pos=self.args.sapo_temperature_pos,
            sapo_temperature_neg=self.args.sapo_temperature_neg)
        # dapo/cispo: tokens of an average micro-batch of this process (the Trainer then
        # divides by the accumulation steps, so the window's loss is over all its tokens)
        items = inputs["num_items_in_batch"] / self.accelerator.num_processes
        if mode == "train":
            items = items / self.args.steps_per_generation
        loss = aggregate_loss(token_loss, mask, self.loss_type,
                              max_completion_length=self.max_completion_length, num_items=items)

        metrics = self._metrics[mode]

        def masked_mean(x: torch.Tensor) -> float:
            if x.size(1) == 1:  # one value per sequence
                total = torch.stack([x.sum(), torch.tensor(float(x.size(0)), device=x.device)])
            else:
                total = torch.stack([(x * mask).sum(), mask.sum().float()])
            total = self.accelerator.reduce(total, "sum")
            return (total[0] / total[1].clamp(min=1.0)).item()

        if self.beta != 0.0:
            metrics["kl"].append(masked_mean(parts["kl"]))
        metrics["entropy"].append(masked_mean(entropies))
        if self.loss_type not in ("cispo", "sapo"):
            adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
            ratio = parts["ratio"]
            low = ((ratio < 1 - self.epsilon_low) & (adv < 0)).float()
            high = ((ratio > 1 + self.epsilon_high) & (adv > 0)).float()
            metrics["clip_ratio/low_mean"].append(masked_mean(low))
            metrics["clip_ratio/high_mean"].append(masked_mean(high))
            metrics["clip_ratio/region_mean"].append(masked_mean(torch.maximum(low, high)))

            def per_sequence(x: torch.Tensor) -> torch.Tensor:
                if x.size(1) == 1:
                    return x.squeeze(1)
                return (x * mask).sum(-1) / mask.sum(-1)

            metrics["clip_ratio/low_min"].append(
                torch.nan_to_num(self.accelerator.gather(per_sequence(low)), nan=float("inf"))
                .min().item())
            metrics["clip_ratio/high_max"].append(
                torch.nan_to_num(self.accelerator.gather(per_sequence(high)), nan=float("-inf"))
                .max().item())
        elif self.loss_type == "cispo":
            adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
            metrics["cispo_clip_ratio"].append(
                masked_mean(((parts["ratio"] > self.epsilon_high) & (adv > 0)).float()))
        return loss

    def prediction_step(self, model: nn.Module, inputs: Any, prediction_loss_only: bool,
                        ignore_keys: list[str] | None = None) -> tuple:
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs).detach()
        return loss, None, None


__all__ = ["GRPOTrainer", "group_advantages", "per_token_loss", "aggregate_loss",
           "completion_logps", "nanstd", "RepeatSampler"]
