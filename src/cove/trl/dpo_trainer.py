"""DPOTrainer: Direct Preference Optimization (Rafailov et al. 2023) with trl's dataset formats,
config, losses and logged metrics, on Cove's Trainer.

    from cove.trl import DPOConfig, DPOTrainer

    trainer = DPOTrainer(model="my-org/sft-model", train_dataset=pairs,
                         args=DPOConfig("out", beta=0.1))
    trainer.train()

How a step is made cheap: prompt+chosen and prompt+rejected rows go through the model in one
forward. With Cove's own decoders (Llama family, GPT-2) the batch is one row without padding:
per pair, the prompt once, then the chosen and the rejected completions, each attending to the
prompt and itself (a PackedCausalMask layout), and the LM head only at the positions that
predict a completion token; with other models the rows are padded to the longest and the head
runs from the first such position. A completion token's log-prob is its logit minus the
logsumexp of its row of logits (no log-softmax copy of the vocabulary); the reference runs
under no_grad, once per batch for both completions (or never, with precompute_ref_log_probs).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cove.models.layers import PackedCausalMask
from cove.trl.base import (
    apply_peft,
    create_reference_model,
    is_peft_model,
    load_model,
    load_processing_class,
)
from cove.trl.data_utils import (
    column_names,
    extract_prompt,
    is_conversational,
    require_format,
)
from cove.trl.dpo_config import DPOConfig
from cove.trl.reward_trainer import PREFERENCE_FORMATS, add_eos, template_kwargs, tokenize
from cove.trl.utils import (
    MetricsTrainer,
    common_prefix_length,
    disable_dropout,
    packs_sequences,
    pad_right,
    unpad_rows,
)

# the fewest tokens a pair's two rows must start with for the pair to share them
_MIN_SHARED = 32


def _pair_layout(input_ids: torch.Tensor, keep: torch.Tensor,
                 ) -> tuple[torch.Tensor, torch.Tensor, PackedCausalMask, torch.Tensor]:
    """The preference batch's rows (the n prompt+chosen rows, then the n prompt+rejected ones;
    `keep`: their real tokens, right-padded) as one row for a Cove decoder: per pair, the
    tokens both rows start with (when at least _MIN_SHARED), the rest of the chosen row, the
    rest of the rejected row.
    (input ids [1, N], position ids [1, N], the attention layout, index [2n, L]: where each
    row's token is in the new row, -1 on padding)."""
    n = len(input_ids) // 2
    lengths = keep.sum(1).tolist()
    device = input_ids.device
    index = torch.full_like(input_ids, -1)
    ids, positions, blocks, at = [], [], [], 0
    for i in range(n):
        a, b = input_ids[i, :lengths[i]], input_ids[n + i, :lengths[n + i]]
        m = min(len(a), len(b))
        differ = (a[:m] != b[:m]).nonzero()
        p = int(differ[0]) if len(differ) else m
        if p < _MIN_SHARED:
            p = 0  # too short to pay for the continuation's extra attention call
        ids += [a, b[p:]]
        positions += [torch.arange(len(a), device=device),
                      torch.arange(p, len(b), device=device)]
        blocks.append((p, len(a) - p, len(b) - p))
        index[i, :len(a)] = torch.arange(at, at + len(a), device=device)
        index[n + i, :p] = index[i, :p]
        index[n + i, p:len(b)] = torch.arange(at + len(a), at + len(a) + len(b) - p,
                                              device=device)
        at += len(a) + len(b) - p
    return (torch.cat(ids)[None], torch.cat(positions)[None], PackedCausalMask([blocks], device),
            index)


@dataclass
class DataCollatorForPreference:
    """Batches of {"prompt_ids", "chosen_ids", "rejected_ids"[, "ref_chosen_logps",
    "ref_rejected_logps"]} rows: input_ids, attention_mask and completion_mask (1 on completion
    tokens) with the prompt+chosen rows first, then the prompt+rejected ones, each cut to
    `max_length` ("keep_start": its first tokens, "keep_end": its last) and padded on the
    right to the longest."""

    pad_token_id: int
    max_length: int | None = None
    truncation_mode: str = "keep_start"
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sequences, masks = [], []
        for key in ("chosen_ids", "rejected_ids"):
            for e in examples:
                sequences.append(list(e["prompt_ids"]) + list(e[key]))
                masks.append([0] * len(e["prompt_ids"]) + [1] * len(e[key]))
        if self.max_length is not None:
            cut = slice(None, self.max_length) if self.truncation_mode == "keep_start" \
                else slice(-self.max_length, None)
            sequences = [s[cut] for s in sequences]
            masks = [m[cut] for m in masks]
        multiple = self.pad_to_multiple_of
        out = {"input_ids": pad_right(sequences, self.pad_token_id, multiple),
               "attention_mask": pad_right([[1] * len(s) for s in sequences], 0, multiple),
               "completion_mask": pad_right(masks, 0, multiple)}
        for key in ("ref_chosen_logps", "ref_rejected_logps"):
            if key in examples[0]:
                out[key] = torch.tensor([float(e[key]) for e in examples])
        return out


class DPOTrainer(MetricsTrainer):
    """trl.DPOTrainer on Cove's Trainer: trains a causal LM on preference pairs (standard or
    conversational, explicit or implicit prompt; EOS appended to standard completions) with
    the DPO loss on the summed completion log-probs of policy and reference.

    The reference: `ref_model` when given; else, for a model with an adapter (`peft_config`,
    or a PeftModel), the same model with the adapter disabled (no second copy); else a frozen
    copy of the model as it starts. With `precompute_ref_log_probs`, the reference's log-probs
    are computed once before training (by the model itself when no ref_model is given) and kept
    as the columns "ref_chosen_logps" and "ref_rejected_logps".

    Logged (averaged between logs): rewards/chosen, rewards/rejected (beta * log-ratio to the
    reference), rewards/accuracies (chosen > rejected, strictly), rewards/margins, logps/chosen,
    logps/rejected, logits/chosen, logits/rejected (mean logit over the vocabulary and the
    completion tokens), entropy, mean_token_accuracy (chosen tokens predicted by the argmax),
    num_tokens.
    """

    _tag_names = ["trl", "dpo"]

    def __init__(self, model: Any, ref_model: nn.Module | None = None,
                 args: DPOConfig | None = None, data_collator: Callable | None = None,
                 train_dataset: Any = None, eval_dataset: Any = None,
                 processing_class: Any = None, compute_metrics: Callable | None = None,
                 callbacks: list | None = None, optimizers: tuple[Any, Any] = (None, None),
                 optimizer_cls_and_kwargs: tuple[type, dict] | None = None,
                 preprocess_logits_for_metrics: Callable | None = None,
                 peft_config: Any = None) -> None:
        if args is None:
            name = model if isinstance(model, str) else \
                getattr(model.config, "_name_or_path", "") or "model"
            args = DPOConfig(f"{str(name).rstrip('/').split('/')[-1]}-DPO")
        if train_dataset is None:
            raise ValueError("DPOTrainer needs a train_dataset")
        if ref_model is not None and ref_model is model:
            raise ValueError("ref_model is the model being trained: pass a separate copy, or "
                             "ref_model=None for the trainer to make the reference")
        model = load_model(model, args)
        processing_class = load_processing_class(model, processing_class)
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        base = model.get_base_model() if is_peft_model(model) else model
        base.config.pad_token_id = tokenizer.pad_token_id
        if getattr(base, "generation_config", None) is not None:
            base.generation_config.pad_token_id = tokenizer.pad_token_id
        model = apply_peft(model, peft_config, args)
        if ref_model is None and not is_peft_model(model) and not args.precompute_ref_log_probs:
            ref_model = create_reference_model(model)
        elif ref_model is not None:
            ref_model.requires_grad_(False)
            ref_model.eval()
        if args.disable_dropout:
            disable_dropout(model)
            if ref_model is not None:
                disable_dropout(ref_model)
        if data_collator is None:
            data_collator = DataCollatorForPreference(tokenizer.pad_token_id, args.max_length,
                                                      args.truncation_mode,
                                                      args.pad_to_multiple_of)
        train_dataset = self._prepare_dataset(train_dataset, processing_class, args, "train")
        if eval_dataset is not None:
            eval_dataset = self._prepare_eval(eval_dataset, processing_class, args)
        super().__init__(model=model, args=args, data_collator=data_collator,
                         train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processing_class, compute_metrics=compute_metrics,
                         callbacks=callbacks, optimizers=optimizers,
                         optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
                         preprocess_logits_for_metrics=preprocess_logits_for_metrics)
        self.label_names = []  # the loss comes from the pairs, not from a labels column
        self.ref_model = ref_model.to(self.accelerator.device) if ref_model is not None \
            else None
        self.beta = args.beta
        self.loss_types = list(args.loss_type)
        self.loss_weights = list(args.loss_weights or [1.0] * len(self.loss_types))
        self._total_train_tokens = 0
        if args.precompute_ref_log_probs:
            self.train_dataset = self._precompute_ref_logps(
                self.train_dataset, args.precompute_ref_batch_size
                or args.per_device_train_batch_size)
            if self.eval_dataset is not None:
                self.eval_dataset = self._precompute_eval(self.eval_dataset)

    # -- data --------------------------------------------------------------------------------

    def _prepare_eval(self, eval_dataset: Any, processing_class: Any, args: DPOConfig) -> Any:
        if isinstance(eval_dataset, dict):
            return {k: self._prepare_dataset(d, processing_class, args, k)
                    for k, d in eval_dataset.items()}
        return self._prepare_dataset(eval_dataset, processing_class, args, "eval")

    @staticmethod
    def _prepare_dataset(dataset: Any, processing_class: Any, args: DPOConfig,
                         name: str) -> Any:
        """Rows with "prompt_ids", "chosen_ids" and "rejected_ids" as trl makes them: the
        prompt extracted when implicit, EOS appended to standard completions, the prompt (with
        the generation prompt, for conversations) and prompt+completion tokenized, and the
        completion starting where the tokens of prompt and prompt+completion part. With
        max_length and "keep_start", pairs whose prompt alone fills max_length are dropped."""
        columns = column_names(dataset)
        map_kwargs = {"num_proc": args.dataset_num_proc} if args.dataset_num_proc else {}
        if not {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(columns):
            require_format(columns, "DPOTrainer", PREFERENCE_FORMATS)
            if "prompt" not in columns:
                dataset = dataset.map(extract_prompt, **map_kwargs)
            tokenizer = getattr(processing_class, "tokenizer", processing_class)
            if not is_conversational(next(iter(dataset))):
                dataset = dataset.map(add_eos, fn_kwargs={"eos_token": tokenizer.eos_token},
                                      **map_kwargs)

            def tokenize_pair(example: dict[str, Any]) -> dict[str, list[int]]:
                prompt = example["prompt"]
                conversational = is_conversational(example)
                kwargs = template_kwargs(example) if conversational else {}
                prompt_kwargs = {**kwargs, "add_generation_prompt": True} if conversational \
                    else {}
                prompt_ids = tokenize(processing_class, prompt, **prompt_kwargs)
                full = {k: tokenize(processing_class, prompt + example[k], **kwargs)
                        for k in ("chosen", "rejected")}
                # the prompt's tokens may differ at the boundary once a completion follows
                # (merges, templates): the completion starts where both full rows part from it
                start = min(common_prefix_length(prompt_ids, ids) for ids in full.values())
                return {"prompt_ids": prompt_ids[:start],
                        "chosen_ids": full["chosen"][start:],
                        "rejected_ids": full["rejected"][start:]}

            dataset = dataset.map(tokenize_pair, **map_kwargs)
        if args.max_length is not None and args.truncation_mode == "keep_start":
            limit = args.max_length
            dataset = dataset.filter(lambda e: len(e["prompt_ids"]) < limit, **map_kwargs)
        return dataset

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = ["prompt_ids", "chosen_ids", "rejected_ids",
                                       "ref_chosen_logps", "ref_rejected_logps"]

    def _precompute_eval(self, eval_dataset: Any) -> Any:
        size = self.args.precompute_ref_batch_size or self.args.per_device_eval_batch_size
        if isinstance(eval_dataset, dict):
            return {k: self._precompute_ref_logps(d, size) for k, d in eval_dataset.items()}
        return self._precompute_ref_logps(eval_dataset, size)

    def _precompute_ref_logps(self, dataset: Any, batch_size: int) -> Any:
        """`dataset` with the reference's summed completion log-probs of each pair as the
        columns "ref_chosen_logps" and "ref_rejected_logps"."""
        if not callable(getattr(dataset, "add_column", None)):
            raise ValueError("precompute_ref_log_probs needs a map-style dataset (with "
                             f"add_column), got {type(dataset).__name__}")
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                             collate_fn=self._collate_tokenized)
        chosen, rejected = [], []
        for batch in loader:
            batch = self._prepare_inputs(batch)
            c, r = self._reference_logps(batch).chunk(2)
            chosen.append(c.cpu())
            rejected.append(r.cpu())
        if not chosen:
            return dataset
        return (dataset.add_column("ref_chosen_logps", torch.cat(chosen).tolist())
                .add_column("ref_rejected_logps", torch.cat(rejected).tolist()))

    def _collate_tokenized(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        keep = ("prompt_ids", "chosen_ids", "rejected_ids")
        return self.data_collator([{k: r[k] for k in keep} for r in rows])

    def evaluate(self, eval_dataset: Any = None, ignore_keys: list[str] | None = None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:
        """Trainer.evaluate, tokenizing a raw preference dataset passed here first (and
        computing its reference log-probs with precompute_ref_log_probs)."""
        if eval_dataset is not None and not isinstance(eval_dataset, str):
            if self.args.precompute_ref_log_probs and self.ref_model is None \
                    and not is_peft_model(self.model) and self.state.global_step > 0:
                raise ValueError(
                    "cannot compute reference log-probs for a new eval dataset after training: "
                    "with precompute_ref_log_probs and no ref_model the reference is the model "
                    "before training. Pass the dataset as eval_dataset to the trainer, or a "
                    "ref_model")
            eval_dataset = self._prepare_eval(eval_dataset, self.processing_class, self.args)
            if self.args.precompute_ref_log_probs:
                eval_dataset = self._precompute_eval(eval_dataset)
            if isinstance(eval_dataset, dict):
                metrics = {}
                for name, data in eval_dataset.items():
                    metrics.update(super().evaluate(data, ignore_keys,
                                                    f"{metric_key_prefix}_{name}"))
                return metrics
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

    # -- log-probs and loss ------------------------------------------------------------------

    def _completion_logits(self, model: nn.Module, inputs: dict[str, torch.Tensor],
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits [tokens, vocab] in float32, the tokens they predict, each one's row): only at
        the positions that predict a completion token."""
        input_ids = inputs["input_ids"]
        predicts = inputs["completion_mask"][:, 1:].bool()  # position j predicts token j + 1
        flat = unpad_rows(input_ids, inputs["attention_mask"]) \
            if packs_sequences(self.accelerator.unwrap_model(model)) else None
        where = torch.cat([predicts, predicts.new_zeros(len(predicts), 1)], 1)
        if flat is not None and len(input_ids) % 2 == 0 and not bool((where & ~flat[2]).any()):
            # Cove's decoders: each pair as one sequence without padding, the tokens its two
            # rows start with (the prompt) once, then the chosen and the rejected continuations
            # (each sees the prompt and itself); the pairs end to end in one row, and the LM
            # head only where a completion token is predicted
            ids, position_ids, mask, index = _pair_layout(input_ids, flat[2])
            outputs = model(input_ids=ids, position_ids=position_ids, attention_mask=mask,
                            use_cache=False, logits_to_keep=index[:, :-1][predicts])
            return (outputs.logits[0].float(), input_ids[:, 1:][predicts],
                    predicts.nonzero()[:, 0])
        columns = predicts.any(0).nonzero()
        start = int(columns[0]) if len(columns) else predicts.shape[1]
        # the LM head runs on the last L - start positions; the very last predicts nothing
        outputs = model(input_ids=input_ids, attention_mask=inputs["attention_mask"],
                        logits_to_keep=input_ids.shape[1] - start, use_cache=False)
        where = predicts[:, start:]
        logits = outputs.logits[:, :-1][where].float()
        return logits, input_ids[:, start + 1:][where], where.nonzero()[:, 0]

    @staticmethod
    def _sum_per_row(values: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Each row's sum of its completion tokens' `values` (in the rows' order), as a sum
        over the row's positions (trl's order of summation)."""
        predicts = inputs["completion_mask"][:, 1:].bool()
        return values.new_zeros(predicts.shape).masked_scatter(predicts, values).sum(1)

    def _reference_logps(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The reference's summed completion log-probs of the batch's rows [2 * pairs]."""
        if self.ref_model is not None:
            model, context = self.ref_model, nullcontext()
        else:
            model = self.accelerator.unwrap_model(self.model)
            context = model.disable_adapter() if is_peft_model(model) else nullcontext()
        with torch.no_grad(), context, self.accelerator.autocast():
            logits, targets, rows = self._completion_logits(model, inputs)
            token_logps = logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(-1)
            return self._sum_per_row(token_logps, inputs)

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any],
                     return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None) -> Any:
        """The pairs' mean DPO loss (summed over the loss types with their weights);
        num_items_in_batch is unused (a per-pair mean, which the Trainer divides by the
        accumulation steps)."""
        mode = "train" if self.model.training else "eval"
        logits, targets, rows = self._completion_logits(model, inputs)
        log_norm = logits.logsumexp(-1)
        token_logps = logits.gather(-1, targets[:, None]).squeeze(-1) - log_norm
        chosen_logps, rejected_logps = self._sum_per_row(token_logps, inputs).chunk(2)
        if "ref_chosen_logps" in inputs:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_chosen, ref_rejected = self._reference_logps(inputs).chunk(2)
        chosen_ratio = chosen_logps - ref_chosen.to(chosen_logps)
        rejected_ratio = rejected_logps - ref_rejected.to(rejected_logps)
        delta = chosen_ratio - rejected_ratio
        loss = 0.0
        for loss_type, weight in zip(self.loss_types, self.loss_weights, strict=True):
            if loss_type == "sigmoid":
                per_pair = -F.logsigmoid(self.beta * delta)
            elif loss_type == "hinge":
                per_pair = torch.relu(1 - self.beta * delta)
            elif loss_type == "ipo":
                # IPO on per-token log-ratios (trl's choice): completion lengths divide them
                lengths = inputs["completion_mask"].sum(1).clamp(min=1).to(delta)
                chosen_len, rejected_len = lengths.chunk(2)
                mean_delta = chosen_ratio / chosen_len - rejected_ratio / rejected_len
                per_pair = (mean_delta - 1 / (2 * self.beta)) ** 2
            else:  # robust: unbiased under labels flipped with probability label_smoothing
                eps = self.args.label_smoothing
                per_pair = ((eps - 1) * F.logsigmoid(self.beta * delta)
                            + eps * F.logsigmoid(-self.beta * delta)) / (1 - 2 * eps)
            loss = loss + weight * per_pair.mean()
        self._record(mode, inputs, logits.detach(), targets, rows, log_norm.detach(),
                     chosen_logps.detach(), rejected_logps.detach(), chosen_ratio.detach(),
                     rejected_ratio.detach())
        return (loss, {"chosen_logps": chosen_logps, "rejected_logps": rejected_logps}) \
            if return_outputs else loss

    @torch.no_grad()
    def _record(self, mode: str, inputs: dict[str, torch.Tensor], logits: torch.Tensor,
                targets: torch.Tensor, rows: torch.Tensor, log_norm: torch.Tensor,
                chosen_logps: torch.Tensor, rejected_logps: torch.Tensor,
                chosen_ratio: torch.Tensor, rejected_ratio: torch.Tensor) -> None:
        """Add the batch's metrics to those averaged at the next log."""
        gather = self.accelerator.gather_for_metrics
        metrics = self._metrics[mode]
        pairs = chosen_logps.shape[0]
        is_chosen = rows < pairs
        entropy = log_norm - (logits.softmax(-1) * logits).sum(-1)
        mean_logits = logits.mean(-1)
        hits = (logits.argmax(-1) == targets) & is_chosen
        totals = gather(torch.stack([
            entropy.sum(), torch.tensor(float(len(rows)), device=entropy.device),
            mean_logits[is_chosen].sum(), is_chosen.sum().float(),
            mean_logits[~is_chosen].sum(), (~is_chosen).sum().float(),
            hits.sum().float()])[None]).sum(0).tolist()

        def ratio(a: float, b: float) -> float:
            return a / b if b > 0 else 0.0

        metrics["entropy"].append(ratio(totals[0], totals[1]))
        if mode == "train":
            tokens = gather(inputs["attention_mask"].sum()[None])
            self._total_train_tokens += int(tokens.sum().item())
        metrics["num_tokens"] = [self._total_train_tokens]
        metrics["logits/chosen"].append(ratio(totals[2], totals[3]))
        metrics["logits/rejected"].append(ratio(totals[4], totals[5]))
        metrics["mean_token_accuracy"].append(ratio(totals[6], totals[3]))
        chosen_rewards, rejected_rewards = self.beta * chosen_ratio, self.beta * rejected_ratio
        per_pair = gather(torch.stack([chosen_rewards, rejected_rewards,
                                       (chosen_rewards > rejected_rewards).float(),
                                       chosen_rewards - rejected_rewards,
                                       chosen_logps, rejected_logps], 1)).mean(0).tolist()
        for key, value in zip(("rewards/chosen", "rewards/rejected", "rewards/accuracies",
                               "rewards/margins", "logps/chosen", "logps/rejected"), per_pair,
                              strict=True):
            metrics[key].append(value)

    def prediction_step(self, model: nn.Module, inputs: dict[str, Any],
                        prediction_loss_only: bool, ignore_keys: list[str] | None = None,
                        ) -> tuple[torch.Tensor | None, Any, Any]:
        """The batch's loss; as predictions, the policy's summed log-probs of the chosen and
        the rejected completions ([pairs, 2]) unless only the loss is asked for."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.accelerator.autocast():
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        return loss.detach(), torch.stack([outputs["chosen_logps"],
                                           outputs["rejected_logps"]], 1), None
