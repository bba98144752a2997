"""question-answering: extractive answers (spans of the context), transformers 4.x semantics.

transformers 5 dropped this pipeline; Cove keeps it and follows the 4.x algorithm: long
contexts are cut into overlapping spans (`doc_stride`), each span's start and end logits are
softmaxed over the context tokens (plus [CLS]), candidate answers are start x end products no
longer than `max_answer_len` tokens (each span's best `top_k`, or `2 * top_k + 10` when aligned
to whole words), candidates with the same text (ignoring case) are one answer with their scores
summed, and the best `top_k` answers over all spans are returned; `handle_impossible_answer`
adds the empty answer, scored by the lowest [CLS] x [CLS] product of the spans. The real 4.57
pipeline is the oracle of tests/pipelines/test_qa_oracle.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cove.pipelines.base import Pipeline, batches

_UNSET = object()


def decode_spans(start: np.ndarray, end: np.ndarray, top_k: int, max_answer_len: int,
                 allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top_k (start, end) token pairs by start x end probability, as transformers 4.x."""
    outer = np.matmul(start[:, None], end[None, :])
    candidates = np.tril(np.triu(outer), max_answer_len - 1)
    flat = candidates.flatten()
    if top_k == 1:
        order = np.array([np.argmax(flat)])
    elif len(flat) < top_k:
        order = np.argsort(-flat)
    else:
        index = np.argpartition(-flat, top_k)[0:top_k]
        order = index[np.argsort(-flat[index])]
    starts, ends = np.unravel_index(order, candidates.shape)
    keep = np.isin(starts, allowed) & np.isin(ends, allowed)
    starts, ends = starts[keep], ends[keep]
    return starts, ends, candidates[starts, ends]


