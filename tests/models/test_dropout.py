"""cove.models.dropout: the 1-byte-mask training dropout and attention with dropout.

The masks come from 16-bit lanes of random 64-bit words, so the drop rate is p rounded to a
multiple of 1/65536; the statistical checks use many elements and a tolerance of about six
standard deviations of the observed rate.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cove.models as cm
from cove import kernels
from cove.models.dropout import Dropout, dropout, dropout_attention, dropout_mask
from cove.models.layers import attend

ELEMENTS = 1 << 22


def realised(p: float) -> float:
    return round(p * 65536) / 65536


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5, 0.9])
def test_drop_rate_within_statistical_tolerance(p):
    keep, scale = dropout_mask((ELEMENTS,), p, "cpu", torch.Generator().manual_seed(1))
    assert keep.dtype == torch.bool
    rate = 1 - keep.float().mean().item()
    sigma = math.sqrt(p * (1 - p) / ELEMENTS)
    assert abs(rate - realised(p)) < 6 * sigma
    assert scale == pytest.approx(1 / (1 - realised(p)), rel=1e-12)


def test_rate_resolution_is_one_in_65536():
    assert realised(0.1) == 6554 / 65536
    assert abs(realised(0.1) - 0.1) < 1 / 131072


def test_kept_elements_scaled_and_dropped_zero():
    x = torch.rand(ELEMENTS) + 0.5  # never zero
    out = dropout(x, 0.1, generator=torch.Generator().manual_seed(2))
    kept = out != 0
    scale = 1 / (1 - realised(0.1))
    torch.testing.assert_close(out[kept], x[kept] * scale, rtol=1e-6, atol=0)
    # the expectation is the input's: mean of dropout(ones) is 1 within ~6 sigma
    ones = dropout(torch.ones(ELEMENTS, dtype=torch.float64), 0.1,
                   generator=torch.Generator().manual_seed(3))
    sigma = scale * math.sqrt(0.1 * 0.9 / ELEMENTS)
    assert abs(ones.mean().item() - 1) < 6 * sigma


def test_backward_uses_the_forward_mask():
    x = (torch.rand(64, 384) + 0.5).requires_grad_()
    out = dropout(x, 0.3, generator=torch.Generator().manual_seed(4))
    upstream = torch.randn_like(out)
    out.backward(upstream)
    kept = out.detach() != 0
    scale = 1 / (1 - realised(0.3))
    torch.testing.assert_close(x.grad, upstream * kept * scale)


def test_dropout_gradcheck():
    x = torch.randn(6, 7, dtype=torch.float64, requires_grad=True)
    g = torch.Generator()

    def f(x):
        g.manual_seed(5)  # the same mask at every evaluation
        return dropout(x, 0.4, generator=g)

    assert torch.autograd.gradcheck(f, (x,))


def test_eval_and_p0_are_identity():
    x = torch.randn(4, 8)
    assert dropout(x, 0.0) is x
    assert dropout(x, 0.5, training=False) is x
    module = Dropout(0.3).eval()
    assert module(x) is x
    assert Dropout(0.0).train()(x) is x


def test_p1_drops_everything():
    x = torch.randn(100, requires_grad=True)
    out = dropout(x, 1.0)
    assert torch.equal(out, torch.zeros(100))
    out.sum().backward()
    assert torch.equal(x.grad, torch.zeros(100))


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_bad_probability_is_refused(p):
    with pytest.raises(ValueError, match="between 0 and 1"):
        dropout(torch.ones(3), p)
    with pytest.raises(ValueError, match="between 0 and 1"):
        dropout_attention(*(torch.ones(1, 1, 2, 2) for _ in range(3)), None, p)


def test_seed_reproducibility():
    x = torch.randn(32, 64)
    torch.manual_seed(0)
    a = dropout(x, 0.2)
    torch.manual_seed(0)
    b = dropout(x, 0.2)
    c = dropout(x, 0.2)
    assert torch.equal(a, b)
    assert not torch.equal(b, c)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(dropout(x, 0.2, generator=g1), dropout(x, 0.2, generator=g2))


def test_module_keeps_the_dropout_interface():
    module = Dropout(0.2)
    assert isinstance(module, nn.Dropout) and module.p == 0.2
    assert not list(module.parameters()) and not module.state_dict()


def test_dropout_bf16_under_autocast():
    x = torch.randn(16, 128, 384, requires_grad=True)
    linear = nn.Linear(384, 384)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = linear(x)
        out = dropout(h, 0.1)
    assert out.dtype == torch.bfloat16
    kept = out != 0
    torch.testing.assert_close(out[kept], h[kept] * (1 / (1 - realised(0.1))))
    out.float().sum().backward()
    assert x.grad.dtype == torch.float32


def plain_attention(q, k, v, mask, keep, scale, keep_scale):
    """The reference: autograd through matmul, softmax and the same dropout mask."""
    scores = q @ k.transpose(-1, -2) * scale
    if mask is not None and mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    elif mask is not None:
        scores = scores + mask
    return (scores.softmax(-1) * keep * keep_scale) @ v


def qkv(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, dtype=dtype, generator=g).requires_grad_() for _ in range(3)]


@pytest.mark.parametrize("mask_kind", ["none", "additive", "bool", "learned"])
def test_attention_gradcheck(mask_kind):
    b, h, s, d = 2, 3, 5, 4
    q, k, v = qkv((b, h, s, d), torch.float64)
    mask = {"none": None,
            "additive": torch.tensor([0.0, 0, 0, -1e9, -1e9], dtype=torch.float64)[None, None,
                                                                                    None],
            "bool": torch.rand(b, 1, s, s, generator=torch.Generator().manual_seed(1)) > 0.3,
            "learned": torch.randn(1, h, s, s, dtype=torch.float64, requires_grad=True)}[
        mask_kind]
    if mask_kind == "bool":
        mask[..., 0] = True  # every query sees something
    g = torch.Generator()

    def f(q, k, v, *learned):
        g.manual_seed(6)
        return dropout_attention(q, k, v, learned[0] if learned else mask, 0.3, generator=g)

    inputs = (q, k, v) + ((mask,) if mask_kind == "learned" else ())
    assert torch.autograd.gradcheck(f, inputs)


@pytest.fixture(params=["kernels", "torch"])
def attention_path(request, monkeypatch):
    """Each float32 attention test runs on cove.kernels' attention kernels and with them off
    (as COVE_KERNELS=0 leaves it: torch's ops)."""
    if request.param == "kernels":
        if not hasattr(kernels.load(), "attention_forward"):
            pytest.skip("cove.kernels' attention kernels are not built here (no AVX-512)")
    else:
        monkeypatch.setattr(kernels, "_loaded", None)
    return request.param


def heads(b, s, h, d, seed):
    """[b, h, s, d] heads split from a [b, s, h * d] projection (a strided view), as layers
    make them."""
    x = torch.randn(b, s, h * d, generator=torch.Generator().manual_seed(seed))
    return x.view(b, s, h, d).transpose(1, 2).detach().requires_grad_()


@pytest.mark.parametrize("p", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("mask_kind", ["none", "additive", "padding", "bool", "causal"])
@pytest.mark.parametrize("shape", [(4, 6, 33, 33, 16), (2, 3, 128, 128, 32), (1, 2, 7, 19, 8),
                                   (2, 2, 65, 65, 40)])
def test_attention_matches_plain_autograd_with_the_same_mask(attention_path, shape, mask_kind,
                                                             p):
    """Output and gradients against autograd through torch's ops with the same keep mask, for
    odd lengths, head sizes that are not a multiple of 16, more keys than queries, and every
    mask kind (<= 1e-5)."""
    b, h, sq, skv, d = shape
    q, k, v = heads(b, sq, h, d, 0), heads(b, skv, h, d, 1), heads(b, skv, h, d, 2)
    g = torch.Generator().manual_seed(3)
    mask = {"none": None,
            "additive": torch.randn(b, 1, sq, skv, generator=g),
            "padding": cm.layers.padding_mask(
                torch.tensor([[1] * skv] * (b - 1) + [[1] * (skv // 2) + [0] * (skv - skv // 2)]),
                torch.float32),
            "bool": torch.rand(b, h, sq, skv, generator=g) > 0.3,
            "causal": torch.ones(sq, skv, dtype=torch.bool).tril(skv - sq)[None, None]}[mask_kind]
    if mask_kind == "bool":
        mask[..., 0] = True  # every query sees something
    keep, keep_scale = dropout_mask((b, h, sq, skv), p, "cpu", torch.Generator().manual_seed(7))
    out = dropout_attention(q, k, v, mask, p, generator=torch.Generator().manual_seed(7))
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    ref = plain_attention(q2, k2, v2, mask, keep, 1 / math.sqrt(d), keep_scale)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    upstream = torch.randn(ref.shape, generator=g)
    out.backward(upstream)
    ref.backward(upstream)
    for ours, theirs in ((q, q2), (k, k2), (v, v2)):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-5, atol=1e-5)


def test_attention_kernels_write_heads_in_merge_order(attention_path):
    """The kernels write the output as [batch, seq, heads, dim], so merging the heads back is a
    view; torch's path returns it contiguous per head."""
    q, k, v = (heads(2, 9, 3, 8, seed) for seed in range(3))
    out = dropout_attention(q, k, v, None, 0.1)
    merged_is_view = out.transpose(1, 2).is_contiguous()
    assert merged_is_view == (attention_path == "kernels")
    assert out.is_contiguous() == (attention_path == "torch")


def test_attention_bf16_under_autocast():
    """fp32 inputs under bf16 autocast: cast to bf16 as SDPA's would be, with scores and
    softmax in float32; gradients come back in the inputs' dtype."""
    q, k, v = qkv((2, 4, 64, 32), torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dropout_attention(q, k, v, None, 0.1, generator=torch.Generator().manual_seed(8))
    assert out.dtype == torch.bfloat16
    keep, keep_scale = dropout_mask((2, 4, 64, 64), 0.1, "cpu",
                                    torch.Generator().manual_seed(8))
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    ref = plain_attention(q2, k2, v2, None, keep, 1 / math.sqrt(32), keep_scale)
    torch.testing.assert_close(out.float(), ref, rtol=0, atol=3e-2)
    upstream = torch.randn_like(ref)
    out.float().backward(upstream)
    ref.backward(upstream)
    for ours, theirs in ((q, q2), (k, k2), (v, v2)):
        assert ours.grad.dtype == torch.float32
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=0, atol=5e-2)


def test_attention_saves_one_byte_mask_not_dropped_probabilities():
    q, k, v = qkv((2, 3, 16, 8), torch.float32)
    out = dropout_attention(q, k, v, None, 0.1)
    saved = out.grad_fn.saved_tensors
    big = [t for t in saved if t.shape[-2:] == (16, 16)]
    assert [t.dtype for t in big] == [torch.float32, torch.bool]  # probabilities, mask


def test_attention_refuses_unexpanded_grouped_heads():
    q = torch.randn(1, 4, 3, 8)
    k = v = torch.randn(1, 2, 3, 8)
    with pytest.raises(ValueError, match="as many key/value heads"):
        dropout_attention(q, k, v, None, 0.1)


def test_attend_uses_dropout_attention_on_cpu_and_sdpa_without_dropout():
    q, k, v = qkv((2, 4, 9, 8), torch.float32)
    out, _ = attend(q, k, v, None, 0.0)
    assert torch.equal(out, F.scaled_dot_product_attention(q, k, v))
    torch.manual_seed(3)
    dropped, _ = attend(q, k, v, None, 0.2)
    assert type(dropped.grad_fn).__name__ == "_DropoutAttentionBackward"
    torch.manual_seed(3)
    again, _ = attend(q, k, v, None, 0.2)
    assert torch.equal(dropped, again)


def test_attend_causal_grouped_dropout():
    """Causal attention with dropout and grouped-query heads: a query sees no later key."""
    q = torch.randn(1, 4, 6, 8)
    k, v = (torch.randn(1, 2, 6, 8, requires_grad=True) for _ in range(2))
    out, _ = attend(q, k, v, None, 0.5, causal=True)
    out[:, :, 2].sum().backward()
    assert torch.all(v.grad[:, :, 3:] == 0) and torch.all(k.grad[:, :, 3:] == 0)
    assert torch.any(v.grad[:, :, :3] != 0)


def test_attend_weights_path_is_causal():
    """need_weights with causal=True and no mask (a decoder asked for its attentions): the
    weights put nothing on later keys, and the output is SDPA's causal one."""
    q, k, v = qkv((1, 2, 5, 8), torch.float32)
    out, weights = attend(q, k, v, None, 0.0, need_weights=True, causal=True)
    assert torch.all(weights.triu(1) == 0)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert", "mpnet"])
def test_encoders_use_the_module_with_unchanged_names(family):
    config = {"vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 4, "intermediate_size": 37, "max_position_embeddings": 64}
    if family == "distilbert":
        config = {"vocab_size": 99, "dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 37,
                  "max_position_embeddings": 64}
    cls = {"bert": (cm.BertForSequenceClassification, cm.BertConfig),
           "roberta": (cm.RobertaForSequenceClassification, cm.RobertaConfig),
           "distilbert": (cm.DistilBertForSequenceClassification, cm.DistilBertConfig),
           "mpnet": (cm.MPNetForSequenceClassification, cm.MPNetConfig)}[family]
    model = cls[0](cls[1](**config))
    dropouts = {name: m for name, m in model.named_modules() if isinstance(m, nn.Dropout)}
    assert dropouts and all(type(m) is Dropout for m in dropouts.values())
    assert all(name.split(".")[-1] == "dropout" for name in dropouts)
    ids = torch.randint(3, 99, (2, 10))
    model.train()
    torch.manual_seed(0)
    a = model(input_ids=ids).logits
    torch.manual_seed(0)
    b = model(input_ids=ids).logits
    assert torch.equal(a, b)
    model.eval()
    assert torch.equal(model(input_ids=ids).logits, model(input_ids=ids).logits)
