"""question-answering (transformers 4.x semantics; 5.x has no such pipeline to compare with).

The expectation is computed by brute force from the reference model's logits and the
reference tokenizer's spans: every (start, end) pair of context tokens no longer than
max_answer_len, scored start x end with each softmax taken over the context tokens and [CLS].
"""

from __future__ import annotations

import math

import pytest
import torch
import transformers

import cove
from tests.pipelines.conftest import QA_CONTEXT

QUESTIONS = ["what was terrible?", "who sat on the mat", "is it good"]


@pytest.fixture(scope="module", autouse=True)
def _quiet():
    transformers.logging.set_verbosity_error()


@pytest.fixture(scope="module")
def qa(qa_folder):
    return cove.pipeline("question-answering", model=str(qa_folder))


@pytest.fixture(scope="module")
def reference(qa_folder):
    return (transformers.AutoTokenizer.from_pretrained(str(qa_folder)),
            transformers.AutoModelForQuestionAnswering.from_pretrained(str(qa_folder)).eval())


def expected(reference, question, context, top_k=1, max_answer_len=15, max_seq_len=64,
             doc_stride=32, impossible=False):
    tok, model = reference
    enc = tok(question, context, truncation="only_second", max_length=max_seq_len,
              stride=doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True)
    candidates = []
    null = math.inf
    for r, ids in enumerate(enc["input_ids"]):
        with torch.no_grad():
            out = model(input_ids=torch.tensor([ids]),
                        token_type_ids=torch.tensor([enc["token_type_ids"][r]]))
        usable = [i for i, s in enumerate(enc.sequence_ids(r)) if s == 1]
        keep = [0, *usable]
        p_start = dict(zip(keep, torch.softmax(out.start_logits[0, keep], 0).tolist(),
                           strict=True))
        p_end = dict(zip(keep, torch.softmax(out.end_logits[0, keep], 0).tolist(), strict=True))
        null = min(null, p_start[0] * p_end[0])
        offsets = enc["offset_mapping"][r]
        span = [{"score": p_start[a] * p_end[b], "start": offsets[a][0], "end": offsets[b][1]}
                for a in usable for b in usable if a <= b < a + max_answer_len]
        # as 4.x (align_to_words=False): each span's best top_k, and candidates with the same
        # text (ignoring case) are one answer, the first found, with the scores summed
        for c in sorted(span, key=lambda c: c["score"], reverse=True)[:top_k]:
            text = context[c["start"]:c["end"]].lower()
            same = next((d for d in candidates
                         if context[d["start"]:d["end"]].lower() == text), None)
            if same is None:
                candidates.append(c)
            else:
                same["score"] += c["score"]
    if impossible:
        candidates.append({"score": null, "start": 0, "end": 0})
    candidates.sort(key=lambda c: c["score"], reverse=True)
    return [{**c, "answer": context[c["start"]:c["end"]]} for c in candidates[:top_k]]


def check(got, want):
    assert [(a["start"], a["end"], a["answer"]) for a in got] == \
        [(a["start"], a["end"], a["answer"]) for a in want]
    for a, b in zip(got, want, strict=True):
        assert isinstance(a["score"], float)
        assert math.isclose(a["score"], b["score"], abs_tol=1e-5)


@pytest.mark.parametrize("top_k", [1, 3, 7])
@pytest.mark.parametrize("max_answer_len", [1, 4, 15])
def test_matches_brute_force(qa, reference, top_k, max_answer_len):
    for question in QUESTIONS:
        got = qa(question=question, context=QA_CONTEXT, top_k=top_k,
                 max_answer_len=max_answer_len, align_to_words=False, max_seq_len=64,
                 doc_stride=32)
        got = [got] if isinstance(got, dict) else got
        check(got, expected(reference, question, QA_CONTEXT, top_k, max_answer_len))
        scores = [a["score"] for a in got]
        assert scores == sorted(scores, reverse=True)
        assert 0 < sum(scores) <= 1 + 1e-6


