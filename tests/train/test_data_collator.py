"""Data collators against transformers': the same features give the same batches.

Each side uses its own library's tokenizer, loaded from one folder (the tiny WordPiece
vocabulary of the pipeline tests); the masked-LM collator is compared draw for draw (same seed).
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from cove.tokenizers import AutoTokenizer
from cove.trainer import (
    DataCollatorForLanguageModeling,
    DataCollatorForTokenClassification,
    DataCollatorWithPadding,
    DefaultDataCollator,
    default_data_collator,
)
from tests.pipelines.conftest import TEXTS, write_tokenizer

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("collator-tokenizer")
    write_tokenizer(folder)
    return AutoTokenizer.from_pretrained(folder), transformers.AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def features(tokenizers):
    cove_tok, tf_tok = tokenizers
    out = [dict(cove_tok(text, return_special_tokens_mask=True)) for text in TEXTS]
    assert out == [dict(tf_tok(text, return_special_tokens_mask=True)) for text in TEXTS]
    return out


def assert_same(ours, theirs):
    assert list(ours) == list(theirs)
    for key in theirs:
        a, b = ours[key], theirs[key]
        assert type(a) is type(b), key
        if isinstance(b, torch.Tensor):
            assert a.dtype == b.dtype and torch.equal(a, b), key
        else:
            assert a.dtype == b.dtype and np.array_equal(a, b), key


def without(features, *keys):
    return [{k: v for k, v in f.items() if k not in keys} for f in features]


def padded_sides(tokenizers):
    """(cove, transformers) tokenizer pairs, padding right then left."""
    cove_tok, tf_tok = tokenizers
    yield cove_tok, tf_tok
    cove_tok.padding_side = tf_tok.padding_side = "left"
    try:
        yield cove_tok, tf_tok
    finally:
        cove_tok.padding_side = tf_tok.padding_side = "right"


@pytest.mark.parametrize("kwargs", [
    {}, {"pad_to_multiple_of": 8}, {"padding": "max_length", "max_length": 40},
    {"return_tensors": "np"}, {"padding": "longest", "pad_to_multiple_of": 5,
                               "return_tensors": "np"},
])
def test_padding_collator(tokenizers, features, kwargs):
    for cove_tok, tf_tok in padded_sides(tokenizers):
        examples = [{**f, "label": i % 3} for i, f in enumerate(without(features,
                                                                        "special_tokens_mask"))]
        ours = DataCollatorWithPadding(cove_tok, **kwargs)(examples)
        theirs = transformers.DataCollatorWithPadding(tf_tok, **kwargs)(examples)
        assert_same(ours, theirs)
        assert "labels" in ours and "label" not in ours


def test_padding_collator_renames_label_ids(tokenizers, features):
    cove_tok, tf_tok = tokenizers
    examples = [{**f, "label_ids": [0.5, 1.5]} for f in without(features, "special_tokens_mask")]
    assert_same(DataCollatorWithPadding(cove_tok)(examples),
                transformers.DataCollatorWithPadding(tf_tok)(examples))


@pytest.mark.parametrize("kwargs", [{}, {"pad_to_multiple_of": 16}, {"label_pad_token_id": -1},
                                    {"return_tensors": "np"}])
@pytest.mark.parametrize("label_name", ["labels", "label"])
def test_token_classification_collator(tokenizers, features, kwargs, label_name):
    for cove_tok, tf_tok in padded_sides(tokenizers):
        examples = [{**f, label_name: [(i + j) % 5 for j in range(len(f["input_ids"]))]}
                    for i, f in enumerate(without(features, "special_tokens_mask"))]
        ours = DataCollatorForTokenClassification(cove_tok, **kwargs)(examples)
        theirs = transformers.DataCollatorForTokenClassification(tf_tok, **kwargs)(examples)
        assert_same(ours, theirs)
        pad = kwargs.get("label_pad_token_id", -100)
        shortest = min(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
        row = ours[label_name][shortest]
        assert (row[-1] if cove_tok.padding_side == "right" else row[0]) == pad


def test_token_classification_without_labels_pads_inputs(tokenizers, features):
    cove_tok, tf_tok = tokenizers
    examples = without(features, "special_tokens_mask")
    assert_same(DataCollatorForTokenClassification(cove_tok)(examples),
                transformers.DataCollatorForTokenClassification(tf_tok)(examples))


@pytest.mark.parametrize("return_tensors", ["pt", "np"])
def test_default_collator(return_tensors):
    equal = [[1, 2, 3], [4, 5, 6]]
    cases = [
        [{"input_ids": ids, "label": i, "text": "dropped", "none": None}
         for i, ids in enumerate(equal)],
        [{"input_ids": ids, "label": 0.5 * i} for i, ids in enumerate(equal)],
        [{"input_ids": ids, "label_ids": [i, i + 1]} for i, ids in enumerate(equal)],
        [{"input_ids": ids, "label_ids": [0.5, 1.0]} for ids in equal],
        [{"input_ids": np.array(ids), "label": np.int64(1), "mask": np.ones(3, dtype=np.int8)}
         for ids in equal],
        [{"pixel_values": torch.rand(2, 2), "label": torch.tensor(1)} for _ in equal]
        if return_tensors == "pt" else [{"pixel_values": np.zeros((2, 2)), "label": 1}],
        [{"input_ids": ids, "label_ids": torch.tensor([1, 2])} for ids in equal]
        if return_tensors == "pt" else [{"input_ids": ids, "label_ids": np.array([1, 2])}
                                        for ids in equal],
        [types.SimpleNamespace(input_ids=ids, label=1) for ids in equal],
    ]
    for examples in cases:
        theirs = transformers.default_data_collator(examples, return_tensors=return_tensors)
        assert_same(default_data_collator(examples, return_tensors=return_tensors), theirs)
        assert_same(DefaultDataCollator(return_tensors)(examples), theirs)
        assert_same(DefaultDataCollator()(examples, return_tensors=return_tensors), theirs)


@pytest.mark.parametrize("kwargs", [{}, {"pad_to_multiple_of": 8}, {"return_tensors": "np"}])
def test_causal_lm_labels(tokenizers, features, kwargs):
    for cove_tok, tf_tok in padded_sides(tokenizers):
        ours = DataCollatorForLanguageModeling(cove_tok, mlm=False, **kwargs)(features)
        theirs = transformers.DataCollatorForLanguageModeling(tf_tok, mlm=False, **kwargs)(
            features)
        assert_same(ours, theirs)
        ids, labels = np.asarray(ours["input_ids"]), np.asarray(ours["labels"])
        assert ((labels == -100) == (ids == cove_tok.pad_token_id)).all()
        assert (labels[labels != -100] == ids[labels != -100]).all()
        # lists of ids, without the tokenizer's dicts
        rows = [f["input_ids"] for f in features]
        assert_same(DataCollatorForLanguageModeling(cove_tok, mlm=False, **kwargs)(rows),
                    transformers.DataCollatorForLanguageModeling(tf_tok, mlm=False, **kwargs)(
                        rows))


@pytest.mark.parametrize("kwargs", [
    {}, {"mlm_probability": 0.5}, {"mask_replace_prob": 1.0, "random_replace_prob": 0.0},
    {"mask_replace_prob": 0.0, "random_replace_prob": 1.0},
    {"mask_replace_prob": 0.5, "random_replace_prob": 0.4, "pad_to_multiple_of": 8},
    {"return_tensors": "np"}, {"return_tensors": "np", "mlm_probability": 0.6},
])
@pytest.mark.parametrize("with_mask", [True, False])
def test_masked_lm_draws_as_transformers(tokenizers, features, kwargs, with_mask):
    """The same seed masks the same tokens the same way, batch after batch."""
    examples = features if with_mask else without(features, "special_tokens_mask")
    for cove_tok, tf_tok in padded_sides(tokenizers):
        ours = DataCollatorForLanguageModeling(cove_tok, seed=7, **kwargs)
        theirs = transformers.DataCollatorForLanguageModeling(tf_tok, seed=7, **kwargs)
        for _ in range(3):
            assert_same(ours(examples), theirs(examples))


@pytest.mark.parametrize("return_tensors", ["pt", "np"])
def test_masked_lm_global_rng(tokenizers, features, return_tensors):
    cove_tok, tf_tok = tokenizers
    rows = [f["input_ids"] for f in features]
    for examples in (features, rows):
        torch.manual_seed(3)
        np.random.seed(3)
        theirs = transformers.DataCollatorForLanguageModeling(
            tf_tok, mlm_probability=0.4, return_tensors=return_tensors)(examples)
        torch.manual_seed(3)
        np.random.seed(3)
        ours = DataCollatorForLanguageModeling(
            cove_tok, mlm_probability=0.4, return_tensors=return_tensors)(examples)
        assert_same(ours, theirs)


def test_masked_lm_statistics(tokenizers):
    """On a large batch: specials never picked, -100 off the picked tokens, 15% picked, 80/10/10."""
    cove_tok, _ = tokenizers
    texts = [TEXTS[i % len(TEXTS)] for i in range(600)]
    examples = [dict(cove_tok(t)) for t in texts]
    clean = DataCollatorWithPadding(cove_tok)(examples)["input_ids"]
    batch = DataCollatorForLanguageModeling(cove_tok, seed=0)(examples)
    ids, labels = batch["input_ids"], batch["labels"]
    special = torch.isin(clean, torch.tensor(cove_tok.all_special_ids))
    picked = labels != -100
    assert not (picked & special).any()
    assert torch.equal(labels[picked], clean[picked])  # labels are the original tokens
    assert torch.equal(ids[~picked], clean[~picked])  # nothing else changes
    assert abs(picked.sum().item() / (~special).sum().item() - 0.15) < 0.01
    mask_id = cove_tok.mask_token_id
    masked = (ids == mask_id) & picked
    kept = (ids == clean) & picked
    n = picked.sum().item()
    assert abs(masked.sum().item() / n - 0.8) < 0.03
    # a random token may happen to be the original one: "kept" is 10% plus a little
    assert abs(kept.sum().item() / n - 0.1) < 0.03
    assert abs((picked & ~masked & ~kept).sum().item() / n - 0.1) < 0.03


def test_seeded_collator_in_dataloader_workers(tokenizers, features):
    """Each worker seeds its own generator with seed + its id; the same run repeats."""
    cove_tok, _ = tokenizers

    def run():
        loader = torch.utils.data.DataLoader(
            features * 4, batch_size=4, num_workers=2,
            collate_fn=DataCollatorForLanguageModeling(cove_tok, seed=11, mlm_probability=0.5))
        return [b["labels"] for b in loader]

    first, second = run(), run()
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not all(torch.equal(first[0], b) for b in first[1:])


def test_collator_errors(tokenizers, features):
    cove_tok, _ = tokenizers
    with pytest.raises(ValueError, match="does not have a mask token"):
        DataCollatorForLanguageModeling(types.SimpleNamespace(mask_token=None))
    with pytest.raises(ValueError, match="mlm_probability should be between 0 and 1"):
        DataCollatorForLanguageModeling(cove_tok, mlm_probability=1.5)
    with pytest.raises(ValueError, match="should not exceed 1"):
        DataCollatorForLanguageModeling(cove_tok, mask_replace_prob=0.7, random_replace_prob=0.5)
    with pytest.raises(ValueError, match="return_tensors must be 'pt'"):
        DataCollatorWithPadding(cove_tok, return_tensors="tf")
    with pytest.raises(ValueError, match="return_tensors must be 'pt'"):
        default_data_collator(features, return_tensors="jax")
    with pytest.raises(ValueError, match="at least one example"):
        DataCollatorForLanguageModeling(cove_tok)([])
    with pytest.raises(TypeError, match="takes a list of examples"):
        DataCollatorForTokenClassification(cove_tok)(features[0])
    too_many = [{**features[0], "labels": [0] * 99}]
    with pytest.raises(ValueError, match="99 labels for"):
        DataCollatorForTokenClassification(cove_tok)(too_many)
    no_pad = types.SimpleNamespace(pad_token=None, mask_token="[MASK]", padding_side="right")
    with pytest.raises(ValueError, match="does not have a pad token"):
        DataCollatorForLanguageModeling(no_pad, mlm=False)([[1, 2], [3]])
