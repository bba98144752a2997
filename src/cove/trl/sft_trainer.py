"""SFTTrainer: supervised fine-tuning as TRL 1.16 does it, on Cove's Trainer.

The dataset is tokenized by the trainer: language modeling ("text", or "messages" rendered with
the chat template) or prompt-completion (standard or conversational). Non-conversational text
gets the EOS token appended. Labels are -100 where no loss is taken: the prompt of
prompt-completion data (by default), everything but the assistant turns with
`assistant_only_loss`. The loss is the summed token NLL over the label tokens of the whole
accumulated batch, divided by their number.

Speed: the LM head runs only on the hidden states whose next token is a label, so no logits are
made for prompts, padding or masked turns. With Cove's own decoders a padded batch goes through
the model as one row without its padding (the same loss). Packing ("bfd") and `padding_free` flatten a batch
into one row with position ids restarting per example; Cove's decoders then attend within each
example only.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cove.seed import set_seed
from cove.trainer.training_args import TrainingArguments
from cove.trl.base import apply_peft, load_model, load_processing_class
from cove.trl.data_utils import (
    column_names,
    is_conversational,
    is_conversational_from_value,
    maybe_convert_to_chatml,
    require_format,
)
from cove.trl.packing import pack_dataset
from cove.trl.sft_config import SFTConfig
from cove.trl.utils import (
    MetricsTrainer,
    common_prefix_length,
    packs_sequences,
    pad_right,
    unpad_rows,
)

_FORMATS = ("prompt-completion", "language modeling (conversational)", "language modeling")
_GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")


@dataclass
class DataCollatorForLanguageModeling:
    """Pads "input_ids" and "labels" (default: the input ids; -100 marks tokens without loss)
    to the longest example, with an attention mask. With `padding_free` the batch is one row:
    the examples end to end, position ids restarting at each example (or at each packed
    sequence, from "seq_lengths"), and no label on each sequence's first token, which would
    otherwise be predicted from the previous sequence."""

    pad_token_id: int
    padding_free: bool = False
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        input_ids = [torch.as_tensor(e["input_ids"], dtype=torch.long) for e in examples]
        labels = [torch.as_tensor(e["labels"] if "labels" in e else e["input_ids"],
                                  dtype=torch.long) for e in examples]
        if not self.padding_free:
            return {"input_ids": pad_right(input_ids, self.pad_token_id, self.pad_to_multiple_of),
                    "attention_mask": pad_right([torch.ones_like(i) for i in input_ids], 0,
                                           self.pad_to_multiple_of),
                    "labels": pad_right(labels, -100, self.pad_to_multiple_of)}
        lengths = [n for e in examples for n in e.get("seq_lengths") or [len(e["input_ids"])]]
        position_ids = torch.cat([torch.arange(n) for n in lengths])
        out = {"input_ids": pad_right([torch.cat(input_ids)], self.pad_token_id,
                                 self.pad_to_multiple_of),
               "position_ids": pad_right([position_ids], 0, self.pad_to_multiple_of),
               "labels": pad_right([torch.cat(labels)], -100, self.pad_to_multiple_of)}
        out["labels"][out["position_ids"] == 0] = -100
        return out


class SFTTrainer(MetricsTrainer):
    """Supervised fine-tuning (trl.SFTTrainer). `model`: a model, or an id/path loaded with
    `args.model_init_kwargs`; `args`: an SFTConfig (default: SFTConfig("<model name>-SFT"));
    `peft_config`: train a new adapter only; `formatting_func(example) -> str`: the text to
    train on (the dataset becomes language modeling data). Logs loss, entropy,
    mean_token_accuracy and num_tokens, as TRL."""

    def __init__(self, model: Any, args: SFTConfig | TrainingArguments | None = None,
                 data_collator: Callable | None = None, train_dataset: Any = None,
                 eval_dataset: Any = None, processing_class: Any = None,
                 compute_loss_func: Callable | None = None,
                 compute_metrics: Callable | None = None, callbacks: list | None = None,
                 optimizers: tuple[Any, Any] = (None, None),
                 optimizer_cls_and_kwargs: tuple[type, dict] | None = None,
                 preprocess_logits_for_metrics: Callable | None = None,
                 peft_config: Any = None,
                 formatting_func: Callable[[dict], str] | None = None) -> None:
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path or "model"
            args = SFTConfig(f"{name.rstrip('/').split('/')[-1]}-SFT")
        elif not isinstance(args, SFTConfig):
            if not isinstance(args, TrainingArguments):
                raise TypeError(f"args must be an SFTConfig, got {type(args).__name__}")
            args = SFTConfig(**{f.name: getattr(args, f.name)
                                for f in dataclasses.fields(args) if f.init})
        if train_dataset is None:
            raise ValueError("SFTTrainer needs a train_dataset")
        set_seed(args.seed)
        model = load_model(model, args)
        processing_class = load_processing_class(model, processing_class)
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        self._tokenizer = tokenizer
        if args.eos_token is not None:
            self._set_eos(model, args.eos_token)
        if args.chat_template_path is not None:
            if not (os.path.isfile(args.chat_template_path)
                    and args.chat_template_path.endswith((".jinja", ".j2"))):
                raise ValueError(f"chat_template_path {args.chat_template_path!r}: Cove takes a "
                                 ".jinja or .j2 template file (copying another tokenizer's "
                                 "template and tokens is not implemented)")
            with open(args.chat_template_path, encoding="utf-8") as f:
                processing_class.chat_template = f.read()

        model = apply_peft(model, peft_config, args)

        first = next(iter(train_dataset))
        self.padding_free = args.padding_free or (
            args.packing and args.packing_strategy in ("bfd", "bfd_split"))
        if self.padding_free:
            if data_collator is not None:
                raise ValueError("a custom data_collator cannot be used with padding-free "
                                 "training (padding_free=True, or packing with 'bfd')")
            if not args.packing and args.max_length is not None:
                raise ValueError("padding_free=True without packing does not cut examples to "
                                 "max_length: enable packing (packing=True), or set "
                                 "max_length=None with examples already cut")
        if args.assistant_only_loss:
            if not is_conversational(first):
                raise ValueError("assistant_only_loss=True needs a conversational dataset "
                                 "('messages', or a conversational 'prompt'/'completion')")
            template = getattr(processing_class, "chat_template", None) or ""
            if not _GENERATION_MARKER.search(template):
                raise ValueError("assistant_only_loss=True needs a chat template that marks "
                                 "the assistant turns with {% generation %} ... "
                                 "{% endgeneration %}; this tokenizer's template has no such "
                                 "markers (set chat_template_path to a template that does)")
        self.completion_only_loss = (("prompt" in first and "completion" in first)
                                     if args.completion_only_loss is None
                                     else args.completion_only_loss)
        if data_collator is None:
            pad_token = args.pad_token or tokenizer.pad_token or tokenizer.eos_token
            if pad_token not in tokenizer.get_vocab():
                raise ValueError(f"the padding token {pad_token!r} is not in the tokenizer's "
                                 "vocabulary")
            tokenizer.pad_token = pad_token
            model.config.pad_token_id = tokenizer.pad_token_id
            data_collator = DataCollatorForLanguageModeling(
                tokenizer.pad_token_id, self.padding_free, args.pad_to_multiple_of)

        self._skip_prepare = bool((args.dataset_kwargs or {}).get("skip_prepare_dataset"))
        self._formatting_func = formatting_func
        if not self._skip_prepare:
            if self.completion_only_loss and formatting_func is not None:
                raise ValueError("formatting_func makes language-modeling text, so there is no "
                                 "completion for completion_only_loss=True: format the dataset "
                                 "before passing it, or set completion_only_loss=False")
            train_dataset = self._prepare_dataset(train_dataset, processing_class, args,
                                                  args.packing, formatting_func, "train")
            if eval_dataset is not None:
                eval_dataset = self._prepare_eval(eval_dataset, processing_class, args)
        if args.loss_type == "dft" and compute_loss_func is not None:
            raise ValueError("loss_type='dft' is the loss: it cannot be combined with "
                             "compute_loss_func")

        super().__init__(model=model, args=args, data_collator=data_collator,
                         train_dataset=train_dataset, eval_dataset=eval_dataset,
                         processing_class=processing_class, compute_loss_func=compute_loss_func,
                         compute_metrics=compute_metrics, callbacks=callbacks,
                         optimizers=optimizers,
                         optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
                         preprocess_logits_for_metrics=preprocess_logits_for_metrics)
        self._total_train_tokens = 0

    def _set_eos(self, model: nn.Module, eos_token: str) -> None:
        tokenizer = self._tokenizer
        if eos_token not in tokenizer.get_vocab():
            raise ValueError(f"eos_token {eos_token!r} is not in the tokenizer's vocabulary")
        tokenizer.eos_token = eos_token
        model.config.eos_token_id = tokenizer.eos_token_id
        generation = getattr(model, "generation_config", None)
        if generation is not None:  # generation stops at the new EOS too
            ids = generation.eos_token_id
            ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
            if tokenizer.eos_token_id not in ids:
                generation.eos_token_id = [tokenizer.eos_token_id, *ids]

    # -- data --------------------------------------------------------------------------------

    def _prepare_eval(self, eval_dataset: Any, processing_class: Any, args: SFTConfig) -> Any:
        packing = args.packing if args.eval_packing is None else args.eval_packing
        if isinstance(eval_dataset, dict):
            return {key: self._prepare_dataset(d, processing_class, args, packing,
                                               self._formatting_func, key)
                    for key, d in eval_dataset.items()}
        return self._prepare_dataset(eval_dataset, processing_class, args, packing,
                                     self._formatting_func, "eval")

    def _prepare_dataset(self, dataset: Any, processing_class: Any, args: SFTConfig,
                         packing: bool, formatting_func: Callable | None, name: str) -> Any:
        """Tokenized rows with "input_ids" and "labels" (-100: no loss), cut to max_length, or
        packed into rows of max_length."""
        from cove.datasets import Dataset

        # IterableDataset.map takes neither num_proc nor desc
        map_kwargs: dict[str, Any] = ({"num_proc": args.dataset_num_proc}
                                      if isinstance(dataset, Dataset) else {})
        columns = column_names(dataset)
        if "input_ids" not in columns:
            if formatting_func is not None:
                dataset = dataset.map(lambda e: {"text": formatting_func(e)}, **map_kwargs)
            if is_conversational_from_value(next(iter(dataset))):
                dataset = dataset.map(maybe_convert_to_chatml,
                                      remove_columns=["conversations"], **map_kwargs)
            columns = column_names(dataset)
            text = args.dataset_text_field
            require_format(["text" if c == text else c for c in columns], "SFTTrainer",
                           _FORMATS, {"text": "dataset_text_field"})
            if not is_conversational(next(iter(dataset))):
                dataset = dataset.map(
                    _add_eos, fn_kwargs={"eos": self._tokenizer.eos_token, "text": text},
                    remove_columns=["messages"] if "messages" in columns else None,
                    **map_kwargs)
            dataset = dataset.map(
                _tokenize, fn_kwargs={"processing_class": processing_class, "text": text,
                                      "assistant_only_loss": args.assistant_only_loss},
                **map_kwargs)
            columns = column_names(dataset)
        if "labels" not in columns:
            masks = [c for c in ("completion_mask", "assistant_masks") if c in columns
                     and (c != "completion_mask" or self.completion_only_loss)]
            dataset = dataset.map(_labels, fn_kwargs={"masks": masks}, remove_columns=masks,
                                  **map_kwargs)
        if args.max_length is not None and not packing:
            keep = (slice(None, args.max_length) if args.truncation_mode == "keep_start"
                    else slice(-args.max_length, None))
            dataset = dataset.map(lambda e: {"input_ids": e["input_ids"][keep],
                                             "labels": e["labels"][keep]}, **map_kwargs)
            # an example whose labels were all cut away has nothing to train on
            dataset = dataset.filter(lambda e: any(t != -100 for t in e["labels"]),
                                     **map_kwargs)
        if packing:
            if args.max_length is None:
                raise ValueError("packing=True needs max_length (the packed row length)")
            dataset = dataset.select_columns(["input_ids", "labels"])
            if args.shuffle_dataset:
                dataset = dataset.shuffle(seed=args.seed)
            dataset = pack_dataset(dataset, args.max_length, args.packing_strategy, map_kwargs)
        if args.shuffle_dataset:
            dataset = dataset.shuffle(seed=args.seed)
        return dataset

    def _set_signature_columns_if_needed(self) -> None:
        if self._signature_columns is None:
            self._signature_columns = ["input_ids", "labels", "seq_lengths"]

    def evaluate(self, eval_dataset: Any = None, ignore_keys: list[str] | None = None,
                 metric_key_prefix: str = "eval") -> dict[str, float]:
        """Trainer.evaluate; a dataset passed here is prepared as the training data is."""
        if eval_dataset is not None and not isinstance(eval_dataset, str) \
                and not self._skip_prepare:
            eval_dataset = self._prepare_eval(eval_dataset, self.processing_class, self.args)
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

    # -- loss --------------------------------------------------------------------------------

    def _items(self, batch: Any) -> torch.Tensor | None:
        # label tokens after the causal shift, for every model (a PeftModel too)
        labels = batch.get("labels") if isinstance(batch, Mapping) else None
        return labels[..., 1:].ne(-100).sum() if isinstance(labels, torch.Tensor) else None

    def compute_loss(self, model: nn.Module, inputs: dict[str, Any],
                     return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None) -> Any:
        """Summed token NLL (or DFT) over the label tokens, divided by `num_items_in_batch`
        (the label tokens of the whole accumulated batch), else by this batch's."""
        mode = "train" if self.model.training else "eval"
        forward = {k: v for k, v in inputs.items() if k != "labels"}
        labels = inputs["labels"]
        fast = self.compute_loss_func is None and not return_outputs
        if fast and set(forward) == {"input_ids", "attention_mask"} \
                and packs_sequences(self.accelerator.unwrap_model(model)):
            # Cove's decoders: the padded rows end to end in one row without their padding,
            # position ids restarting at each (the same loss; no work on padding)
            flat = unpad_rows(forward["input_ids"], forward["attention_mask"])
            if flat is not None and bool((labels[~flat[2]] == -100).all()):
                ids, position_ids, keep = flat
                forward = {"input_ids": ids, "position_ids": position_ids}
                labels = labels.clone()
                labels[:, 0] = -100  # a row's first token is predicted by no position of it
                labels = labels[keep][None]
        labels = labels[:, 1:]
        mask = labels != -100
        targets = labels[mask]
        if not fast:
            outputs = model(**forward, use_cache=False)
            logits = outputs.logits[:, -labels.shape[1] - 1:-1][mask]
        else:
            # the decoder's final hidden states, and no logits (an empty index): the LM head
            # runs below on the positions with a label only
            outputs = model(**forward, use_cache=False, output_hidden_states=True,
                            logits_to_keep=torch.empty(0, dtype=torch.long))
            hidden = outputs.hidden_states[-1][:, -labels.shape[1] - 1:-1]
            logits = self.model.get_output_embeddings()(hidden[mask])
        log_probs = logits.float().log_softmax(-1)
        token_log_probs = log_probs.gather(-1, targets[:, None]).squeeze(-1)
        count = targets.numel() if num_items_in_batch is None else num_items_in_batch
        count = torch.as_tensor(count, device=token_log_probs.device).clamp(min=1)
        if self.compute_loss_func is not None:
            loss = self.compute_loss_func(outputs, inputs["labels"],
                                          num_items_in_batch=num_items_in_batch)
        elif self.args.loss_type == "dft":
            loss = -(token_log_probs * token_log_probs.detach().exp()).sum() / count
        else:
            loss = -token_log_probs.sum() / count
        if (num_items_in_batch is not None and self.args.average_tokens_across_devices
                and self.accelerator.num_processes > 1):
            loss = loss * self.accelerator.num_processes  # DDP averages the gradients
        self._record_metrics(mode, log_probs.detach(), targets, inputs)
        return (loss, outputs) if return_outputs else loss

    def _record_metrics(self, mode: str, log_probs: torch.Tensor, targets: torch.Tensor,
                        inputs: dict[str, Any]) -> None:
        gather = self.accelerator.gather_for_metrics
        valid = gather(torch.tensor(targets.numel(), device=targets.device)).sum()
        entropy = gather(-(log_probs.exp() * log_probs).sum()).sum()
        correct = gather((log_probs.argmax(-1) == targets).sum()).sum()
        metrics = self._metrics[mode]
        metrics["entropy"].append((entropy / valid).item() if valid > 0 else 0.0)
        metrics["mean_token_accuracy"].append((correct / valid).item() if valid > 0 else 0.0)
        if mode == "train":
            tokens = (inputs["attention_mask"].sum() if "attention_mask" in inputs
                      else torch.tensor(inputs["position_ids"].shape[1]))
            self._total_train_tokens += int(gather(tokens.to(targets.device)).sum().item())
        metrics["num_tokens"] = [self._total_train_tokens]

    def prediction_step(self, model: nn.Module, inputs: dict[str, Any],
                        prediction_loss_only: bool, ignore_keys: list[str] | None = None,
                        ) -> tuple[torch.Tensor | None, Any, Any]:
        """One evaluation batch; the full logits are made only when they are asked for."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.accelerator.autocast():
            if prediction_loss_only:
                return self.compute_loss(model, inputs).detach(), None, None
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        return loss.detach(), outputs.logits.detach(), inputs["labels"]


# -- dataset maps (module level: picklable for num_proc) ---------------------------------------

def _add_eos(example: dict[str, Any], eos: str, text: str) -> dict[str, Any]:
    if text in example and not example[text].endswith(eos):
        example[text] = example[text] + eos
    elif "completion" in example and not example["completion"].endswith(eos):
        example["completion"] = example["completion"] + eos
    return example


def _encode(processing_class: Any, value: str | list, **kwargs: Any) -> dict[str, list]:
    if isinstance(value, list):  # messages
        return processing_class.apply_chat_template(value, tokenize=True, return_dict=True,
                                                    **kwargs)
    return processing_class(text=value)


def _tokenize(example: dict[str, Any], processing_class: Any, text: str,
              assistant_only_loss: bool) -> dict[str, list]:
    tools = example.get("tools")
    tools = json.loads(tools) if isinstance(tools, str) else tools
    template_kwargs = {"tools": tools, **(example.get("chat_template_kwargs") or {})}
    output: dict[str, list] = {}
    if "prompt" in example:
        if is_conversational(example):
            prompt_ids = _encode(processing_class, example["prompt"], add_generation_prompt=True,
                                 **template_kwargs)["input_ids"]
            full = _encode(processing_class, example["prompt"] + example["completion"],
                           return_assistant_tokens_mask=assistant_only_loss, **template_kwargs)
            if "assistant_masks" in full:
                output["assistant_masks"] = list(full["assistant_masks"])
        else:
            prompt_ids = _encode(processing_class, example["prompt"])["input_ids"]
            full = _encode(processing_class, example["prompt"] + example["completion"])
        ids = list(full["input_ids"])
        # the completion starts where the tokenized prompt stops being a prefix (tokens can
        # merge across the boundary, or a template renders a lone prompt differently)
        prompt_len = common_prefix_length(list(prompt_ids), ids)
        output["input_ids"] = ids
        output["completion_mask"] = [0] * prompt_len + [1] * (len(ids) - prompt_len)
    elif is_conversational(example):
        full = _encode(processing_class, example["messages"],
                       return_assistant_tokens_mask=assistant_only_loss, **template_kwargs)
        output["input_ids"] = list(full["input_ids"])
        if "assistant_masks" in full:
            output["assistant_masks"] = list(full["assistant_masks"])
    else:
        output["input_ids"] = list(_encode(processing_class, example[text])["input_ids"])
    if "assistant_masks" in output and 1 not in output["assistant_masks"]:
        raise ValueError("assistant_only_loss=True, but an example has no assistant tokens: "
                         "the chat template's {% generation %} markers enclose nothing in it")
    return output


def _labels(example: dict[str, Any], masks: list[str]) -> dict[str, list]:
    bits = [example[m] for m in masks]
    return {"labels": [t if all(b) else -100
                       for t, *b in zip(example["input_ids"], *bits, strict=False)]}
