"""fill-mask: the most likely tokens for each mask, with the filled-in sequences."""

from __future__ import annotations

import logging
from typing import Any

import torch

from cove.pipelines.base import Pipeline

log = logging.getLogger("cove.pipelines")


class FillMaskPipeline(Pipeline):
    """`top_k` (5 by default) and `targets` (a word or a list: scores only over them)."""

    task = "fill-mask"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.tokenizer.mask_token_id is None:
            raise ValueError("fill-mask: the tokenizer does not define a mask token.")

    def _sanitize(self, top_k: int | None = None, targets: Any = None,
                  tokenizer_kwargs: dict | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if tokenizer_kwargs:
            params["tokenizer_kwargs"] = tokenizer_kwargs
        if top_k is not None:
            if not isinstance(top_k, int) or top_k < 1:
                raise ValueError(f"top_k must be a positive int, got {top_k!r}.")
            params["top_k"] = top_k
        if targets is not None:
            params["target_ids"] = self._target_ids(targets)
        return params

    def _target_ids(self, targets: Any) -> list[int]:
        if isinstance(targets, str):
            targets = [targets]
        vocab = self.tokenizer.get_vocab()
        ids: list[int] = []
        for target in targets:
            id_ = vocab.get(target)
            if id_ is None:
                pieces = self.tokenizer(target, add_special_tokens=False,
                                        return_attention_mask=False,
                                        return_token_type_ids=False)["input_ids"]
                if not pieces:
                    log.warning("The target %r is not in the vocabulary and has no tokens: "
                                "ignored.", target)
                    continue
                id_ = pieces[0]
                log.warning("The target %r is not in the vocabulary: replaced with %r.",
                            target, self.tokenizer.convert_ids_to_tokens(id_))
            ids.append(id_)
        ids = list(dict.fromkeys(ids))
        if not ids:
            raise ValueError("At least one target must be provided when passed.")
        return ids

    def _tokenize(self, items: list[Any], params: dict[str, Any]) -> dict[str, list]:
        enc = dict(self.tokenizer(items, **params.get("tokenizer_kwargs", {})))
        mask_id = self.tokenizer.mask_token_id
        for item, ids in zip(items, enc["input_ids"], strict=True):
            if mask_id not in ids:
                raise ValueError(f"No mask_token ({self.tokenizer.mask_token}) found on the "
                                 f"input: {item!r:.80}")
        return enc

    def _postprocess(self, rows, enc, batch, outputs, params) -> list[Any]:
        input_ids = batch["input_ids"]
        where = (input_ids == self.tokenizer.mask_token_id).nonzero(as_tuple=False)
        logits = outputs["logits"][where[:, 0], where[:, 1]].float()
        probs = logits.softmax(dim=-1)
        target_ids = params.get("target_ids")
        if target_ids is not None:
            probs = probs[:, torch.tensor(target_ids, device=probs.device)]
        k = min(params.get("top_k", 5), probs.shape[-1])
        values, predictions = probs.topk(k, dim=-1)
        values, predictions = values.tolist(), predictions.tolist()
        where = where.tolist()
        pad_id = self.tokenizer.pad_token_id
        per_row: list[list] = [[] for _ in rows]
        for (b, position), vs, ps in zip(where, values, predictions, strict=True):
            per_row[b].append((position, vs, ps))
        results = []
        for b, i in enumerate(rows):
            ids = list(enc["input_ids"][i])
            offset = input_ids.shape[1] - len(ids) if self.tokenizer.padding_side == "left" else 0
            masks = per_row[b]
            single = len(masks) == 1
            out = []
            for position, vs, ps in masks:
                row = []
                for v, p in zip(vs, ps, strict=True):
                    token = target_ids[p] if target_ids is not None else p
                    tokens = list(ids)
                    tokens[position - offset] = token
                    tokens = [t for t in tokens if t != pad_id]
                    row.append({"score": v, "token": token,
                                "token_str": self.tokenizer.decode([token]),
                                "sequence": self.tokenizer.decode(
                                    tokens, skip_special_tokens=single)})
                out.append(row)
            results.append(out[0] if single else out)
        return results

    def _finish(self, inputs: Any, result: Any, single: bool, call_kwargs: dict) -> Any:
        if isinstance(inputs, list) and len(inputs) == 1:  # as transformers
            return result[0]
        return result
