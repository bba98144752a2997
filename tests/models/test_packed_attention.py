"""Packed (padding-free) rows in Cove's decoders: several sequences in one row, position ids
restarting at each, no attention mask. No sequence may see another: each one's logits equal
those of the sequence alone, and transformers' logits for the same packed row (transformers 5
derives the same block-diagonal mask from the position ids)."""

from __future__ import annotations

import pytest
import torch

import cove.models as cm
from cove.models.layers import causal_mask, packed_segments
from tests.generation.test_model_parity import FAMILIES, randomize

transformers = pytest.importorskip("transformers")

LENGTHS = (5, 3, 7)


@pytest.fixture(scope="module", params=["llama", "mistral-window", "gpt2"])
def pair(request, tmp_path_factory):
    model_type, values = FAMILIES[request.param]
    config = transformers.AutoConfig.for_model(model_type, **values)
    hf = randomize(transformers.AutoModelForCausalLM.from_config(config), seed=5)
    folder = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(folder)
    return hf, cm.AutoModelForCausalLM.from_pretrained(folder).eval()


def _packed() -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    seqs = [torch.randint(3, 200, (n,), generator=gen) for n in LENGTHS]
    position_ids = torch.cat([torch.arange(n) for n in LENGTHS])[None]
    return seqs, torch.cat(seqs)[None], position_ids


