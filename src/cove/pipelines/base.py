"""The pipeline engine: loading, devices, and batched inference in input order.

Inputs are tokenised together (one tokenizer call per chunk, no padding), sorted by length
into batches of `batch_size`, padded per batch, run under `torch.inference_mode`, and the
results are put back in input order. Generators are consumed chunk by chunk and their results
are yielded as they come.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from cove.models.placement import as_device, check_device

_SINGLE = (str, dict)


class Pipeline:
    """A model and its tokenizer, callable on one input, a list, or an iterable."""

    task: str = ""
    default_batch_size: int = 1
    # An iterable is read this many batches at a time (sorted by length within), when batching.
    chunk_batches: int = 8

    def __init__(self, model: Any, tokenizer: Any, *, task: str | None = None,
                 device: Any = None, batch_size: int | None = None, **kwargs: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        if task is not None:
            self.task = task
        self.device = check_device(as_device(device)) if device is not None else model.device
        # A model spread over devices (device_map) stays where it is: its hooks move the inputs.
        spread = len(set((getattr(model, "hf_device_map", None) or {}).values())) > 1
        if self.device != model.device and not spread:
            self.model.to(self.device)
        self.model.eval()
        self.batch_size = _check_batch_size(batch_size)
        self._accepted = _forward_parameters(model)
        self._params = self._sanitized(kwargs)

    # -- what a task defines --------------------------------------------------------------
    @classmethod
    def _from_repository(cls, name: str, hub: dict[str, Any]) -> dict[str, Any]:
        """Task arguments read from the model's folder or repository (`hub`: revision=,
        token=), for a model given by name."""
        return {}

    def _sanitize(self, **kwargs: Any) -> dict[str, Any]:
        """The task's parameters from keyword arguments (unknown ones are refused)."""
        if kwargs:
            raise TypeError(f"{self.task} pipeline got unexpected arguments: "
                            f"{', '.join(sorted(kwargs))}.")
        return {}

    def _sanitized(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """_sanitize's result, unknown arguments refused by name (not as a TypeError about a
        private method)."""
        accepted = inspect.signature(self._sanitize).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
            unknown = sorted(set(kwargs) - set(accepted))
            if unknown:
                raise TypeError(f"{self.task} pipeline got unexpected arguments: "
                                f"{', '.join(unknown)} (it accepts {', '.join(accepted)}).")
        return self._sanitize(**kwargs)

    def _check(self, item: Any) -> None:
        if not isinstance(item, str):
            raise ValueError(f"{self.task} pipeline expects strings, got "
                             f"{type(item).__name__}: {item!r:.80}")
        if not item.strip():
            raise ValueError(f"{self.task} pipeline got an empty string.")

    def _tokenize(self, items: list[Any], params: dict[str, Any]) -> dict[str, list]:
        """Token rows (lists, unpadded) for each item: {"input_ids": [...], ...}."""
        return dict(self.tokenizer(items, **params.get("tokenizer_kwargs", {})))

    def _postprocess(self, rows: list[int], enc: dict[str, list], batch: dict[str, torch.Tensor],
                     outputs: Any, params: dict[str, Any]) -> list[Any]:
        raise NotImplementedError

    def _finish(self, inputs: Any, result: Any, single: bool, call_kwargs: dict) -> Any:
        """The result returned to the caller (tasks reshape single/list results here)."""
        return result

    # -- calling ---------------------------------------------------------------------------
    def _batch_size(self, kwargs: dict[str, Any]) -> int:
        """This call's batch size (popped from its kwargs), else the pipeline's, else the
        task's default."""
        batch_size = _check_batch_size(kwargs.pop("batch_size", None))
        return batch_size or self.batch_size or self.default_batch_size

    def __call__(self, inputs: Any, **kwargs: Any) -> Any:
        batch_size = self._batch_size(kwargs)
        params = {**self._params, **self._sanitized(kwargs)} if kwargs else self._params
        if isinstance(inputs, _SINGLE):
            result = self._run([inputs], params, 1)[0]
            return self._finish(inputs, result, True, kwargs)
        if isinstance(inputs, (bytes, bytearray)):  # iterable, but never meant as items
            raise ValueError(f"{self.task} pipeline got bytes: decode them to a str first.")
        if isinstance(inputs, (list, tuple)):
            result = self._run(list(inputs), params, batch_size)
            return self._finish(inputs, result, False, kwargs)
        if isinstance(inputs, Iterable):
            return self._iterate(inputs, params, batch_size)
        raise ValueError(f"{self.task} pipeline expects a string, a list or an iterable, got "
                         f"{type(inputs).__name__}.")

    def _iterate(self, inputs: Iterable, params: dict, batch_size: int) -> Iterator[Any]:
        """Results of an iterable's items, as they come (as transformers: no reshaping)."""
        chunk_size = batch_size * self.chunk_batches if batch_size > 1 else 1
        chunk: list[Any] = []
        for item in inputs:
            chunk.append(item)
            if len(chunk) >= chunk_size:
                yield from self._run(chunk, params, batch_size)
                chunk = []
        if chunk:
            yield from self._run(chunk, params, batch_size)

    def _run(self, items: list[Any], params: dict[str, Any], batch_size: int) -> list[Any]:
        if not items:
            return []
        for item in items:
            self._check(item)
        enc = self._tokenize(items, params)
        ids = enc["input_ids"]
        results: list[Any] = [None] * len(ids)
        with torch.inference_mode():
            for rows in batches([len(row) for row in ids], batch_size):
                batch = self._collate(rows, enc)
                outputs = self.model(**batch)
                for i, r in zip(rows, self._postprocess(rows, enc, batch, outputs, params),
                                strict=True):
                    results[i] = r
        return results

    def _collate(self, rows: list[int], enc: dict[str, list]) -> dict[str, torch.Tensor]:
        """Pad the rows to the longest one (on the tokenizer's padding side) as tensors."""
        ids = enc["input_ids"]
        length = max(len(ids[i]) for i in rows)
        left = getattr(self.tokenizer, "padding_side", "right") == "left"
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = 0
        fills = {"input_ids": pad_id, "attention_mask": 0,
                 "token_type_ids": getattr(self.tokenizer, "pad_token_type_id", 0)}
        batch = {}
        for key, fill in fills.items():
            if key not in self._accepted:
                continue
            if key in enc:
                column = [enc[key][i] for i in rows]
            elif key == "attention_mask":
                column = [[1] * len(ids[i]) for i in rows]
            else:
                continue
            if left:
                padded = [[fill] * (length - len(r)) + list(r) for r in column]
            else:
                padded = [list(r) + [fill] * (length - len(r)) for r in column]
            batch[key] = torch.tensor(padded, dtype=torch.long, device=self.device)
        return batch

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(task={self.task!r}, model={type(self.model).__name__}, "
                f"device={self.device})")


def batches(lengths: list[int], batch_size: int) -> Iterator[list[int]]:
    """Row indices in batches of `batch_size`: sorted by length when batching (less padding;
    callers put results back in input order), else in input order."""
    order = list(range(len(lengths)))
    if batch_size > 1:
        order.sort(key=lengths.__getitem__)
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def _check_batch_size(batch_size: Any) -> int | None:
    """None or a positive int (anything else would give no results or an opaque error)."""
    if batch_size is not None and (isinstance(batch_size, bool)
                                   or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    return batch_size


def _forward_parameters(model: Any) -> set[str]:
    """The inputs the model's forward names; for an adapter wrapper whose forward passes
    **kwargs on (a PeftModel), those of the model inside."""
    params = inspect.signature(model.forward).parameters
    inner = getattr(model, "get_base_model", None)
    if callable(inner) and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return set(params) | set(inspect.signature(inner().forward).parameters)
    return set(params)
