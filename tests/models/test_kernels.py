"""Cove's decode GEMV kernels (cove.kernels): each kind against torch's product with the same
weights, the routing of the layers through them, and the fallback to torch's kernels.

Tolerances: the kernels accumulate in float32 in their own order, so against torch's float32
product they differ by float32 rounding over K terms (1e-5 of the output's magnitude, with
margin); outputs cast to bfloat16 by one bfloat16 step (2^-8 relative).
int4 weights on a CPU with AVX512-VNNI (isa "avx512+vnni") take x quantised to int8 in blocks
of 32 (see gemv.cpp): those products are checked against the same quantisation done here in
float64 (1e-6 of the output's magnitude: only the float32 sums' order differs), and
against the float product within the bound the quantisation allows, sum_k |w[n, k]| * d_k / 2
(each activation moves by at most half its block's step d_k).
The first build compiles the extension (about a minute on two cores, once per cache); the
scalar build and the one without VNNI and AVX512_BF16 are two more.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import cove.models as cm
from cove import kernels
from cove.models.weight_only import Int4WeightOnlyLinear, Int8WeightOnlyLinear, quantize_int4

pytestmark = pytest.mark.skipif(os.environ.get("COVE_KERNELS") == "0",
                                reason="COVE_KERNELS=0 turns the kernels off")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def ext():
    module = kernels.load()
    assert module is not None, "the kernels did not build on this machine (see the warning)"
    return module


@pytest.fixture(scope="module")
def scalar_ext():
    return kernels.build(("-DCOVE_KERNELS_SCALAR",))


@pytest.fixture(scope="module")
def float_ext(ext):
    """The AVX-512 build without the integer products or the bfloat16 pair products (CPUs
    without VNNI and AVX512_BF16)."""
    if not ext.isa().startswith("avx512"):
        pytest.skip("no AVX-512 on this CPU")
    return kernels.build(("-DCOVE_KERNELS_NO_VNNI", "-DCOVE_KERNELS_NO_BF16"))


def quantized(ext) -> bool:
    """Whether this build's int4 products take x quantised."""
    return "vnni" in ext.isa().split("+")


def within_sum_order(out: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> None:
    """out = x @ w.T (bfloat16 weights, float32 or bfloat16-valued x) in float32 sums of the
    products in the kernels' orders: per lane at most K / 16 + 4 roundings (fused
    multiply-adds over 16 lanes, or vdpbf16ps' two adds per 32 inputs in two accumulators,
    whose bfloat16 products are exact), 4 for the lanes' sum, then at most 15 tail inputs of a
    product and an add each; every rounding moves a partial sum of at most sum |w x| by at most
    2^-24 of it."""
    k = x.shape[1]
    exact = x.double() @ w.double().T
    steps = k / 16 + 8 + 2 * (k % 16)
    bound = steps * 2.0**-24 * (x.double().abs() @ w.double().abs().T)
    assert out.dtype == torch.float32
    assert ((out.double() - exact).abs() <= bound).all()


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] as the kernels quantise it: (qa [M, K], each input's block scale d [M, K]),
    with gemv.cpp's float32 operations (d = max|a| / 127, qa = round(a * (127 / max|a|)))."""
    blocks = x.float().view(x.shape[0], -1, 32)
    amax = blocks.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, torch.tensor(127.0) / amax, torch.zeros(()))
    qa = torch.round(blocks * inv)
    return qa.view_as(x), (amax / 127).expand_as(blocks).reshape(x.shape)


