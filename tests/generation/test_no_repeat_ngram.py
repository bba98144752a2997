"""NoRepeatNGramLogitsProcessor against transformers' (the prompt counts, token 0 included)."""

import pytest
import torch
import transformers

from cove.generation import NoRepeatNGramLogitsProcessor


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_matches_transformers(n):
    g = torch.Generator().manual_seed(n)
    ids = torch.randint(0, 5, (6, 9), generator=g)  # small vocabulary: many repeats
    scores = torch.randn(6, 7, generator=g)
    for length in range(0, 10):
        expected = transformers.NoRepeatNGramLogitsProcessor(n)(ids[:, :length], scores)
        got = NoRepeatNGramLogitsProcessor(n)(ids[:, :length], scores)
        assert torch.equal(got, expected), (n, length)


def test_refuses_a_bad_size():
    with pytest.raises(ValueError):
        NoRepeatNGramLogitsProcessor(0)
