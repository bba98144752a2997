"""`Seq2SeqTrainer` and `Seq2SeqTrainingArguments`: the Trainer for encoder-decoder models (T5,
BART, Marian), which can evaluate on generated text (transformers' names and behaviour).

    args = Seq2SeqTrainingArguments("out", predict_with_generate=True, generation_num_beams=4)
    trainer = Seq2SeqTrainer(model, args, train_dataset=train, eval_dataset=dev,
                             data_collator=DataCollatorForSeq2Seq(tokenizer, model=model))
    trainer.train()
    trainer.predict(test, max_new_tokens=32).predictions   # generated ids, padded

Training is the plain Trainer's (the model's own loss over its labels). With
`predict_with_generate`, evaluate/predict return the ids `generate` makes instead of logits,
padded to the generation config's length with the pad token, for metrics such as ROUGE or BLEU.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cove.generation import GenerationConfig
from cove.generation.configuration import GLOBAL_DEFAULTS
from cove.trainer.evaluation import PredictionOutput
from cove.trainer.trainer import Trainer
from cove.trainer.training_args import TrainingArguments


@dataclass
class Seq2SeqTrainingArguments(TrainingArguments):
    """TrainingArguments plus generation during evaluation: `predict_with_generate`,
    `generation_max_length` and `generation_num_beams` (defaults for evaluate/predict), and
    `generation_config` (a GenerationConfig, or a folder or Hub id holding one) that replaces
    the model's. `sortish_sampler` is accepted and unused, as in transformers 5."""

    sortish_sampler: bool = False
    predict_with_generate: bool = False
    generation_max_length: int | None = None
    generation_num_beams: int | None = None
    generation_config: str | os.PathLike | GenerationConfig | None = None

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if isinstance(out.get("generation_config"), GenerationConfig):
            out["generation_config"] = out["generation_config"].to_dict()
        elif isinstance(out.get("generation_config"), os.PathLike):
            out["generation_config"] = os.fspath(out["generation_config"])
        return out


