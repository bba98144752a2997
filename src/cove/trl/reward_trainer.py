"""RewardTrainer: a reward model (a sequence classifier with one output) trained on preference
pairs with the pairwise loss -log sigmoid(r_chosen - r_rejected - margin), as trl's.

    from cove.trl import RewardConfig, RewardTrainer

    trainer = RewardTrainer(model="my-org/base", train_dataset=pairs,
                            args=RewardConfig("out", max_length=512))
    trainer.train()

Each batch holds the chosen sequences then the rejected ones, scored in one forward.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cove.trl.base import apply_peft, load_model, load_processing_class
from cove.trl.data_utils import column_names, is_conversational, require_format
from cove.trl.reward_config import RewardConfig
from cove.trl.utils import MetricsTrainer, disable_dropout, pad_right

PREFERENCE_FORMATS = ("preference", "preference (implicit prompt)")


def tokenize(processing_class: Any, text: str | list, **template_kwargs: Any) -> list[int]:
    """Token ids of a text, or of a conversation rendered with the chat template."""
    if isinstance(text, list):
        return list(processing_class.apply_chat_template(
            text, tokenize=True, return_dict=True, **template_kwargs)["input_ids"])
    return list(processing_class(text=text)["input_ids"])


def template_kwargs(example: dict[str, Any]) -> dict[str, Any]:
    """The chat template's arguments a row carries: its "tools" (a list, or JSON text) and its
    "chat_template_kwargs"."""
    tools = example.get("tools")
    tools = json.loads(tools) if isinstance(tools, str) else tools
    return {"tools": tools, **(example.get("chat_template_kwargs") or {})}


def add_eos(example: dict[str, Any], eos_token: str) -> dict[str, Any]:
    """Standard preference rows end their chosen and rejected texts with `eos_token`."""
    for key in ("chosen", "rejected"):
        if not example[key].endswith(eos_token):
            example[key] = example[key] + eos_token
    return example


@dataclass
class DataCollatorForPreference:
    """Batches of {"chosen_ids", "rejected_ids"[, "margin"]} rows: input_ids and attention_mask
    with the chosen sequences first, then the rejected ones, padded on the right to the longest;
    "margin" as a float tensor when the rows have one."""

    pad_token_id: int
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sequences = [e["chosen_ids"] for e in examples] + [e["rejected_ids"] for e in examples]
        out = {"input_ids": pad_right(sequences, self.pad_token_id, self.pad_to_multiple_of),
               "attention_mask": pad_right([[1] * len(s) for s in sequences], 0,
                                           self.pad_to_multiple_of)}
        if "margin" in examples[0]:
            out["margin"] = torch.tensor([float(e["margin"]) for e in examples])
        return out


class RewardTrainer(MetricsTrainer):
    """trl.RewardTrainer on Cove's Trainer: a one-logit sequence classifier trained on
    preference pairs (standard or conversational, explicit or implicit prompt, an optional
    "margin" column). Loss: mean over pairs of -log sigmoid(r_chosen - r_rejected - margin),
    plus center_rewards_coefficient * mean((r_chosen + r_rejected)^2) when set. Logged:
    accuracy (r_chosen > r_rejected), margin, min/mean/max_reward, num_tokens.

    `model`: an id or path (loaded by AutoModelForSequenceClassification with num_labels=1) or
    a model with one label. `peft_config` wraps it in a new adapter (task type SEQ_CLS).
    """

    _tag_names = ["trl", "reward-trainer"]

    def __init__(self, model: Any, args: RewardConfig | None = None,
                 data_collator: Callable | None = None, train_dataset: Any = None,
                 eval_dataset: Any = None, processing_class: Any = None,
                 compute_metrics: Callable | None = None, callbacks: list | None = None,
                 optimizers: tuple[Any, Any] = (None, None),
                 optimizer_cls_and_kwargs: tuple[type, dict] | None = None,
                 preprocess_logits_for_metrics: Callable | None = None,
                 peft_config: Any = None) -> None:
        if args is None:
            name = model if isinstance(model, str) else \
                getattr(model.config, "_name_or_path", "") or "model"
            args = RewardConfig(f"{str(name).rstrip('/').split('/')[-1]}-Reward")
        if train_dataset is None:
            raise ValueError("RewardTrainer needs a train_dataset")
        from cove.models.auto import AutoModelForSequenceClassification

        if isinstance(model, str):
            model = load_model(model, args, AutoModelForSequenceClassification, num_labels=1)
        else:
            load_model(model, args)  # warns that model_init_kwargs go unused
            if getattr(model.config, "num_labels", None) != 1:
                raise ValueError(
                    f"the model has num_labels={getattr(model.config, 'num_labels', None)}: a "
                    "reward model outputs one score per sequence, so make it with num_labels=1 "
                    "(or pass its id or path and the trainer loads it so)")
        processing_class = load_processing_class(model, processing_class)
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        if args.eos_token is not None:
            if args.eos_token not in tokenizer.get_vocab():
                raise ValueError(f"eos_token {args.eos_token!r} is not in the tokenizer's "
                                 "vocabulary")
            tokenizer.eos_token = args.eos_token
            model.config.eos_token_id = tokenizer.eos_token_id
        # the classifier reads each sequence's score at its last non-padding token
        model.config.pad_token_id = tokenizer.pad_token_id
        model = apply_peft(model, peft_config, args)
        if args.disable_dropout:
            disable_dropout(model)
        if data_collator is None:
            data_collator = DataCollatorForPreference(tokenizer.pad_token_id,
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
        self._total_train_tokens = 0

    def _prepare_eval(self, eval_dataset: Any, processing_class: Any, args: RewardConfig) -> Any:
        if isinstance(eval_dataset, dict):
            return {k: self._prepare_dataset(d, processing_class, args, k)
                    for k, d in eval_dataset.items()}
        return self._prepare_dataset(eval_dataset, processing_class, args, "eval")

    @staticmethod
    def _prepare_dataset(dataset: Any, processing_class: Any, args: RewardConfig,
                         name: str) -> Any:
        """Rows with "chosen_ids" and "rejected_ids": the prompt joined to each completion,
        EOS appended to standard texts, then tokenized (conversations with the chat template);
        pairs longer than max_length dropped. Tokenized datasets are only filtered."""
        columns = column_names(dataset)
        map_kwargs = {"num_proc": args.dataset_num_proc} if args.dataset_num_proc else {}
        if not {"chosen_ids", "rejected_ids"} <= set(columns):
            require_format(columns, "RewardTrainer", PREFERENCE_FORMATS)
            tokenizer = getattr(processing_class, "tokenizer", processing_class)
            if not is_conversational(next(iter(dataset))):
                dataset = dataset.map(add_eos, fn_kwargs={"eos_token": tokenizer.eos_token},
                                      **map_kwargs)

            def tokenize_pair(example: dict[str, Any]) -> dict[str, list[int]]:
                prompt = example.get("prompt")
                kwargs = template_kwargs(example) if is_conversational(example) else {}
                return {key + "_ids": tokenize(
                    processing_class,
                    example[key] if prompt is None else prompt + example[key], **kwargs)
                    for key in ("chosen", "rejected")}

            dataset = dataset.map(tokenize_pair, **map_kwargs)
        if args.max_length is not None:
            limit = args.max_length
            dataset = dataset.filter(lambda e: len(e["chosen_ids"]) <= limit
                                     and len(e["rejected_ids"]) <= limit, **map_kwargs)
        return dataset

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = ["chosen_ids", "rejected_ids", "margin"]

    def evaluate(self, eval_dataset: Any = None, ignore_keys: list[str] | None = None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:
        """Trainer.evaluate, tokenizing a raw preference dataset passed here first."""
        if eval_dataset is not None and not isinstance(eval_dataset, str):
            eval_dataset = self._prepare_eval(eval_dataset, self.processing_class, self.args)
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any],
                     return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None) -> Any:
        """The pairs' mean loss; num_items_in_batch is unused (a per-pair mean, which the Trainer
        divides by the accumulation steps)."""
        mode = "train" if self.model.training else "eval"
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        rewards = outputs.logits.squeeze(-1)
        chosen, rejected = rewards.chunk(2)
        diff = chosen - rejected
        if "margin" in inputs:
            diff = diff - inputs["margin"].to(diff)
        loss = -F.logsigmoid(diff).mean()
        if self.args.center_rewards_coefficient is not None:
            loss = loss + self.args.center_rewards_coefficient * ((chosen + rejected) ** 2).mean()
        metrics = self._metrics[mode]
        if mode == "train":
            tokens = self.accelerator.gather_for_metrics(inputs["attention_mask"].sum())
            self._total_train_tokens += int(tokens.sum().item())
        metrics["num_tokens"] = [self._total_train_tokens]
        with torch.no_grad():
            everything = self.accelerator.gather(outputs.logits.detach())
            metrics["min_reward"].append(everything.min().item())
            metrics["mean_reward"].append(everything.mean().item())
            metrics["max_reward"].append(everything.max().item())
            accuracy = (chosen > rejected).float().mean()
            metrics["accuracy"].append(
                self.accelerator.gather_for_metrics(accuracy).mean().item())
            margin = (chosen - rejected).detach().mean()
            metrics["margin"].append(self.accelerator.gather_for_metrics(margin).mean().item())
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model: nn.Module, inputs: dict[str, Any],
                        prediction_loss_only: bool, ignore_keys: list[str] | None = None,
                        ) -> tuple[torch.Tensor | None, Any, Any]:
        """The batch's loss and, unless only the loss is asked for, its rewards ([2 * pairs, 1]:
        chosen then rejected) as the logits."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.accelerator.autocast():
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        return loss.detach(), outputs.logits.detach(), None
