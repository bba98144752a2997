"""token-classification (ner) against transformers.pipeline on a tiny random BERT tagger."""

from __future__ import annotations

import math

import numpy as np
import pytest
import transformers

import cove
from tests.pipelines.conftest import NER_TEXTS

STRATEGIES = [None, "none", "simple", "first", "average", "max"]


@pytest.fixture(scope="module", autouse=True)
def _quiet():
    transformers.logging.set_verbosity_error()


@pytest.fixture(scope="module")
def taggers(ner_folder):
    return (cove.pipeline("token-classification", model=str(ner_folder)),
            transformers.pipeline("token-classification", model=str(ner_folder)))


def same(ours, theirs, path="result"):
    if isinstance(theirs, (np.floating, float)):
        assert isinstance(ours, float), f"{path}: {type(ours).__name__}"
        assert math.isclose(ours, float(theirs), abs_tol=1e-4), f"{path}: {ours} != {theirs}"
    elif isinstance(theirs, list):
        assert isinstance(ours, list), path
        assert len(ours) == len(theirs), f"{path}: {ours} != {theirs}"
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            same(a, b, f"{path}[{i}]")
    elif isinstance(theirs, dict):
        assert ours.keys() == theirs.keys(), f"{path}: {ours.keys()} != {theirs.keys()}"
        for key in theirs:
            same(ours[key], theirs[key], f"{path}.{key}")
    else:
        assert type(ours) is type(theirs) or int(ours) == theirs, path
        assert ours == theirs, f"{path}: {ours!r} != {theirs!r}"


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("ignore", [None, [], ["O", "B-LOC"]])
def test_single_and_list(taggers, strategy, ignore):
    ours, theirs = taggers
    kwargs = {}
    if strategy is not None:
        kwargs["aggregation_strategy"] = strategy
    if ignore is not None:
        kwargs["ignore_labels"] = ignore
    for text in NER_TEXTS:
        same(ours(text, **kwargs), theirs(text, **kwargs))
    same(ours(NER_TEXTS, **kwargs), theirs(NER_TEXTS, **kwargs))
    same(ours(NER_TEXTS, batch_size=4, **kwargs), theirs(NER_TEXTS, batch_size=4, **kwargs))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_built_with_strategy(ner_folder, strategy):
    kwargs = {} if strategy is None else {"aggregation_strategy": strategy}
    ours = cove.pipeline("ner", model=str(ner_folder), ignore_labels=[], **kwargs)
    theirs = transformers.pipeline("ner", model=str(ner_folder), ignore_labels=[], **kwargs)
    same(ours(NER_TEXTS, batch_size=3), theirs(NER_TEXTS, batch_size=3))
    got = ours(t for t in NER_TEXTS)
    assert not isinstance(got, list)
    same(list(got), theirs(NER_TEXTS))


def test_offsets_and_words(taggers):
    ours, _ = taggers
    for text in NER_TEXTS:
        for entity in ours(text, ignore_labels=[]):
            assert 0 <= entity["start"] < entity["end"] <= len(text)
        groups = ours(text, aggregation_strategy="first", ignore_labels=[])
        for group in groups:
            if "€" not in group["word"]:
                assert group["word"] == text[group["start"]:group["end"]].lower()


def test_errors(taggers, folders):
    ours, _ = taggers
    with pytest.raises(ValueError, match="aggregation_strategy"):
        ours(NER_TEXTS[0], aggregation_strategy="longest")
    with pytest.raises(ValueError, match="empty"):
        ours("")
    with pytest.raises(ValueError, match="cannot run"):
        cove.pipeline("ner", model=str(folders["classifier"]))


def test_the_tagger_is_not_trivial(taggers):
    ours, _ = taggers
    tags = {e["entity"] for t in NER_TEXTS for e in ours(t, ignore_labels=[])}
    assert tags == {"O", "B-PER", "I-PER", "B-LOC", "I-LOC"}
    groups = [g for t in NER_TEXTS for g in ours(t, aggregation_strategy="simple")]
    assert len({g["entity_group"] for g in groups}) == 2
    assert any(" " in g["word"] for g in groups)  # several tokens grouped