class Seq2SeqTrainer(Trainer):
    """The Trainer for encoder-decoder models; evaluate() and predict() take generate's
    arguments (max_length, max_new_tokens, num_beams, ...) for `predict_with_generate`."""

    def __init__(self, model: nn.Module | None = None, args: TrainingArguments | None = None,
                 *rest: Any, **kwargs: Any) -> None:
        super().__init__(model, args, *rest, **kwargs)
        self._gen_kwargs: dict[str, Any] = {}
        config = getattr(self.args, "generation_config", None)
        if config is not None:
            self.model.generation_config = self.load_generation_config(config)

    @staticmethod
    def load_generation_config(gen_config_arg: str | os.PathLike | GenerationConfig
                               ) -> GenerationConfig:
        """A copy of a GenerationConfig, or one read from a generation config file, a folder
        or a Hub repository; checked before training starts."""
        if isinstance(gen_config_arg, GenerationConfig):
            config = copy.deepcopy(gen_config_arg)
        elif os.path.isfile(gen_config_arg):
            config = GenerationConfig.from_pretrained(os.path.dirname(gen_config_arg) or ".",
                                                      os.path.basename(gen_config_arg))
        else:
            config = GenerationConfig.from_pretrained(gen_config_arg)
        try:
            config.validate()
        except ValueError as e:
            raise ValueError(f"{e}\n\nFix these issues to train your model.") from None
        return config

    def _with_defaults(self, gen_kwargs: dict[str, Any]) -> dict[str, Any]:
        gen_kwargs = dict(gen_kwargs)
        args = self.args
        if gen_kwargs.get("max_length") is None and gen_kwargs.get("max_new_tokens") is None \
                and getattr(args, "generation_max_length", None) is not None:
            gen_kwargs["max_length"] = args.generation_max_length
        if gen_kwargs.get("num_beams") is None and \
                getattr(args, "generation_num_beams", None) is not None:
            gen_kwargs["num_beams"] = args.generation_num_beams
        return {k: v for k, v in gen_kwargs.items() if v is not None}

    def evaluate(self, eval_dataset: Any = None, ignore_keys: list[str] | None = None,
                 metric_key_prefix: str = "eval", **gen_kwargs: Any) -> dict[str, float]:
        """Trainer.evaluate; `gen_kwargs` go to generate when predict_with_generate is set."""
        self._gen_kwargs = self._with_defaults(gen_kwargs)
        return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)

    def predict(self, test_dataset: Any, ignore_keys: list[str] | None = None,
                metric_key_prefix: str = "test", **gen_kwargs: Any) -> PredictionOutput:
        """Trainer.predict; with predict_with_generate the predictions are generated ids."""
        self._gen_kwargs = self._with_defaults(gen_kwargs)
        return super().predict(test_dataset, ignore_keys, metric_key_prefix)

    def prediction_step(self, model: nn.Module, inputs: dict[str, Any],
                        prediction_loss_only: bool, ignore_keys: list[str] | None = None,
                        **gen_kwargs: Any) -> tuple[torch.Tensor | None, Any, Any]:
        """(loss, generated ids, labels) with predict_with_generate; else Trainer's step."""
        if not getattr(self.args, "predict_with_generate", False) or prediction_loss_only:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        has_labels = "labels" in inputs
        inputs = self._prepare_inputs(inputs)
        gen_kwargs = {k: v for k, v in (gen_kwargs or self._gen_kwargs).items()
                      if v is not None}
        generation_inputs = dict(inputs)
        # decoder inputs made from the labels (by the collator) would give generate the answer
        labels = inputs.get("labels")
        decoder = inputs.get("decoder_input_ids")
        if labels is not None and decoder is not None and labels.shape == decoder.shape:
            generation_inputs.pop("decoder_input_ids")
            generation_inputs.pop("decoder_attention_mask", None)
        generation_inputs.pop("labels", None)
        with torch.no_grad():
            generated = self.model.generate(**generation_inputs, **gen_kwargs)
        config = self.model.generation_config
        length = self._padded_length(generated, config)
        generated = self._pad_tensors_to_max_len(generated, length)
        loss = None
        if has_labels:
            with torch.no_grad(), self.accelerator.autocast():
                outputs = model(**inputs)
            loss = (outputs["loss"] if isinstance(outputs, dict) else outputs[0]).detach().mean()
        if self.args.prediction_loss_only:
            return loss, None, None
        if has_labels:
            labels = self._pad_tensors_to_max_len(inputs["labels"],
                                                  self._padded_length(inputs["labels"], config))
        else:
            labels = None
        return loss, generated, labels

    @staticmethod
    def _padded_length(tensor: torch.Tensor, config: GenerationConfig) -> int:
        """transformers' rule: up to the model's generation config's max_length (20 when it
        sets none), or else its max_new_tokens + 1."""
        max_length = config.max_length if config.max_length is not None \
            else GLOBAL_DEFAULTS["max_length"]
        if tensor.shape[-1] < max_length:
            return max_length
        if config.max_new_tokens is not None and tensor.shape[-1] < config.max_new_tokens + 1:
            return config.max_new_tokens + 1
        return tensor.shape[-1]

    def _pad_tensors_to_max_len(self, tensor: torch.Tensor, max_length: int) -> torch.Tensor:
        """`tensor` [rows, length] right-padded to max_length with the tokenizer's pad id (its
        eos id if it has none), else the model config's pad id."""
        if tensor.shape[-1] >= max_length:
            return tensor
        tokenizer = self.processing_class
        if tokenizer is not None and hasattr(tokenizer, "pad_token_id"):
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
                else tokenizer.eos_token_id
        else:
            pad = getattr(getattr(self.model, "config", None), "pad_token_id", None)
        if pad is None:
            raise ValueError("Pad_token_id must be set in the configuration of the model (or "
                             "the tokenizer), in order to pad tensors")
        padded = torch.full((tensor.shape[0], max_length), pad, dtype=tensor.dtype,
                            device=tensor.device)
        padded[:, :tensor.shape[-1]] = tensor
        return padded
