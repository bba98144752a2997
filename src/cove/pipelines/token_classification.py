"""token-classification (alias ner): a label per token, or entities grouped by word and tag.

Follows transformers' TokenClassificationPipeline: softmax scores per token, special tokens
dropped, `aggregation_strategy` "none" (one entry per token, with its index), "simple"
(adjacent tokens of one tag grouped, B-/I- aware), "first", "average" or "max" (tokens of a
word agree first), `ignore_labels` (["O"] by default), start/end character offsets, and
`word` as the tokenizer rebuilds it from its tokens.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cove.pipelines.base import Pipeline

_STRATEGIES = ("none", "simple", "first", "average", "max")


class TokenClassificationPipeline(Pipeline):
    """`aggregation_strategy` ("none", "simple", "first", "average", "max") and
    `ignore_labels` (labels left out of the results, ["O"] by default)."""

    task = "token-classification"
    default_batch_size = 1

    def _sanitize(self, aggregation_strategy: Any = None, ignore_labels: Any = None,
                  **kwargs: Any) -> dict[str, Any]:
        if "stride" in kwargs:
            raise ValueError("token-classification: stride is not supported yet by Cove.")
        if kwargs:
            raise TypeError(f"{self.task} pipeline got unexpected arguments: "
                            f"{', '.join(sorted(kwargs))}.")
        params: dict[str, Any] = {}
        if aggregation_strategy is not None:
            name = str(getattr(aggregation_strategy, "value", aggregation_strategy)).lower()
            if name not in _STRATEGIES:
                raise ValueError(f"Unknown aggregation_strategy {aggregation_strategy!r}: use "
                                 f"one of {', '.join(_STRATEGIES)}.")
            if name in {"first", "average", "max"} and not getattr(self.tokenizer, "is_fast",
                                                                   True):
                raise ValueError("Slow tokenizers cannot handle subwords. Please set the "
                                 '`aggregation_strategy` option to `"simple"` or use a fast '
                                 "tokenizer.")
            params["aggregation_strategy"] = name
        if ignore_labels is not None:
            if isinstance(ignore_labels, str):
                ignore_labels = [ignore_labels]
            params["ignore_labels"] = list(ignore_labels)
        return params

    def _tokenize(self, items: list[Any], params: dict[str, Any]) -> dict[str, list]:
        max_length = getattr(self.tokenizer, "model_max_length", None)
        truncation = bool(max_length and max_length > 0)
        enc = dict(self.tokenizer(items, truncation=truncation, return_special_tokens_mask=True,
                                  return_offsets_mapping=True))
        enc["_text"] = list(items)
        return enc

    def _postprocess(self, rows, enc, batch, outputs, params) -> list[Any]:
        logits = outputs["logits"].float().cpu().numpy()
        strategy = params.get("aggregation_strategy", "none")
        ignore = params.get("ignore_labels", ["O"])
        results = []
        for b, r in enumerate(rows):
            n = len(enc["input_ids"][r])
            row = logits[b, :n]
            shifted = np.exp(row - row.max(axis=-1, keepdims=True))
            scores = shifted / shifted.sum(axis=-1, keepdims=True)
            pre = self._gather(enc["_text"][r], enc["input_ids"][r], scores,
                               enc["offset_mapping"][r], enc["special_tokens_mask"][r])
            entities = self._aggregate(pre, strategy)
            results.append([e for e in entities if e.get("entity") not in ignore
                            and e.get("entity_group") not in ignore])
        return results

    # -- as transformers' gather_pre_entities / aggregate ---------------------------------
    def _gather(self, sentence: str, input_ids: list[int], scores: np.ndarray,
                offsets: list[tuple[int, int]], special: list[int]) -> list[dict]:
        backend = getattr(self.tokenizer, "_tokenizer", None)
        word_aware = bool(backend is not None and getattr(
            getattr(backend, "model", None), "continuing_subword_prefix", None))
        unk = self.tokenizer.unk_token_id
        pre = []
        for idx, token_scores in enumerate(scores):
            if special[idx]:
                continue
            word = self.tokenizer.convert_ids_to_tokens(int(input_ids[idx]))
            start, end = (int(x) for x in offsets[idx])
            word_ref = sentence[start:end]
            if word_aware:
                is_subword = len(word) != len(word_ref)
            else:
                is_subword = start > 0 and " " not in sentence[start - 1:start + 1]
            if int(input_ids[idx]) == unk:
                word = word_ref
                is_subword = False
            pre.append({"word": word, "scores": token_scores, "start": start, "end": end,
                        "index": idx, "is_subword": is_subword})
        return pre

    def _label(self, index: int) -> str:
        return self.model.config.id2label[int(index)]

    def _aggregate(self, pre: list[dict], strategy: str) -> list[dict]:
        if strategy in {"none", "simple"}:
            entities = []
            for p in pre:
                best = int(p["scores"].argmax())
                entities.append({"entity": self._label(best), "score": float(p["scores"][best]),
                                 "index": p["index"], "word": p["word"], "start": p["start"],
                                 "end": p["end"]})
        else:
            entities = []
            group: list[dict] = []
            for p in pre:
                if group and not p["is_subword"]:
                    entities.append(self._aggregate_word(group, strategy))
                    group = []
                group.append(p)
            if group:
                entities.append(self._aggregate_word(group, strategy))
        if strategy == "none":
            return entities
        return self._group_entities(entities)

    def _aggregate_word(self, group: list[dict], strategy: str) -> dict:
        word = self.tokenizer.convert_tokens_to_string([p["word"] for p in group])
        if strategy == "first":
            scores = group[0]["scores"]
        elif strategy == "max":
            scores = max(group, key=lambda p: p["scores"].max())["scores"]
        else:  # average
            scores = np.nanmean(np.stack([p["scores"] for p in group]), axis=0)
        best = int(scores.argmax())
        return {"entity": self._label(best), "score": float(scores[best]), "word": word,
                "start": group[0]["start"], "end": group[-1]["end"]}

    @staticmethod
    def _tag(name: str) -> tuple[str, str]:
        if name.startswith("B-"):
            return "B", name[2:]
        if name.startswith("I-"):
            return "I", name[2:]
        return "I", name

    def _group(self, entities: list[dict]) -> dict:
        return {"entity_group": entities[0]["entity"].split("-", 1)[-1],
                "score": float(np.nanmean([e["score"] for e in entities])),
                "word": self.tokenizer.convert_tokens_to_string([e["word"] for e in entities]),
                "start": entities[0]["start"], "end": entities[-1]["end"]}

    def _group_entities(self, entities: list[dict]) -> list[dict]:
        groups: list[dict] = []
        current: list[dict] = []
        for entity in entities:
            if current:
                bi, tag = self._tag(entity["entity"])
                _, last_tag = self._tag(current[-1]["entity"])
                if tag == last_tag and bi != "B":
                    current.append(entity)
                    continue
                groups.append(self._group(current))
            current = [entity]
        if current:
            groups.append(self._group(current))
        return groups
