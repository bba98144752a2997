"""zero-shot-classification: cove.pipeline against transformers.pipeline on tiny random NLI
classifiers (BERT and DistilBERT, entailment last or first, and one without an entailment
label)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import transformers

import cove
from cove.pipelines import SUPPORTED_TASKS
from tests.pipelines.conftest import TEXTS, TINY, VOCAB, randomize, write_tokenizer
from tests.pipelines.test_parity import same

NLI = {0: "contradiction", 1: "neutral", 2: "entailment"}
NLI_FIRST = {0: "ENTAILMENT", 1: "NEUTRAL", 2: "CONTRADICTION"}  # entailment id 0
LABELS = ["good", "bad", "cat", "movie", "dog"]
LONG_LABEL = " ".join(["the quick brown fox jumps over the lazy dog"] * 8)  # > 64 tokens


@pytest.fixture(scope="module", autouse=True)
def _quiet():
    transformers.logging.set_verbosity_error()


def _save(model, folder: Path) -> Path:
    # A larger classifier: well separated scores, so float noise cannot reorder labels.
    with torch.no_grad():
        model.classifier.weight.mul_(8.0)
    model.save_pretrained(folder)
    write_tokenizer(folder)  # model_max_length 64: long premises are truncated
    return folder


@pytest.fixture(scope="module")
def nli(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("nli")
    vocab_size = len(dict.fromkeys(VOCAB))
    out = {}
    # 128 positions: a pair the tokenizer cannot truncate (a hypothesis over its 64-token
    # limit) still fits the model.
    for name, id2label in [("bert", NLI), ("bert_first", NLI_FIRST)]:
        config = transformers.BertConfig(
            vocab_size=vocab_size, **{**TINY, "max_position_embeddings": 128},
            id2label=id2label, label2id={v: k for k, v in id2label.items()})
        model = randomize(transformers.BertForSequenceClassification(config), seed=len(out) + 7)
        out[name] = _save(model, root / name)
    config = transformers.DistilBertConfig(
        vocab_size=vocab_size, dim=32, n_layers=2, n_heads=4, hidden_dim=37,
        max_position_embeddings=64, id2label=NLI, label2id={v: k for k, v in NLI.items()})
    model = randomize(transformers.DistilBertForSequenceClassification(config), seed=9)
    out["distil"] = _save(model, root / "distil")
    return out


def pair(folder: Path, **kwargs):
    return (cove.pipeline("zero-shot-classification", model=str(folder), **kwargs),
            transformers.pipeline("zero-shot-classification", model=str(folder), **kwargs))


@pytest.fixture(scope="module", params=["bert", "bert_first", "distil"])
def classifiers(request, nli):
    return pair(nli[request.param])


@pytest.mark.parametrize("multi_label", [False, True])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_single_list_and_generator(classifiers, multi_label, batch_size):
    ours, theirs = classifiers
    kwargs = {"candidate_labels": LABELS, "multi_label": multi_label, "batch_size": batch_size}
    one = ours(TEXTS[0], **kwargs)
    assert isinstance(one, dict) and set(one) == {"sequence", "labels", "scores"}
    assert sorted(one["labels"]) == sorted(LABELS)
    assert one["scores"] == sorted(one["scores"], reverse=True)
    if not multi_label:
        assert sum(one["scores"]) == pytest.approx(1.0, abs=1e-5)
    same(one, theirs(TEXTS[0], **kwargs))
    same(ours(TEXTS, **kwargs), theirs(TEXTS, **kwargs))
    got = ours((t for t in TEXTS), **kwargs)
    assert not isinstance(got, list)
    same(list(got), list(theirs((t for t in TEXTS), **kwargs)))


def test_batched_equals_one_by_one(classifiers):
    ours, _ = classifiers
    same(ours(TEXTS, LABELS, batch_size=4), [ours(t, LABELS) for t in TEXTS])


@pytest.mark.parametrize("kwargs", [
    {"candidate_labels": "good, bad,cat"},
    {"candidate_labels": " movie ,, dog ", "multi_label": True},
    {"candidate_labels": ["cat"]},  # one label: entailment against contradiction
    {"candidate_labels": LABELS, "hypothesis_template": "this is a {} film"},
    {"candidate_labels": "good,bad", "hypothesis_template": "{}", "multi_label": True},
])
def test_labels_templates_and_options(classifiers, kwargs):
    ours, theirs = classifiers
    same(ours(TEXTS[:4], **kwargs, batch_size=3), theirs(TEXTS[:4], **kwargs, batch_size=3))
    same(ours(TEXTS[1], **kwargs), theirs(TEXTS[1], **kwargs))


def test_comma_separated_labels_are_split(classifiers):
    ours, _ = classifiers
    assert sorted(ours(TEXTS[0], "a, b,c")["labels"]) == ["a", "b", "c"]


def test_labels_positional_and_at_construction(nli):
    ours, theirs = pair(nli["bert"], candidate_labels=LABELS, multi_label=True)
    same(ours(TEXTS), theirs(TEXTS))
    same(ours(TEXTS[2], ["dog", "fox"]), theirs(TEXTS[2], ["dog", "fox"]))
    same(ours(TEXTS[2], multi_label=False), theirs(TEXTS[2], multi_label=False))
    same(ours(sequences=TEXTS[:2], candidate_labels="dog,cat"),
         theirs(sequences=TEXTS[:2], candidate_labels="dog,cat"))


def test_truncation_only_first(nli):
    ours, theirs = pair(nli["bert"])
    long_text = " ".join(TEXTS * 3)  # the premise is cut to fit 64 tokens
    same(ours([long_text, TEXTS[0]], LABELS, batch_size=4),
         theirs([long_text, TEXTS[0]], LABELS, batch_size=4))
    # A hypothesis longer than the limit on its own: that pair is not truncated at all.
    labels = ["good", LONG_LABEL]
    same(ours([TEXTS[3], TEXTS[0]], labels, batch_size=2),
         theirs([TEXTS[3], TEXTS[0]], labels, batch_size=2))


def test_model_without_entailment_label(folders, caplog):
    with caplog.at_level(logging.WARNING, logger="cove.pipelines"):
        ours, theirs = pair(folders["classifier"])  # negative / neutral / positive
    assert "Failed to determine 'entailment' label id" in caplog.text
    assert ours.entailment_id == -1
    for multi_label in (False, True):
        same(ours(TEXTS, LABELS, multi_label=multi_label),
             theirs(TEXTS, LABELS, multi_label=multi_label))


def test_wrong_arguments(nli):
    ours = cove.pipeline("zero-shot-classification", model=str(nli["bert"]))
    with pytest.raises(ValueError, match="needs candidate_labels"):
        ours(TEXTS[0])
    with pytest.raises(ValueError, match="at least one label"):
        ours(TEXTS[0], candidate_labels=[])
    with pytest.raises(ValueError, match="at least one label"):
        ours(TEXTS[0], candidate_labels=" , ")
    with pytest.raises(ValueError, match="must be strings"):
        ours(TEXTS[0], candidate_labels=["good", 3])
    with pytest.raises(ValueError, match="hypothesis_template .*formatted"):
        ours(TEXTS[0], LABELS, hypothesis_template="This example is good.")
    with pytest.raises(ValueError, match="hypothesis_template .*formatted"):
        ours(TEXTS[0], LABELS, hypothesis_template="This example is {label}.")
    with pytest.raises(ValueError, match="extra arguments"):
        ours(TEXTS[0], LABELS, "This example is {}.")
    with pytest.raises(ValueError, match="expects strings"):
        ours([TEXTS[0], 3], LABELS)
    with pytest.raises(ValueError, match="empty"):
        ours("", LABELS)
    with pytest.raises(TypeError, match="unexpected"):
        ours(TEXTS[0], LABELS, multilabel=True)
    # transformers refuses a template without a slot too
    theirs = transformers.pipeline("zero-shot-classification", model=str(nli["bert"]))
    with pytest.raises(ValueError, match="formatted"):
        theirs(TEXTS[0], LABELS, hypothesis_template="This example is good.")


def test_default_model_and_bart(tmp_path):
    from transformers.pipelines import SUPPORTED_TASKS as HF

    _, head, default = SUPPORTED_TASKS["zero-shot-classification"]
    assert head == "sequence-classification"
    assert default == HF["zero-shot-classification"]["default"]["model"][0]
    # The default is a BART model: Cove loads its classification head as transformers does.
    config = transformers.BartConfig(
        vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16,
        max_position_embeddings=32, id2label=NLI, label2id={v: k for k, v in NLI.items()})
    theirs = transformers.BartForSequenceClassification(config).eval()
    theirs.save_pretrained(tmp_path)
    ours = cove.AutoModelForSequenceClassification.from_pretrained(tmp_path)
    ids = torch.tensor([[0, 5, 6, 2, 2, 7, 2], [0, 8, 2, 2, 9, 10, 2]])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, theirs(ids).logits, rtol=0, atol=1e-5)
