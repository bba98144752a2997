"""Pieces the cove.trl trainers share: a Trainer that logs the metrics its loss records, batch
padding and unpadding, and small helpers on models and token lists."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from cove.trainer.trainer import Trainer
from cove.trl.base import is_peft_model


class MetricsTrainer(Trainer):
    """A Trainer whose loss records metrics per batch (`self._metrics[mode][name].append`,
    mode "train" or "eval"); each log carries their means since the previous log (eval_-
    prefixed in evaluation), as TRL's trainers log them. `skip_nan`: NaN values (e.g. a
    reward no function gave) do not count; a metric with none left logs None."""

    skip_nan = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list),
                                                            "eval": defaultdict(list)}

    def _mean(self, values: list[float]) -> float | None:
        if self.skip_nan:
            values = [v for v in values if not math.isnan(v)]
            if not values:
                return None
        return sum(values) / len(values)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        metrics = {k: self._mean(v) for k, v in self._metrics[mode].items() if v}
        if mode == "eval":
            metrics = {f"eval_{k}": v for k, v in metrics.items()}
        logs.update(metrics)
        super().log(logs, start_time)
        self._metrics[mode].clear()


def pad_right(sequences: Sequence[Sequence[int] | torch.Tensor], value: int,
              pad_to_multiple_of: int | None = None) -> torch.Tensor:
    """Token lists (or 1-D tensors) as one [n, longest] long tensor, padded on the right with
    `value` (the length rounded up to a multiple of `pad_to_multiple_of` when given)."""
    length = max(len(s) for s in sequences)
    if pad_to_multiple_of:
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
    out = torch.full((len(sequences), length), value, dtype=torch.long)
    for row, seq in enumerate(sequences):
        out[row, :len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    return out


def disable_dropout(model: nn.Module) -> None:
    """Dropout probabilities to 0: the same sequence must score the same in every forward."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def packs_sequences(model: nn.Module) -> bool:
    """Whether `model` (or the model under its adapter) is one of Cove's decoders, which read
    position ids restarting inside a row as sequences packed end to end and attend within each
    one only: then right-padded rows can go through it as one row without their padding."""
    from cove.models.gpt2 import GPT2LMHeadModel
    from cove.models.llama import LlamaForCausalLM

    base = model.get_base_model() if is_peft_model(model) else model
    return isinstance(base, (LlamaForCausalLM, GPT2LMHeadModel))


def unpad_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor,
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Right-padded rows [n, L] as one row without the padding: (input ids [1, N], position ids
    [1, N] restarting at 0 on each row, `keep` [n, L]: True on the real tokens, in the row's
    order). None unless the padding is on the right only."""
    keep = attention_mask.bool()
    positions = torch.arange(keep.shape[1], device=keep.device).expand_as(keep)
    if not torch.equal(keep, positions < keep.sum(1, keepdim=True)):
        return None
    return input_ids[keep][None], positions[keep][None], keep


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
