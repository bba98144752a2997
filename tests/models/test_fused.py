"""The fused training ops against the plain torch compositions they replace: the same values,
the same gradients, and less kept for the backward pass."""

from __future__ import annotations

import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cove.models import fused
from cove.models.layers import GatedMLP, RMSNorm, causal_lm_loss, run_block
from cove.models.llama import LlamaConfig, LlamaForCausalLM


def saved_bytes(fn) -> int:
    """Bytes of the distinct non-parameter tensors autograd keeps for fn()'s backward pass
    (those still held once fn has returned: not a fused op's passing ones)."""
    seen: list[weakref.ref] = []

    def pack(t):
        if not isinstance(t, nn.Parameter):
            seen.append(weakref.ref(t))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()  # noqa: F841 (its graph holds the saved tensors)
        alive = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                 for t in (ref() for ref in seen) if t is not None}
    return sum(alive.values())


def grads(out: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(out, tensors))


class OtherHead(nn.Linear):
    """Not a plain nn.Linear: the loss takes its generic path (autograd per chunk)."""


@pytest.mark.parametrize("kind", [nn.Linear, OtherHead])
@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_head_loss_equals_cross_entropy_with_ignored_tokens(monkeypatch, chunk, kind):
    torch.manual_seed(0)
    head = kind(16, 50)
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    labels = torch.randint(0, 50, (2, 9))
    labels[0, :6] = -100  # chunks of 1 and 3 tokens see all-ignored chunks
    labels[1, 4] = -100
    monkeypatch.setattr(fused, "LOSS_CHUNK_ELEMENTS", chunk * 50)
    loss, logits = fused.lm_head_loss(head, hidden, labels)
    plain_logits = head(hidden)
    plain = causal_lm_loss(plain_logits, labels)
    torch.testing.assert_close(loss, plain)
    torch.testing.assert_close(logits, plain_logits.detach())
    assert not logits.requires_grad
    for ours, theirs in zip(grads(loss * 3, hidden, head.weight, head.bias),
                            grads(plain * 3, hidden, head.weight, head.bias), strict=True):
        torch.testing.assert_close(ours, theirs)


def test_head_loss_all_ignored_is_nan_as_cross_entropy():
    head = nn.Linear(4, 7)
    hidden = torch.randn(1, 3, 4)
    labels = torch.full((1, 3), -100)
    loss, _ = fused.lm_head_loss(head, hidden, labels)
    assert torch.isnan(loss) and torch.isnan(causal_lm_loss(head(hidden), labels))


@pytest.mark.parametrize("kind", [nn.Linear, OtherHead])
def test_head_loss_without_grad_and_with_a_tied_head(kind):
    torch.manual_seed(0)
    embed = nn.Embedding(30, 8)
    head = kind(8, 30, bias=False)
    head.weight = embed.weight  # tied: the gradient sums both uses
    ids = torch.randint(0, 30, (2, 5))
    loss, _ = fused.lm_head_loss(head, embed(ids), ids)
    plain = causal_lm_loss(head(embed(ids)), ids)
    torch.testing.assert_close(grads(loss, embed.weight)[0], grads(plain, embed.weight)[0])
    with torch.no_grad():
        loss, logits = fused.lm_head_loss(head, embed(ids), ids)
        torch.testing.assert_close(loss, causal_lm_loss(head(embed(ids)), ids))
    # frozen head and hidden states: the loss alone
    head.weight.requires_grad_(False)
    loss, _ = fused.lm_head_loss(head, embed(ids).detach(), ids)
    torch.testing.assert_close(loss, plain.detach())


def test_head_loss_rejects_labels_of_another_shape():
    with pytest.raises(ValueError, match="labels of shape"):
        fused.lm_head_loss(nn.Linear(4, 7), torch.randn(2, 3, 4), torch.zeros(2, 4).long())


