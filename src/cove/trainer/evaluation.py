"""What evaluation and training return (transformers' names and fields), and the helpers that
collect predictions batch by batch.

    def compute_metrics(p: EvalPrediction) -> dict:
        return {"accuracy": (p.predictions.argmax(-1) == p.label_ids).mean()}
"""

from __future__ import annotations

import time
from typing import Any, NamedTuple

import numpy as np
import torch


class EvalPrediction:
    """The predictions (the model's outputs but the loss) and label ids of an evaluation, as
    numpy arrays (tuples of arrays where the model returns several outputs or there are
    several label columns). Unpacks as `predictions, label_ids = p`."""

    def __init__(self, predictions: np.ndarray | tuple[np.ndarray, ...],
                 label_ids: np.ndarray | tuple[np.ndarray, ...] | None) -> None:
        self.predictions = predictions
        self.label_ids = label_ids

    def __iter__(self) -> Any:
        return iter((self.predictions, self.label_ids))

    def __getitem__(self, index: int) -> Any:
        return (self.predictions, self.label_ids)[index]

    def __repr__(self) -> str:
        return f"EvalPrediction(predictions={self.predictions!r}, label_ids={self.label_ids!r})"


class EvalLoopOutput(NamedTuple):
    predictions: np.ndarray | tuple[np.ndarray, ...] | None
    label_ids: np.ndarray | tuple[np.ndarray, ...] | None
    metrics: dict[str, float]
    num_samples: int


class PredictionOutput(NamedTuple):
    predictions: np.ndarray | tuple[np.ndarray, ...]
    label_ids: np.ndarray | tuple[np.ndarray, ...] | None
    metrics: dict[str, float]


class TrainOutput(NamedTuple):
    global_step: int
    training_loss: float
    metrics: dict[str, float]


def speed_metrics(split: str, start_time: float, num_samples: float | None = None,
                  num_steps: float | None = None, num_tokens: float | None = None,
                  ) -> dict[str, float]:
    """`<split>_runtime` and, per second, samples, steps and tokens (transformers' keys)."""
    runtime = time.time() - start_time
    result = {f"{split}_runtime": round(runtime, 4)}
    if runtime == 0:
        return result
    for name, count in (("samples", num_samples), ("steps", num_steps), ("tokens", num_tokens)):
        if count is not None:
            result[f"{split}_{name}_per_second"] = round(count / runtime, 3)
    return result


def to_numpy(data: Any) -> Any:
    """Tensors (nested in tuples/lists) as numpy arrays on the CPU; bf16 read as float32, which
    numpy lacks."""
    if isinstance(data, (list, tuple)):
        return type(data)(to_numpy(d) for d in data)
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu()
        if data.dtype == torch.bfloat16:
            data = data.float()
        return data.numpy()
    return data


def concat_batches(batches: list[Any], padding_index: int = -100) -> Any:
    """Per-batch arrays (or tuples of them) joined along the first axis, padded where the
    sequence lengths differ; None if there are no batches."""
    if not batches:
        return None
    first = batches[0]
    if isinstance(first, (list, tuple)):
        return type(first)(concat_batches([b[i] for b in batches], padding_index)
                           for i in range(len(first)))
    if first.ndim == 0:
        return np.stack(batches)
    if first.ndim == 1 or len({b.shape[1] for b in batches}) == 1:
        return np.concatenate(batches, axis=0)
    # sequences of other lengths per batch: rows padded on the right to the longest
    width = max(b.shape[1] for b in batches)
    out = np.full((sum(len(b) for b in batches), width, *first.shape[2:]), padding_index,
                  dtype=np.result_type(*batches))
    row = 0
    for batch in batches:
        out[row:row + len(batch), : batch.shape[1]] = batch
        row += len(batch)
    return out


def denumpify(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metric values as plain Python numbers (numpy scalars, 0-d arrays and tensors converted),
    so that the logs and trainer_state.json take them."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        elif isinstance(value, (np.generic, np.ndarray)) and np.size(value) == 1:
            value = value.item()
        out[key] = value
    return out