class QuestionAnsweringPipeline(Pipeline):
    """Inputs {"question": ..., "context": ...} (or question=, context=); `top_k` (1),
    `doc_stride` (128), `max_answer_len` (15), `max_seq_len` (384), `max_question_len` (as 4.x
    with a fast tokenizer: unused), `handle_impossible_answer` (False), `align_to_words`
    (True), `padding` (the tokenizer's)."""

    task = "question-answering"

    def _sanitize(self, top_k: Any = None, topk: Any = None, doc_stride: Any = None,
                  max_answer_len: Any = None, max_seq_len: Any = None,
                  max_question_len: Any = None, handle_impossible_answer: Any = None,
                  align_to_words: Any = None, padding: Any = None) -> dict[str, Any]:
        params: dict[str, Any] = {}
        top_k = top_k if top_k is not None else topk
        if top_k is not None:
            if not isinstance(top_k, int) or top_k < 1:
                raise ValueError(f"top_k parameter should be >= 1 (got {top_k!r}).")
            params["top_k"] = top_k
        if max_answer_len is not None:
            if not isinstance(max_answer_len, int) or max_answer_len < 1:
                raise ValueError(f"max_answer_len parameter should be >= 1 (got "
                                 f"{max_answer_len!r}).")
            params["max_answer_len"] = max_answer_len
        for name, value, least in [("doc_stride", doc_stride, 0), ("max_seq_len", max_seq_len, 1),
                                   ("max_question_len", max_question_len, 1)]:
            if value is not None:
                if not isinstance(value, int) or value < least:
                    raise ValueError(f"{name} parameter should be an int >= {least} (got "
                                     f"{value!r}).")
                params[name] = value
        if handle_impossible_answer is not None:
            params["handle_impossible_answer"] = bool(handle_impossible_answer)
        if align_to_words is not None:
            params["align_to_words"] = bool(align_to_words)
        if padding is not None:  # the tokenizer's (no effect on the answers: pads are masked)
            params["padding"] = padding
        return params

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        question = kwargs.pop("question", _UNSET)
        context = kwargs.pop("context", _UNSET)
        if question is not _UNSET or context is not _UNSET:
            if args:
                raise ValueError("Pass either inputs or question=/context=, not both.")
            if question is _UNSET or context is _UNSET:
                raise ValueError("question-answering needs both a question and a context.")
            if isinstance(question, list) or isinstance(context, list):
                questions = question if isinstance(question, list) else [question] * len(context)
                contexts = context if isinstance(context, list) else [context] * len(questions)
                if len(questions) != len(contexts):
                    raise ValueError("Questions and contexts don't have the same lengths.")
                inputs: Any = [{"question": q, "context": c}
                               for q, c in zip(questions, contexts, strict=True)]
            else:
                inputs = {"question": question, "context": context}
        elif len(args) == 2 and all(isinstance(a, str) for a in args):
            inputs = {"question": args[0], "context": args[1]}  # as 4.x: qa(question, context)
        elif len(args) > 1:
            inputs = list(args)  # as 4.x: qa(item, item, ...) is a list
        elif args:
            inputs = args[0]
        else:
            raise ValueError("question-answering expects an input: a {\"question\": ..., "
                             "\"context\": ...} dict, a list or an iterable of them, or "
                             "question=/context=.")
        # as 4.x: a list of one input gives that input's result, not a list of one result
        if isinstance(inputs, (list, tuple)) and len(inputs) == 1:
            inputs = inputs[0]
        return super().__call__(inputs, **kwargs)

    def _check(self, item: Any) -> None:
        if not isinstance(item, dict):
            raise ValueError('question-answering expects {"question": ..., "context": ...} '
                             f"dicts, got {type(item).__name__}: {item!r:.80}")
        for key in ("question", "context"):
            value = item.get(key)
            if value is None:
                raise ValueError(f"question-answering: the {key} is missing.")
            if not isinstance(value, str):
                raise ValueError(f"question-answering: the {key} must be a string, got "
                                 f"{type(value).__name__}.")
            if not value.strip():
                raise ValueError(f"question-answering: the {key} is an empty string.")

    def _run(self, items: list[Any], params: dict[str, Any], batch_size: int) -> list[Any]:
        if not items:
            return []
        for item in items:
            self._check(item)
        tok = self.tokenizer
        max_seq_len = params.get("max_seq_len")
        if max_seq_len is None:
            max_seq_len = min(tok.model_max_length, 384)
        doc_stride = params.get("doc_stride")
        if doc_stride is None:  # (an explicit 0 stays: spans without overlap, as 4.x)
            doc_stride = min(max_seq_len // 2, 128)
        if doc_stride > max_seq_len:
            raise ValueError(f"`doc_stride` ({doc_stride}) is larger than `max_seq_len` "
                             f"({max_seq_len})")
        question_first = getattr(tok, "padding_side", "right") == "right"
        questions = [item["question"] for item in items]
        contexts = [item["context"] for item in items]
        self._check_room(questions, contexts, max_seq_len, doc_stride)
        enc = tok(questions if question_first else contexts,
                  contexts if question_first else questions,
                  truncation="only_second" if question_first else "only_first",
                  max_length=max_seq_len, stride=doc_stride, return_token_type_ids=True,
                  return_overflowing_tokens=True, return_offsets_mapping=True,
                  padding=params.get("padding", False))
        ids = enc["input_ids"]
        n = len(ids)
        owner = list(enc["overflow_to_sample_mapping"])
        starts: list[Any] = [None] * n
        ends: list[Any] = [None] * n
        columns = dict(enc)
        with torch.inference_mode():
            for rows in batches([len(row) for row in ids], batch_size):
                outputs = self.model(**self._collate(rows, columns))
                start_logits = outputs["start_logits"].float().cpu().numpy()
                end_logits = outputs["end_logits"].float().cpu().numpy()
                for b, r in enumerate(rows):
                    # the row's own tokens: padding lies after them, or before (left side)
                    cut = (slice(0, len(ids[r])) if question_first
                           else slice(start_logits.shape[1] - len(ids[r]), None))
                    starts[r] = start_logits[b, cut]
                    ends[r] = end_logits[b, cut]
        spans: list[list[int]] = [[] for _ in items]
        for r, i in enumerate(owner):
            spans[i].append(r)
        return [self._answers(items[i], spans[i], enc, starts, ends, question_first, params)
                for i in range(len(items))]

    def _check_room(self, questions: list[str], contexts: list[str], max_seq_len: int,
                    doc_stride: int) -> None:
        """Refuse a question too long for its context to be cut into spans: one that leaves no
        more than `doc_stride` tokens of `max_seq_len` to the context, which the tokenizer
        would meet with an opaque error (or a Rust panic)."""
        tok = self.tokenizer
        specials = tok.num_special_tokens_to_add(pair=True)
        lengths = [len(ids) for ids in
                   tok(questions, add_special_tokens=False, verbose=False)["input_ids"]]
        for question, context, length in zip(questions, contexts, lengths, strict=True):
            room = max_seq_len - length - specials
            if room > doc_stride:
                continue
            context_length = len(tok(context, add_special_tokens=False,
                                     verbose=False)["input_ids"])
            if length + context_length + specials > max_seq_len:  # it must be cut: it can't
                raise ValueError(
                    f"question-answering: the question {question[:60]!r} takes {length} tokens "
                    f"(and {specials} special ones), leaving {max(room, 0)} of max_seq_len "
                    f"({max_seq_len}) per span for a context of {context_length}: that must be "
                    f"more than doc_stride ({doc_stride}). Raise max_seq_len, lower doc_stride "
                    "or shorten the question.")

    def _answers(self, item, rows, enc, starts, ends, question_first, params) -> Any:
        top_k = params.get("top_k", 1)
        max_answer_len = params.get("max_answer_len", 15)
        impossible = params.get("handle_impossible_answer", False)
        align = params.get("align_to_words", True)
        cls_id = self.tokenizer.cls_token_id
        sequence_index = 1 if question_first else 0
        context = item["context"]
        min_null_score = 1000000.0
        answers: list[dict[str, Any]] = []
        by_text: dict[str, dict[str, Any]] = {}
        for r in rows:
            sequence_ids = enc.sequence_ids(r)
            # 1 for the tokens an answer may use (the context's, and [CLS])
            if question_first:
                usable = np.array([s == sequence_index for s in sequence_ids], dtype=bool)
            else:  # as transformers 4.x: nothing masked when the context comes first
                usable = np.ones(len(sequence_ids), dtype=bool)
            if cls_id is not None:
                usable |= np.array(enc["input_ids"][r]) == cls_id
            if "attention_mask" in enc:  # never a pad (padding=)
                usable &= np.array(enc["attention_mask"][r], dtype=bool)
            start = np.where(usable, starts[r], -10000.0)
            end = np.where(usable, ends[r], -10000.0)
            start = np.exp(start - start.max())
            start = start / start.sum()
            end = np.exp(end - end.max())
            end = end / end.sum()
            if impossible:
                min_null_score = min(min_null_score, float(start[0] * end[0]))
            start[0] = end[0] = 0.0
            allowed = usable.nonzero()[0]
            if len(allowed):  # as transformers 4.x, whose 2-D nonzero() also lets index 0 in
                allowed = np.append(allowed, 0)
            encoding = enc.encodings[r]
            # as 4.x: extra candidates when aligning to words, since several token spans
            # widen to the same words
            pre_top_k = top_k * 2 + 10 if align else top_k
            for s, e, score in zip(*decode_spans(start, end, pre_top_k, max_answer_len, allowed),
                                   strict=True):
                first, last = self._indices(encoding, int(s), int(e), sequence_index, align)
                text = context[first:last]
                # as 4.x: candidates (of any span) with the same text, ignoring case, are one
                # answer: the first one found, with the scores summed
                same = by_text.get(text.lower())
                if same is not None:
                    same["score"] += float(score)
                else:
                    by_text[text.lower()] = {"score": float(score), "start": first,
                                             "end": last, "answer": text}
                    answers.append(by_text[text.lower()])
        if impossible:
            answers.append({"score": min_null_score, "start": 0, "end": 0, "answer": ""})
        answers = sorted(answers, key=lambda a: a["score"], reverse=True)[:top_k]
        if len(answers) == 1:
            return answers[0]
        return answers

    @staticmethod
    def _indices(encoding, s: int, e: int, sequence_index: int, align: bool) -> tuple[int, int]:
        if align:
            try:
                start_word = encoding.token_to_word(s)
                end_word = encoding.token_to_word(e)
                return (encoding.word_to_chars(start_word, sequence_index)[0],
                        encoding.word_to_chars(end_word, sequence_index)[1])
            except Exception:  # noqa: BLE001 - as transformers: fall back to token offsets
                pass
        return encoding.offsets[s][0], encoding.offsets[e][1]