def test_causal_lm_keeps_no_full_size_loss_tensors():
    """The model's loss equals the plain one and saves no [tokens, vocab] tensor."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=4096, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config).train()
    ids = torch.randint(0, 4096, (2, 64))
    labels = ids.clone()
    labels[:, :10] = -100
    with torch.no_grad():
        plain = causal_lm_loss(model(input_ids=ids).logits, labels)
    kept = saved_bytes(lambda: model(input_ids=ids, labels=labels))
    out = model(input_ids=ids, labels=labels)
    torch.testing.assert_close(out.loss, plain)
    assert out.logits.shape == (2, 64, 4096) and not out.logits.requires_grad
    assert kept < 2 * 64 * 4096 * 4  # less than one float32 logits tensor


@pytest.mark.parametrize("bias", [False, True])
def test_low_rank_linear_matches_the_unfused_lora(bias):
    torch.manual_seed(0)
    base = nn.Linear(12, 10, bias=bias)
    base.weight.requires_grad_(False)
    a1, b1 = torch.randn(4, 12, requires_grad=True), torch.randn(10, 4, requires_grad=True)
    a2, b2 = torch.randn(2, 12, requires_grad=True), torch.randn(10, 2, requires_grad=True)
    x = torch.randn(3, 5, 12, requires_grad=True)
    ours = fused.low_rank_linear(x, base.weight, base.bias, [(a1, b1, 2.0), (a2, b2, 0.5)])
    plain = base(x) + (x @ a1.T @ b1.T) * 2.0 + (x @ a2.T @ b2.T) * 0.5
    torch.testing.assert_close(ours, plain)
    g = torch.randn_like(plain)
    wanted = [x, a1, b1, a2, b2] + ([base.bias] if bias else [])
    for o, p in zip(grads((ours * g).sum(), *wanted), grads((plain * g).sum(), *wanted),
                    strict=True):
        torch.testing.assert_close(o, p)


def test_low_rank_linear_with_a_trainable_base_weight():
    torch.manual_seed(0)
    w = torch.randn(6, 5, requires_grad=True)
    a, b = torch.randn(2, 5, requires_grad=True), torch.randn(6, 2, requires_grad=True)
    x = torch.randn(4, 5)
    ours = fused.low_rank_linear(x, w, None, [(a, b, 1.5)]).square().sum()
    plain = (x @ w.T + x @ a.T @ b.T * 1.5).square().sum()
    for o, p in zip(grads(ours, w, a, b), grads(plain, w, a, b), strict=True):
        torch.testing.assert_close(o, p)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rms_norm_same_values_and_grads_less_saved(dtype):
    torch.manual_seed(0)
    norm = RMSNorm(32, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(4, 7, 32, dtype=dtype, requires_grad=True)
    ours = norm(x)
    with torch.no_grad():
        plain_values = norm(x)
    assert torch.equal(ours, plain_values)  # bitwise: the same ops in the same order
    xf = x.float()
    plain = norm.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(dtype)
    g = torch.randn_like(plain)
    tol = {} if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    for o, p in zip(grads((ours * g).sum(), x, norm.weight),
                    grads((plain * g).sum(), x, norm.weight), strict=True):
        torch.testing.assert_close(o, p, **tol)
    assert saved_bytes(lambda: norm(x)) <= x.untyped_storage().nbytes() + 4 * 7 * 4


def test_gated_mlp_same_values_and_grads_without_keeping_the_product(monkeypatch):
    torch.manual_seed(0)
    mlp = GatedMLP(16, 48, "silu")
    x = torch.randn(3, 5, 16, requires_grad=True)
    with fused.lean_saving():
        ours = mlp(x)
    with torch.no_grad():
        assert torch.equal(ours, mlp(x))
    plain = mlp.down_proj(F.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
    g = torch.randn_like(plain)
    params = [x, *mlp.parameters()]
    expected = grads((plain * g).sum(), *params)
    for o, p in zip(grads((ours * g).sum(), *params), expected, strict=True):
        torch.testing.assert_close(o, p)
    # the product silu(gate) * up is not kept alive by the graph: remade in backward
    products = []
    monkeypatch.setattr("cove.models.layers.silu_gate", lambda gate, up: products.append(
        weakref.ref(out := fused.silu_gate(gate, up))) or out)
    with fused.lean_saving():
        out = mlp(x)
    assert len(products) == 1 and products[0]() is None
    torch.testing.assert_close(grads((out * g).sum(), x)[0], expected[0])


def test_gated_mlp_leaves_checkpointing_hooks_alone():
    """Under another saved-tensor hook (checkpointing) the MLP takes the plain path, so that
    hook sees every saved tensor."""
    mlp = GatedMLP(8, 24, "silu")
    x = torch.randn(2, 3, 8, requires_grad=True)
    count = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: count.append(t) or t, lambda t: t):
        with fused.lean_saving():
            assert not fused.lean()
            mlp(x).sum().backward()
    assert len(count) >= 4  # gate's, up's, silu's and the product's saved tensors


def test_a_block_keeps_no_norm_output_and_no_gated_product():
    """In a decoder layer's training forward (run_block's lean_saving) the graph holds neither
    RMSNorm's outputs nor the MLP's product; the gradients are unchanged."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=96,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)
    layer = LlamaForCausalLM(config).model.layers[0]
    x = torch.randn(2, 8, 32, requires_grad=True)
    rope = LlamaForCausalLM(config).model.rotary_emb(torch.arange(8)[None], x.dtype)
    made = []
    for module in (layer.input_layernorm, layer.post_attention_layernorm):
        module.register_forward_hook(lambda m, i, out: made.append(weakref.ref(out)))
    out, _ = run_block(layer, x, rope, None, None, False)
    assert len(made) == 2 and all(ref() is None for ref in made)
    g = torch.randn_like(out)
    params = [x, *layer.parameters()]
    ours = grads((out * g).sum(), *params)
    plain_out, _ = layer(x, rope, None, None, False)  # outside lean_saving: all kept
    for o, p in zip(ours, grads((plain_out * g).sum(), *params), strict=True):
        torch.testing.assert_close(o, p)