def blocks_expected(q: torch.Tensor, d: torch.Tensor, codes: torch.Tensor,
                    scale: torch.Tensor, zero: torch.Tensor, group: int) -> torch.Tensor:
    """The product of int8 blocks q (scale d per input) and int4 codes in float64: per block
    d_b * (s (codes . q) + (zero - 8 s) sum q), zero - 8 s in float32 as the kernel takes it."""
    m, n = q.shape[0], codes.shape[0]
    s = scale.float().repeat_interleave(group // 32, 1)
    low = (zero.float().repeat_interleave(group // 32, 1) - 8 * s).double()
    q, d = q.double().view(m, -1, 32), d.double()[:, ::32]
    sums = torch.einsum("mbk,nbk->mnb", q, codes.double().view(n, -1, 32))
    return (s.double() * d[:, None] * sums + low * (d * q.sum(-1))[:, None]).sum(-1)


def int4_expected(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
                  zero: torch.Tensor, group: int) -> torch.Tensor:
    """The quantised product of x's int8 blocks (the kernels' quantisation) in float64."""
    return blocks_expected(*quantize_rows(x), codes, scale, zero, group)


def within_quantization(out: torch.Tensor, x: torch.Tensor, w: torch.Tensor,
                        expected: torch.Tensor) -> None:
    """out is the float product `expected` of x and w up to x's quantisation in blocks of 32."""
    _, d = quantize_rows(x)
    bound = (d.double() / 2) @ w.double().abs().t()
    err = (out.double() - expected.double()).abs()
    assert (err <= bound + 1e-5 * max(expected.abs().max().item(), 1.0)).all(), \
        (err - bound).max()


def close(out: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> None:
    assert out.shape == expected.shape and out.dtype == expected.dtype
    err = (out.float() - expected.float()).abs().max().item()
    assert err <= rel * max(expected.float().abs().max().item(), 1.0), err


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def int4_case(rows: int, cols: int, group: int, dtype: torch.dtype, with_codes: bool = False):
    w = torch.randn(rows, cols, generator=gen(1))
    codes, scale, zero = quantize_int4(w, group)
    scale, zero = scale.to(dtype), zero.to(dtype)
    dq = ((codes.float() - 8).view(rows, -1, group) * scale.float()[..., None]
          + zero.float()[..., None]).view(rows, cols)
    if with_codes:
        return kernels.pack_int4(codes), scale, zero, dq, codes
    return kernels.pack_int4(codes), scale, zero, dq


# -- each kind against torch ----------------------------------------------------------------
@pytest.mark.parametrize("rows", range(1, 9))
@pytest.mark.parametrize("shape", [(576, 1536), (1536, 200), (37, 100)], ids=str)
def test_dense_float32(ext, rows, shape):
    k, n = shape  # 100: a tail past the last 16 inputs; 37 and 200: past the last 4 rows
    x, w, b = (torch.randn(rows, k, generator=gen()), torch.randn(n, k, generator=gen(1)),
               torch.randn(n, generator=gen(2)))
    close(ext.dense(x, w, b), F.linear(x, w, b))
    close(ext.dense(x, w, None), F.linear(x, w))


@pytest.mark.parametrize("rows", [1, 3, 8])
def test_dense_bfloat16(ext, rows):
    x, w = torch.randn(rows, 576, generator=gen()), torch.randn(200, 576, generator=gen(1))
    wb = w.bfloat16()
    close(ext.dense(x, wb, None), F.linear(x, wb.float()))  # exact widening, float32 sums
    out = ext.dense(x.bfloat16(), wb, None)  # a bfloat16 model's call: bfloat16 out
    close(out, F.linear(x.bfloat16().float(), wb.float()).bfloat16(), rel=2**-7)


@pytest.mark.parametrize("rows", [1, 3])
def test_two_threads_compute_what_one_does(ext, rows):
    """The suite runs one thread; here two split each product's 600 output rows (past the
    one-thread grain for every kind), and each row's sum is the one-thread one bit for bit.
    The workers once read their own, empty copy of the caller's per-thread bfloat16 buffer:
    a bfloat16 model crashed at torch's default of two threads."""
    x = torch.randn(rows, 576, generator=gen())
    w = torch.randn(600, 576, generator=gen(1))
    q, s = torch.randint(-127, 128, (600, 576), dtype=torch.int8, generator=gen(2)), torch.rand(600)
    packed, scale, zero, _ = int4_case(600, 576, 32, torch.bfloat16)
    products = [lambda: ext.dense(x, w, None), lambda: ext.dense(x, w.bfloat16(), None),
                lambda: ext.dense(x.bfloat16(), w.bfloat16(), None),
                lambda: ext.int8_linear(x, q, s, None),
                lambda: ext.int4_linear(x, packed, scale, zero, 32, None)]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = [f() for f in products]
        torch.set_num_threads(2)
        two = [f() for f in products]
    finally:
        torch.set_num_threads(before)
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("k", [576, 1536, 31, 40, 64, 96, 100])
@pytest.mark.parametrize("rows", [1, 2, 5, 8])
def test_dense_bfloat16_within_the_sums_order(ext, rows, k):
    """bfloat16 weights against bfloat16-valued x (a bfloat16 model's activations: on CPUs
    with AVX512_BF16, products of bfloat16 pairs, masked past the last 32 inputs) and
    against float32 x (widened, x unrounded: a rounded x would miss the bound by ~2^-9):
    float32 sums of the exact products."""
    w = torch.randn(37, k, generator=gen(1)).bfloat16()
    x = torch.randn(rows, k, generator=gen())
    within_sum_order(ext.dense(x.bfloat16().float(), w, None), x.bfloat16().float(), w)
    within_sum_order(ext.dense(x, w, None), x, w)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 2, 5, 8])
def test_int8(ext, rows, dtype):
    q = torch.randint(-127, 128, (208, 300), dtype=torch.int8, generator=gen(1))
    scale = (torch.rand(208, generator=gen(2)) * 0.01).to(dtype)
    x, b = torch.randn(rows, 300, generator=gen()), torch.randn(208, generator=gen(3))
    close(ext.int8_linear(x, q, scale, b), F.linear(x, q.float() * scale.float()[:, None], b))


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows", [1, 4, 7, 8])
def test_int4(ext, rows, dtype, group):
    packed, scale, zero, dq, codes = int4_case(200, 384, group, dtype, with_codes=True)
    torch.testing.assert_close(ext.int4_dequantize(packed, scale, zero, group), dq,
                               rtol=0, atol=1e-6)
    x, b = torch.randn(rows, 384, generator=gen()), torch.randn(200, generator=gen(3))
    out = ext.int4_linear(x, packed, scale, zero, group, b)
    if quantized(ext):
        close(out - b, int4_expected(x, codes, scale, zero, group).float(), rel=1e-6)
        within_quantization(out, x, dq, F.linear(x, dq, b))
    else:
        close(out, F.linear(x, dq, b))


def test_quantized_rows_edge_cases(ext):
    """int4 against x quantised here: blocks of zeros (scale 0), one large value among small
    ones, ties at half a step, and K past 64 blocks (the kernel's rows in passes of 64)."""
    if not quantized(ext):
        pytest.skip("this build keeps float32 activations")
    k = 64 * 32 + 128
    x = torch.randn(3, k, generator=gen()) * 0.01
    x[0, :64] = 0
    x[1, 40] = 1e4
    # a block of ties: max 127 / 128, so x * (127 / max) = x * 128 is j + 0.5 exactly
    x[2, :31] = (torch.arange(31) + 0.5) / 128 * (-1) ** torch.arange(31)
    x[2, 31] = 127 / 128
    for group in (32, 64):
        codes = torch.randint(0, 16, (24, k), generator=gen(3))
        s, z = torch.rand(24, k // group, generator=gen(4)), torch.randn(24, k // group)
        out = ext.int4_linear(x, kernels.pack_int4(codes), s, z, group, None)
        close(out, int4_expected(x, codes, s, z, group).float(), rel=1e-6)


@pytest.mark.parametrize("rows", [1, 3, 8])
def test_float_activations_without_vnni(float_ext, rows):
    """The AVX-512 build without VNNI and AVX512_BF16 widens int4 and bfloat16 weights and
    keeps x in float32."""
    assert float_ext.isa() == "avx512"
    w = torch.randn(40, 100, generator=gen(1)).bfloat16()
    xb = torch.randn(rows, 100, generator=gen()).bfloat16().float()
    within_sum_order(float_ext.dense(xb, w, None), xb, w)
    x = torch.randn(rows, 384, generator=gen())
    q, s = torch.randint(-127, 128, (40, 384), dtype=torch.int8, generator=gen(2)), torch.rand(40)
    close(float_ext.int8_linear(x, q, s, None), F.linear(x, q.float() * s[:, None]))
    packed, scale, zero, dq = int4_case(40, 384, 32, torch.bfloat16)
    close(float_ext.int4_linear(x, packed, scale, zero, 32, None), F.linear(x, dq))


def test_scalar_build_matches(ext, scalar_ext):
    """The path built for CPUs without AVX-512 (forced here by a flag) computes the same."""
    assert scalar_ext.isa() == "scalar"
    x = torch.randn(3, 256, generator=gen())
    w = torch.randn(40, 256, generator=gen(1))
    close(scalar_ext.dense(x, w, None), ext.dense(x, w, None))
    close(scalar_ext.dense(x, w.bfloat16(), None), ext.dense(x, w.bfloat16(), None))
    q, s = torch.randint(-127, 128, (40, 256), dtype=torch.int8, generator=gen(2)), torch.rand(40)
    close(scalar_ext.int8_linear(x, q, s, None), F.linear(x, q.float() * s[:, None]))
    packed, scale, zero, dq = int4_case(40, 256, 64, torch.bfloat16)
    close(scalar_ext.int4_linear(x, packed, scale, zero, 64, None), F.linear(x, dq))
    torch.testing.assert_close(scalar_ext.int4_dequantize(packed, scale, zero, 64), dq)


def test_bad_input_is_refused(ext):
    w = torch.randn(16, 64)
    with pytest.raises(RuntimeError, match="1 to 8 rows"):
        ext.dense(torch.randn(9, 64), w, None)
    with pytest.raises(RuntimeError, match=r"x must be \[rows, 64\]"):
        ext.dense(torch.randn(2, 63), w, None)
    with pytest.raises(RuntimeError, match="contiguous"):
        ext.dense(torch.randn(2, 64), torch.randn(64, 16).t(), None)
    with pytest.raises(RuntimeError, match="float32 or bfloat16"):
        ext.dense(torch.randn(2, 64), w.half(), None)
    with pytest.raises(RuntimeError, match="one scale per output row"):
        ext.int8_linear(torch.randn(1, 64), w.to(torch.int8), torch.ones(15), None)
    packed = torch.zeros(16, 32, dtype=torch.uint8)
    with pytest.raises(RuntimeError, match="group 48"):
        ext.int4_linear(torch.randn(1, 64), packed, torch.ones(16, 1), torch.ones(16, 1), 48, None)
    with pytest.raises(ValueError, match="multiple of 32"):
        kernels.pack_int4(torch.zeros(4, 48, dtype=torch.int32))


def test_cache_key_names_the_cpu_flags_and_torch(monkeypatch):
    key = kernels.build_key()
    assert kernels.build_key(("-DCOVE_KERNELS_SCALAR",)) != key
    with monkeypatch.context() as m:
        m.setattr(kernels, "_cpu_flags", lambda: "flags : sse2")  # another CPU
        assert kernels.build_key() != key
    # the same torch in another environment: its include folders differ in the build file
    monkeypatch.setattr(torch, "__file__", "/elsewhere/site-packages/torch/__init__.py")
    assert kernels.build_key() != key


# -- the layers through the kernels ---------------------------------------------------------
@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_layers_take_the_kernel_for_few_rows(ext, kind):
    w, b = torch.randn(208, 256, generator=gen(1)) * 0.05, torch.randn(208, generator=gen(2))
    layer = (Int8WeightOnlyLinear.from_weight(w, b) if kind == "int8"
             else Int4WeightOnlyLinear.from_weight(w, b, 64))
    dq = layer.dequantize()
    for rows in (1, 8, 20):  # 20 rows: a prompt (with VNNI: int4_gemm, int8_gemm; else GEMM)
        x = torch.randn(2, rows, 256, generator=gen(3))
        out = layer(x)
        assert out.shape == (2, rows, 208) and out.dtype == torch.float32
        expected = F.linear(x, dq, b)
        if kind == "int4" and 2 * rows <= kernels.MAX_ROWS and quantized(ext):  # int8 x
            within_quantization(out.view(-1, 208), x.view(-1, 256), dq, expected.view(-1, 208))
        elif 2 * rows > kernels.MAX_ROWS and ext.has_int4_gemm():  # x, remainder: int8
            _, d = quantize_rows(x.view(-1, 256))  # each input within half of d / 256
            bound = (d.double() / 512) @ dq.double().abs().t()
            err = (out.view(-1, 208).double() - expected.view(-1, 208).double()).abs()
            assert (err <= bound + 1e-5 * expected.abs().max().item()).all()
        else:
            close(out, expected)  # float32 activations


def tiny_llama(dtype: torch.dtype = torch.float32, tie: bool = True) -> cm.LlamaForCausalLM:
    torch.manual_seed(0)
    config = cm.LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            max_position_embeddings=64, tie_word_embeddings=tie)
    return cm.LlamaForCausalLM(config).to(dtype).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_llama_decodes_as_before(ext, dtype):
    """The plain nn.Linear layers (the tied head included) go through the dense kernel when
    decoding, keep their type and state_dict, and greedy tokens are those of F.linear."""
    model = tiny_llama(dtype)
    assert type(model.lm_head) is torch.nn.Linear
    assert model.lm_head.weight is model.model.embed_tokens.weight
    keys = list(model.state_dict())
    ids = torch.tensor([[5, 17, 101, 9], [200, 3, 3, 48]])
    with torch.no_grad():
        fast = model.generate(ids, max_new_tokens=10, do_sample=False)
        fast_step = model(ids[:, :1]).logits
    for module in model.modules():  # back to nn.Linear's own forward
        module.__dict__.pop("forward", None)
    with torch.no_grad():
        plain = model.generate(ids, max_new_tokens=10, do_sample=False)
        plain_step = model(ids[:, :1]).logits
    assert torch.equal(fast, plain)
    close(fast_step, plain_step, 1e-5 if dtype == torch.float32 else 2**-7)
    assert list(model.state_dict()) == keys


def test_training_keeps_autograd(ext):
    model = tiny_llama().train()
    loss = model(torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss
    loss.backward()
    assert model.model.layers[0].self_attn.q_proj.weight.grad is not None


# -- the fallback ---------------------------------------------------------------------------
def test_build_failure_falls_back_with_one_warning(tmp_path, monkeypatch, caplog):
    broken = tmp_path / "gemv.cpp"
    broken.write_text("#error this source does not compile\n")
    monkeypatch.setattr(kernels, "FILES", (broken,))
    monkeypatch.setenv("COVE_KERNELS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(kernels, "_loaded", kernels._UNSET)
    with caplog.at_level(logging.WARNING, logger="cove.kernels"):
        assert kernels.load() is None
        assert kernels.load() is None  # decided once
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # the first build says it is compiling, then why it failed; the second call says nothing
    assert len(warnings) == 2 and "compiling them once" in warnings[0]
    assert "could not be built" in warnings[1]
    layer = Int4WeightOnlyLinear.from_weight(torch.randn(32, 64) * 0.05, None, 32)
    assert not layer.cove_layout and hasattr(layer, "scales_and_zeros")
    assert layer(torch.randn(1, 64)).shape == (1, 32)


_OFF = """
import torch
from cove import kernels
import cove.models as cm
from cove.models.weight_only import Int4WeightOnlyLinear
assert kernels.load() is None
layer = Int4WeightOnlyLinear.from_weight(torch.randn(32, 64) * 0.05, None, 32)
assert not layer.cove_layout
config = cm.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1)
model = cm.LlamaForCausalLM(config)
assert all("forward" not in m.__dict__ for m in model.modules())
from cove.models.decoding import StaticKVCache
out = model.eval().generate(torch.tensor([[1, 2, 3]]), max_new_tokens=3, do_sample=False,
                            return_dict_in_generate=True)
assert out.sequences.shape == (1, 6)
assert not isinstance(out.past_key_values, StaticKVCache)  # the module forward decoded
print("ok")
"""


def test_env_turns_them_off():
    env = {**os.environ, "COVE_KERNELS": "0", "PYTHONPATH": REPO}
    result = subprocess.run([sys.executable, "-c", _OFF], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
