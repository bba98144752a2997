"""text-classification (alias sentiment-analysis): labels and scores, text pairs."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from cove.pipelines.base import Pipeline

_FUNCTIONS = ("softmax", "sigmoid", "none")
_UNSET = object()


class TextClassificationPipeline(Pipeline):
    """`top_k` (1 by default; None: every label), `function_to_apply` ("default", "softmax",
    "sigmoid", "none"), text pairs as {"text": ..., "text_pair": ...}, tokenizer kwargs."""

    task = "text-classification"

    def _sanitize(self, top_k: Any = _UNSET, function_to_apply: Any = None,
                  **tokenizer_kwargs: Any) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if tokenizer_kwargs:
            accepted = {name for name, p in
                        inspect.signature(self.tokenizer.__call__).parameters.items()
                        if p.kind is not p.VAR_KEYWORD} | {"split_special_tokens"}
            if unknown := sorted(set(tokenizer_kwargs) - accepted):
                raise TypeError(f"{self.task} pipeline got unexpected arguments: "
                                f"{', '.join(unknown)}.")
            params["tokenizer_kwargs"] = tokenizer_kwargs
        if top_k is not _UNSET:
            if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
                raise ValueError(f"top_k must be a positive int or None, got {top_k!r}.")
            params["top_k"] = top_k
            params["legacy"] = False
        if function_to_apply is not None:
            name = str(getattr(function_to_apply, "value", function_to_apply)).lower()
            if name == "default":
                name = None
            elif name not in _FUNCTIONS:
                raise ValueError(f"Unrecognized function_to_apply {function_to_apply!r}: use "
                                 "'default', 'softmax', 'sigmoid' or 'none'.")
            params["function_to_apply"] = name
        return params

    def _check(self, item: Any) -> None:
        if isinstance(item, dict):
            if set(item) - {"text", "text_pair"} or "text" not in item:
                raise ValueError('A text pair is a dict {"text": ..., "text_pair": ...}; got keys '
                                 f"{sorted(item)}.")
            for value in item.values():
                super()._check(value)
            return
        if isinstance(item, (list, tuple)):
            raise ValueError("The pipeline received invalid inputs, if you are trying to send "
                             'text pairs, send a dictionary {"text": "My text", "text_pair": '
                             '"My pair"}.')
        super()._check(item)

    def _tokenize(self, items: list[Any], params: dict[str, Any]) -> dict[str, list]:
        kwargs = params.get("tokenizer_kwargs", {})
        singles = [i for i, x in enumerate(items) if not isinstance(x, dict)]
        pairs = [i for i, x in enumerate(items) if isinstance(x, dict)]
        if not pairs:
            return dict(self.tokenizer(items, **kwargs))
        parts = []
        if singles:
            parts.append((singles, self.tokenizer([items[i] for i in singles], **kwargs)))
        firsts = [items[i]["text"] for i in pairs]
        seconds = [items[i].get("text_pair") for i in pairs]
        if all(s is None for s in seconds):
            parts.append((pairs, self.tokenizer(firsts, **kwargs)))
        elif any(s is None for s in seconds):
            with_pair = [i for i in pairs if items[i].get("text_pair") is not None]
            alone = [i for i in pairs if items[i].get("text_pair") is None]
            parts.append((with_pair, self.tokenizer(
                [items[i]["text"] for i in with_pair],
                text_pair=[items[i]["text_pair"] for i in with_pair], **kwargs)))
            parts.append((alone, self.tokenizer([items[i]["text"] for i in alone], **kwargs)))
        else:
            parts.append((pairs, self.tokenizer(firsts, text_pair=seconds, **kwargs)))
        out: dict[str, list] = {}
        for index, enc in parts:
            for key, column in enc.items():
                target = out.setdefault(key, [None] * len(items))
                for i, row in zip(index, column, strict=True):
                    target[i] = row
        return out

    def _function(self, params: dict[str, Any]) -> str:
        name = params.get("function_to_apply")
        if name is not None:
            return name
        config = self.model.config
        problem = getattr(config, "problem_type", None)
        if problem == "regression":
            return "none"
        if problem == "multi_label_classification" or config.num_labels == 1:
            return "sigmoid"
        if problem == "single_label_classification" or config.num_labels > 1:
            return "softmax"
        fallback = getattr(config, "function_to_apply", None)
        return str(fallback).lower() if fallback in _FUNCTIONS else "none"

    def _postprocess(self, rows, enc, batch, outputs, params) -> list[Any]:
        logits = outputs["logits"].float()
        function = self._function(params)
        if function == "softmax":
            scores = torch.softmax(logits, dim=-1)
        elif function == "sigmoid":
            scores = torch.sigmoid(logits)
        else:
            scores = logits
        id2label = self.model.config.id2label
        if params.get("legacy", True):
            best, index = scores.max(dim=-1)
            return [{"label": id2label[i], "score": s}
                    for s, i in zip(best.tolist(), index.tolist(), strict=True)]
        top_k = params.get("top_k")
        k = scores.shape[-1] if top_k is None else min(top_k, scores.shape[-1])
        values, indices = scores.topk(k, dim=-1)
        return [[{"label": id2label[i], "score": s} for s, i in zip(vs, ix, strict=True)]
                for vs, ix in zip(values.tolist(), indices.tolist(), strict=True)]

    def _finish(self, inputs: Any, result: Any, single: bool, call_kwargs: dict) -> Any:
        # As transformers: one string called without top_k answers a list.
        if isinstance(inputs, str) and "top_k" not in call_kwargs:
            return [result]
        return result