def test_project_stacks_adapted_and_plain_layers_into_one_output():
    """Several layers of one input (an adapted one with two adapters and a bias, a frozen
    plain one, a trainable plain one): the joint output and every gradient equal the layers'
    own."""
    torch.manual_seed(0)

    class Adapted(nn.Module):
        def __init__(self, base, adapters):
            super().__init__()
            self.base, self.adapters = base, adapters

        def low_rank_parts(self, x):
            return self.base.weight, self.base.bias, self.adapters

        def forward(self, x):
            return self.base(x) + sum((x @ a.T @ b.T) * s for a, b, s in self.adapters)

    factors = [torch.randn(4, 12, requires_grad=True), torch.randn(10, 4, requires_grad=True),
               torch.randn(2, 12, requires_grad=True), torch.randn(10, 2, requires_grad=True)]
    adapted = Adapted(nn.Linear(12, 10).requires_grad_(False),
                      [(factors[0], factors[1], 2.0), (factors[2], factors[3], 0.5)])
    frozen = nn.Linear(12, 3, bias=False).requires_grad_(False)
    trained = nn.Linear(12, 5)
    x = torch.randn(3, 5, 12, requires_grad=True)
    ours = fused.project(x, (adapted, frozen, trained))
    plain = torch.cat([adapted(x), frozen(x), trained(x)], -1)
    torch.testing.assert_close(ours, plain)
    g = torch.randn_like(plain)
    wanted = [x, *factors, trained.weight, trained.bias]
    for o, p in zip(grads((ours * g).sum(), *wanted), grads((plain * g).sum(), *wanted),
                    strict=True):
        torch.testing.assert_close(o, p)
    # plain layers only: no joint path (they keep their own)
    assert fused.project(x, (frozen, trained)) is None


def test_rotary_training_path_equals_the_plain_rotation():
    from cove.models.rotary import RotaryEmbedding, apply_rotary, rotate_half

    torch.manual_seed(0)
    cos, sin = RotaryEmbedding({"rope_type": "default", "rope_theta": 1e4}, 8, 64)(
        torch.arange(6)[None], torch.float32)
    q = torch.randn(2, 6, 4, 8, requires_grad=True)  # [batch, seq, heads, dim] as projected
    k = torch.randn(2, 6, 2, 8, requires_grad=True)
    ours = apply_rotary(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
    assert "Rotary" in type(ours[0].grad_fn).__name__
    c, s = cos.unsqueeze(1), sin.unsqueeze(1)
    plain = [x.transpose(1, 2) * c + rotate_half(x.transpose(1, 2)) * s for x in (q, k)]
    gq, gk = torch.randn_like(plain[0]), torch.randn_like(plain[1])
    # bit for bit: the same roundings as the plain ops (no fused multiply-add)
    for o, p in zip(ours, plain, strict=True):
        assert torch.equal(o, p)
    for o, p in zip(grads((ours[0] * gq).sum() + (ours[1] * gk).sum(), q, k),
                    grads((plain[0] * gq).sum() + (plain[1] * gk).sum(), q, k), strict=True):
        assert torch.equal(o, p)
    with torch.no_grad():  # inference: the plain ops, the same values bit for bit
        assert torch.equal(apply_rotary(q.transpose(1, 2), k.transpose(1, 2), cos, sin)[0],
                           plain[0])