def test_packed_row_equals_separate_sequences(pair):
    hf, model = pair
    seqs, input_ids, position_ids = _packed()
    with torch.no_grad():
        packed = model(input_ids=input_ids, position_ids=position_ids).logits[0]
        alone = torch.cat([model(input_ids=s[None]).logits[0] for s in seqs])
        # (transformers reads packing only without a cache)
        reference = hf(input_ids=input_ids, position_ids=position_ids, use_cache=False).logits[0]
        # without position ids the row is one sequence: later tokens see earlier sequences
        leaky = model(input_ids=input_ids).logits[0]
    torch.testing.assert_close(packed, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed, reference, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(leaky[LENGTHS[0]:], alone[LENGTHS[0]:], atol=1e-3)


def test_packed_gradients_stay_in_their_sequence(pair):
    _, model = pair
    _, input_ids, position_ids = _packed()
    embeds = model.get_input_embeddings()(input_ids).detach().requires_grad_(True)
    out = model(inputs_embeds=embeds, position_ids=position_ids).logits
    out[0, LENGTHS[0] - 1].sum().backward()  # the last token of the first sequence
    assert embeds.grad[0, :LENGTHS[0]].abs().sum() > 0
    assert torch.equal(embeds.grad[0, LENGTHS[0]:], torch.zeros_like(embeds.grad[0, LENGTHS[0]:]))


def test_segments_and_mask():
    position_ids = torch.tensor([[0, 1, 2, 0, 1, 0]])
    assert packed_segments(position_ids).tolist() == [[0, 0, 0, 1, 1, 2]]
    assert packed_segments(torch.arange(6)[None]) is None
    assert packed_segments(torch.arange(6)) is None  # a 1-D row
    mask = causal_mask(None, 6, 6, None, "cpu", position_ids)[0, 0]
    expected = torch.tensor([[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0],
                             [0, 0, 0, 1, 0, 0], [0, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1]]).bool()
    assert torch.equal(mask, expected)
    # ordinary rows keep SDPA's mask-free causal path
    assert causal_mask(None, 6, 6, None, "cpu", torch.arange(6)[None]) is None
    assert causal_mask(None, 6, 6, None, "cpu") is None
    # with a padding mask or cached positions the position ids are not read as packing
    assert causal_mask(torch.ones(1, 6), 6, 6, None, "cpu", position_ids) is None
    assert causal_mask(None, 1, 6, None, "cpu", torch.tensor([[0]])) is None


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_packed_causal_mask_attends_per_sequence(kv_heads):
    """PackedCausalMask (what causal_mask returns for packed rows) runs SDPA per sequence: the
    same outputs and gradients as its dense block-diagonal mask; one row of position ids
    serves a whole batch, several rows each pack their own way; the weights path (eager)
    uses the dense mask."""
    from cove.models.layers import PackedCausalMask, attend

    gen = torch.Generator().manual_seed(0)
    for position_ids in (torch.cat([torch.arange(n) for n in (5, 1, 7)])[None],
                         torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4],
                                       [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 6]])):
        mask = causal_mask(None, 13, 13, None, "cpu", position_ids)
        assert isinstance(mask, PackedCausalMask)
        q = torch.randn(2, 4, 13, 8, generator=gen, requires_grad=True)
        k = torch.randn(2, kv_heads, 13, 8, generator=gen, requires_grad=True)
        v = torch.randn(2, kv_heads, 13, 8, generator=gen, requires_grad=True)
        out, _ = attend(q, k, v, mask, 0.0, causal=True)
        grads = torch.autograd.grad(out.square().sum(), (q, k, v))
        dense, _ = attend(q, k, v, mask.dense().expand(2, 1, 13, 13), 0.0, causal=True)
        dense_grads = torch.autograd.grad(dense.square().sum(), (q, k, v))
        torch.testing.assert_close(out, dense, atol=1e-6, rtol=1e-5)
        for a, b in zip(grads, dense_grads, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        eager, weights = attend(q, k, v, mask, 0.0, need_weights=True, causal=True)
        torch.testing.assert_close(eager, dense, atol=1e-6, rtol=1e-5)
        assert bool((weights.masked_select(~mask.dense().expand_as(weights)) == 0).all())
    # a sliding window that cuts keeps the dense mask
    window = causal_mask(None, 13, 13, 3, "cpu", position_ids)
    assert isinstance(window, torch.Tensor) and window.shape == (2, 1, 13, 13)


def test_shared_prefix_layout_equals_separate_sequences(pair):
    """A prefix once, then two continuations that each see it (a PackedCausalMask layout given
    as the attention mask, the continuations' position ids following on from the prefix):
    the logits equal those of prefix+continuation run alone (with a sliding window too), and
    the gradients stay where they belong."""
    from cove.models.layers import PackedCausalMask

    _, model = pair
    gen = torch.Generator().manual_seed(1)
    p, c, r, other = 6, 4, 5, 3
    prefix, first, second, alone = (torch.randint(3, 200, (n,), generator=gen)
                                    for n in (p, c, r, other))
    input_ids = torch.cat([prefix, first, second, alone])[None]
    position_ids = torch.cat([torch.arange(p + c), torch.arange(p, p + r),
                              torch.arange(other)])[None]
    mask = PackedCausalMask([[(p, c, r), (other,)]])
    with torch.no_grad():
        packed = model(input_ids=input_ids, position_ids=position_ids,
                       attention_mask=mask).logits[0]
        one = model(input_ids=torch.cat([prefix, first])[None]).logits[0]
        two = model(input_ids=torch.cat([prefix, second])[None]).logits[0]
        three = model(input_ids=alone[None]).logits[0]
        eager = model(input_ids=input_ids, position_ids=position_ids, attention_mask=mask,
                      output_attentions=True).logits[0]
    torch.testing.assert_close(packed[:p + c], one, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[p + c:p + c + r], two[p:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[p + c + r:], three, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(eager, packed, atol=1e-5, rtol=1e-5)
    embeds = model.get_input_embeddings()(input_ids).detach().requires_grad_(True)
    out = model(inputs_embeds=embeds, position_ids=position_ids, attention_mask=mask).logits
    out[0, p + c + r - 1].sum().backward()  # the second continuation's last token
    grad = embeds.grad[0].abs().sum(-1)
    windowed = getattr(model.config, "sliding_window", None) is not None  # sees 4 positions
    assert bool((grad[p + c + r - (4 if windowed else r):p + c + r] > 0).all())
    assert bool((grad[:p] > 0).all()) != windowed
    assert bool((grad[p:p + c] == 0).all()) and bool((grad[p + c + r:] == 0).all())


def test_shared_prefix_mask_dense():
    from cove.models.layers import PackedCausalMask

    mask = PackedCausalMask([[(2, 1, 2), (1,)]])
    expected = torch.tensor([[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0],
                             [1, 1, 0, 1, 0, 0], [1, 1, 0, 1, 1, 0], [0, 0, 0, 0, 0, 1]]).bool()
    assert mask.shape == (1, 1, 6, 6) and torch.equal(mask[0, 0], expected)
    assert mask.positions().tolist() == [[0, 1, 2, 2, 3, 0]]
    assert causal_mask(mask, 6, 6, None, "cpu") is mask
    # a window of 2 counts positions within each sequence
    window = causal_mask(mask, 6, 6, 2, "cpu")[0, 0]
    assert window[4].tolist() == [False, False, False, True, True, False]
    assert window[3].tolist() == [False, True, False, True, False, False]
    with pytest.raises(ValueError, match="no cache"):
        causal_mask(mask, 1, 6, None, "cpu")
