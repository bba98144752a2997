"""feature-extraction: the model's last hidden states, [1][tokens][hidden] per input."""

from __future__ import annotations

from typing import Any

from cove.pipelines.base import Pipeline


class FeatureExtractionPipeline(Pipeline):
    """Nested lists (or `return_tensors=True`: a tensor of shape [1, tokens, hidden]) of the
    real tokens of each input (no padding rows, batched or not). `truncation` and
    `tokenize_kwargs` go to the tokenizer."""

    task = "feature-extraction"

    def _sanitize(self, truncation: Any = None, tokenize_kwargs: dict | None = None,
                  return_tensors: bool | None = None) -> dict[str, Any]:
        tokenize_kwargs = dict(tokenize_kwargs or {})
        if truncation is not None:
            if "truncation" in tokenize_kwargs:
                raise ValueError("truncation given twice (as an argument and in "
                                 "tokenize_kwargs).")
            tokenize_kwargs["truncation"] = truncation
        params: dict[str, Any] = {}
        if tokenize_kwargs:
            params["tokenizer_kwargs"] = tokenize_kwargs
        if return_tensors is not None:
            params["return_tensors"] = bool(return_tensors)
        return params

    def _postprocess(self, rows, enc, batch, outputs, params) -> list[Any]:
        hidden = outputs[0]
        width = hidden.shape[1]
        left = self.tokenizer.padding_side == "left"
        tensors = params.get("return_tensors", False)
        results = []
        for b, i in enumerate(rows):
            n = len(enc["input_ids"][i])
            part = hidden[b:b + 1, width - n:] if left else hidden[b:b + 1, :n]
            results.append(part.detach().cpu().clone() if tensors else part.tolist())
        return results
