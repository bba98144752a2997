"""NoBadWordsLogitsProcessor (generation_config.bad_words_ids, which Marian checkpoints set)
against transformers': one-token and longer sequences, end-of-sequence ones dropped."""

import pytest
import torch
import transformers

from cove.generation import NoBadWordsLogitsProcessor

CASES = [
    ([[3]], None),
    ([[3], [1, 4], [2, 2, 5]], None),
    ([[0], [6], [1, 2]], 0),          # [0] is the eos: dropped, as transformers
    ([[5, 1], [4, 4, 4, 6]], [2, 5]),
    ([[6, 6, 6, 6, 1]], None),         # a prefix hardly ever seen
]


@pytest.mark.parametrize("bad, eos", CASES)
def test_matches_transformers(bad, eos):
    g = torch.Generator().manual_seed(len(str(bad)))
    ids = torch.randint(0, 7, (8, 6), generator=g)  # small vocabulary: prefixes do occur
    scores = torch.randn(8, 7, generator=g)
    theirs = transformers.NoBadWordsLogitsProcessor(bad, eos_token_id=eos)
    ours = NoBadWordsLogitsProcessor(bad, eos)
    for length in range(1, 7):
        assert torch.equal(ours(ids[:, :length], scores), theirs(ids[:, :length], scores)), length


def test_generate_never_emits_them(tokenizer):
    from tests.generation.conftest import make_model

    model = make_model(tokenizer)
    prompt = torch.tensor([[5, 6, 7]])
    free = model.generate(prompt, max_new_tokens=8, do_sample=False)[0, 3:].tolist()
    banned = free[0]
    out = model.generate(prompt, max_new_tokens=8, do_sample=False,
                         bad_words_ids=[[banned]])[0, 3:].tolist()
    assert banned not in out and out != free


@pytest.mark.parametrize("bad", [[], [[]], [[1, -2]], [3], "x", [[1.5]]])
def test_refuses_malformed_lists(bad):
    with pytest.raises(ValueError, match="bad_words_ids"):
        NoBadWordsLogitsProcessor(bad)


def test_refuses_ids_outside_the_vocabulary():
    with pytest.raises(ValueError, match=r"outside the model's vocabulary of 7: \[9\]"):
        NoBadWordsLogitsProcessor([[1], [2, 9]])(torch.zeros(1, 2, dtype=torch.long),
                                                torch.zeros(1, 7))