@pytest.mark.parametrize(("max_seq_len", "doc_stride"), [(24, 8), (32, 16), (40, 4)])
def test_long_contexts_in_spans(qa, reference, max_seq_len, doc_stride):
    tok, _ = reference
    assert len(tok(QUESTIONS[0], QA_CONTEXT)["input_ids"]) > max_seq_len
    got = qa({"question": QUESTIONS[0], "context": QA_CONTEXT}, top_k=5,
             max_seq_len=max_seq_len, doc_stride=doc_stride, align_to_words=False)
    check(got, expected(reference, QUESTIONS[0], QA_CONTEXT, 5, max_seq_len=max_seq_len,
                        doc_stride=doc_stride))


def test_impossible_answer(qa, reference):
    kwargs = {"max_seq_len": 32, "doc_stride": 16}
    got = qa(question=QUESTIONS[1], context=QA_CONTEXT, top_k=10, handle_impossible_answer=True,
             align_to_words=False, **kwargs)
    check(got, expected(reference, QUESTIONS[1], QA_CONTEXT, 10, impossible=True, **kwargs))
    everything = qa(question=QUESTIONS[1], context=QA_CONTEXT, top_k=100000,
                    handle_impossible_answer=True, **kwargs)
    want = expected(reference, QUESTIONS[1], QA_CONTEXT, 100000, impossible=True, **kwargs)
    # (as transformers 4.x, a top_k beyond the real candidates pads with 0-score spans)
    null = [a for a in everything if a["answer"] == "" and a["score"] > 0]
    assert len(null) == 1 and (null[0]["start"], null[0]["end"]) == (0, 0)
    assert math.isclose(null[0]["score"], next(a for a in want if a["end"] == 0)["score"],
                        abs_tol=1e-7)
    scores = [a["score"] for a in everything]
    assert scores == sorted(scores, reverse=True)
    single = qa(question="is it good", context="hello world", handle_impossible_answer=True)
    assert isinstance(single, dict)


def test_answers_align_to_words(qa):
    for question in QUESTIONS:
        for answer in qa(question=question, context=QA_CONTEXT, top_k=10):
            start, end = answer["start"], answer["end"]
            assert answer["answer"] == QA_CONTEXT[start:end]
            # words are runs of letters and digits, or one punctuation mark
            assert start == 0 or not (QA_CONTEXT[start - 1] + QA_CONTEXT[start]).isalnum()
            assert end == len(QA_CONTEXT) or not (QA_CONTEXT[end - 1] + QA_CONTEXT[end]).isalnum()


def test_single_list_batched_and_generator(qa):
    items = [{"question": q, "context": c} for q in QUESTIONS
             for c in (QA_CONTEXT, "the cat sat on the mat", "hello world")]
    singles = [qa(item) for item in items]
    assert all(isinstance(s, dict) for s in singles)
    _close(qa(items), singles)
    _close(qa(items, batch_size=4), singles)
    _close(list(qa(iter(items), batch_size=2)), singles)
    _close(qa(question=QUESTIONS, context=[i["context"] for i in items[:3]]),
           [qa(question=q, context=c) for q, c in zip(QUESTIONS, [i["context"] for i in
                                                                  items[:3]], strict=True)])


def _close(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert (a["start"], a["end"], a["answer"]) == (b["start"], b["end"], b["answer"])
        assert math.isclose(a["score"], b["score"], abs_tol=1e-5)
    return True


def test_errors(qa, folders):
    with pytest.raises(ValueError, match="context"):
        qa(question="what?")
    with pytest.raises(ValueError, match="context"):
        qa({"question": "what?"})
    with pytest.raises(ValueError, match="empty"):
        qa(question="what?", context="  ")
    with pytest.raises(ValueError, match="top_k"):
        qa(question="what?", context="hello", top_k=0)
    with pytest.raises(ValueError, match="cannot run"):
        cove.pipeline("question-answering", model=str(folders["classifier"]))
