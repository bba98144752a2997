"""cove.kernels' prompt product for int4 weights (prefill.cpp's int4_gemm), which
Int4WeightOnlyLinear's prompts take on AVX512-VNNI CPUs: a prompt's many rows in integer
products on x quantised to int8 in blocks of 32 as the decoding kernel quantises it (scale d),
plus the remainder x - d * qa quantised at the scale d / 256 (one pass alone flipped the
GGUF-kept SmolLM2's first answer token to "What is the capital of France?":
tests/models/test_weight_only.py).

Tolerances: against the same two quantisations done here in float64, 1e-6 of the output's
magnitude (only the float32 sums' order differs). Builds without VNNI have no int4_gemm.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from cove import kernels
from cove.models.weight_only import Int4WeightOnlyLinear, quantize_int4, quantize_int8_rows
from tests.models.test_kernels import (
    REPO,
    blocks_expected,
    close,
    gen,
    int4_expected,
    quantize_rows,
)

pytestmark = pytest.mark.skipif(os.environ.get("COVE_KERNELS") == "0",
                                reason="COVE_KERNELS=0 turns the kernels off")


@pytest.fixture(scope="module")
def ext():
    module = kernels.load()
    assert module is not None, "the kernels did not build on this machine (see the warning)"
    if not module.has_int4_gemm():
        pytest.skip(f"no AVX512-VNNI on this CPU (kernels built for {module.isa()})")
    return module


def remainder(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The second pass's input as the kernel makes it: (qr, e) with e = d / 256 and qr the
    remainder x - d * qa (rounded once to float32: the kernel's fma) in steps of e, in float32
    as the kernel computes it (r * (256 * (127 / max|a|)), rounded, saturated to int8)."""
    qa, d = quantize_rows(x)
    rest = (x.double() - d.double() * qa.double()).float()
    amax = (d * 127).view(x.shape[0], -1, 32)[..., :1]
    inv = torch.where(amax > 0, torch.tensor(127.0) / amax, torch.zeros(()))
    qr = torch.round(rest.view_as(inv.expand(-1, -1, 32)) * (256 * inv)).clamp(-128, 127)
    return qr.view_as(x), d / 256


def two_pass_expected(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor,
                      zero: torch.Tensor, group: int) -> torch.Tensor:
    """int4_expected of x's int8 blocks plus the product of their remainder's."""
    return (int4_expected(x, codes, scale, zero, group)
            + blocks_expected(*remainder(x), codes, scale, zero, group))


def case(rows: int, out: int, width: int, group: int, dtype: torch.dtype, seed: int = 0):
    """x [rows, width] and an int4 weight [out, width]: (x, packed, scale, zero, codes)."""
    x = torch.randn(rows, width, generator=gen(seed))
    codes, scale, zero = quantize_int4(torch.randn(out, width, generator=gen(seed + 1)), group)
    return x, kernels.pack_int4(codes), scale.to(dtype), zero.to(dtype), codes


# rows: below, at and past the 4-row pass, a prompt; outputs: below, at and past the 48-column
# tile, not a multiple of 16
@pytest.mark.parametrize("rows,out", [(1, 16), (3, 37), (4, 48), (5, 100), (13, 200),
                                      (130, 97), (512, 192)], ids=str)
@pytest.mark.parametrize("group", [32, 64, 128])
def test_int4_gemm_is_the_quantised_product(ext, rows, out, group):
    for dtype, bias in [(torch.bfloat16, False), (torch.float32, True), (torch.float16, True)]:
        x, packed, scale, zero, codes = case(rows, out, 384, group, dtype)
        b = torch.randn(out, generator=gen(7)) if bias else None
        y = ext.int4_gemm(x, packed, scale, zero, group, b)
        assert y.shape == (rows, out) and y.dtype == torch.float32
        expected = two_pass_expected(x, codes, scale, zero, group)
        close(y, (expected + (b.double() if bias else 0)).float(), rel=1e-6)


def test_int4_gemm_quantises_as_the_decoding_kernel(ext):
    """A prompt's first pass is the decoding kernel's product (the same quantised
    activations, 1..8 rows at a time, the sums in another order); the second that of the
    remainder."""
    x, packed, scale, zero, codes = case(21, 208, 576, 32, torch.bfloat16)
    b = torch.randn(208, generator=gen(3))
    y = ext.int4_gemm(x, packed, scale, zero, 32, b)
    steps = torch.cat([ext.int4_linear(x[r:r + n], packed, scale, zero, 32, b)
                       for r, n in ((0, 1), (1, 8), (9, 5), (14, 7))])
    second = blocks_expected(*remainder(x), codes, scale, zero, 32)
    close(y, (steps.double() + second).float(), rel=1e-6)


def test_int4_gemm_is_near_the_float_product(ext):
    """Two passes leave each input off by at most half the remainder's step, d / 256: the
    product is within that bound of the dequantised weight's float64 product, 256x tighter
    than one pass's."""
    x, packed, scale, zero, codes = case(64, 96, 576, 32, torch.float32)
    w = ((codes.float() - 8) * scale.repeat_interleave(32, 1)
         + zero.repeat_interleave(32, 1)).double()
    _, d = quantize_rows(x)
    err = (ext.int4_gemm(x, packed, scale, zero, 32, None).double() - x.double() @ w.t()).abs()
    bound = (d.double() / 512) @ w.abs().t()
    assert (err <= bound + 1e-5 * (x.double().abs() @ w.abs().t())).all()
    assert bound.max() < ((d.double() / 2) @ w.abs().t()).max() / 100


def test_int4_gemm_edge_rows(ext):
    """Zero rows and blocks (their scale 0), and a row of equal values (ties at +-127)."""
    x, packed, scale, zero, codes = case(6, 64, 128, 32, torch.float32)
    x[1] = 0
    x[3, 32:64] = 0
    x[4] = -2.5
    # row 4's codes and zero points terms (~940 each, the zero points' from their own GEMM)
    # cancel to ~72: their float32 rounding is ~1e-6 of the output
    close(ext.int4_gemm(x, packed, scale, zero, 32, None),
          two_pass_expected(x, codes, scale, zero, 32).float(), rel=3e-6)
    assert ext.int4_gemm(x[:0], packed, scale, zero, 32, None).shape == (0, 64)


def int8_expected(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The two passes' product with an int8 weight (a scale per row) in float64."""
    qa, d = quantize_rows(x)
    qr, e = remainder(x)
    m, n = x.shape[0], q.shape[0]
    w = q.double().view(n, -1, 32)
    first = torch.einsum("mbk,nbk->mnb", qa.double().view(m, -1, 32), w)
    second = torch.einsum("mbk,nbk->mnb", qr.double().view(m, -1, 32), w)
    sums = d.double()[:, ::32][:, None] * first + e.double()[:, ::32][:, None] * second
    return sums.sum(-1) * scale.float().double()


@pytest.mark.parametrize("rows,out", [(1, 16), (5, 100), (13, 200), (130, 97), (512, 192)],
                         ids=str)
def test_int8_gemm_is_the_quantised_product(ext, rows, out):
    """int8 weights (Int8WeightOnlyLinear's prompts): x + 128 against the signed weight, the
    128s' share taken off in integers; the product as the two passes make it (1e-6: the
    float32 sums' order), and near the float one."""
    for dtype, bias in [(torch.bfloat16, False), (torch.float32, True), (torch.float16, True)]:
        x = torch.randn(rows, 384, generator=gen(1)) * 3
        q, scale = quantize_int8_rows(torch.randn(out, 384, generator=gen(2)))
        q[0, :32] = 127  # a block at the extremes: the unsigned operand's 255s, the weight's
        q[-1, 32:64] = -128  # -128s
        scale = scale.to(dtype)
        b = torch.randn(out, generator=gen(3)) if bias else None
        y = ext.int8_gemm(x, q, scale, b)
        assert y.shape == (rows, out) and y.dtype == torch.float32
        expected = int8_expected(x, q, scale) + (b.double() if bias else 0)
        close(y, expected.float(), rel=1e-6)
        w = q.double() * scale.float().double()[:, None]
        _, d = quantize_rows(x)
        bound = (d.double() / 512) @ w.abs().t() + 1e-5 * (x.double().abs() @ w.abs().t())
        assert ((y.double() - (b.double() if bias else 0) - x.double() @ w.t()).abs()
                <= bound).all()


def test_int8_gemm_refuses_bad_input(ext):
    x = torch.randn(4, 96)
    q, scale = quantize_int8_rows(torch.randn(8, 96))
    with pytest.raises(RuntimeError, match=r"x must be \[rows, 96\]"):
        ext.int8_gemm(x[:, :64], q, scale, None)
    with pytest.raises(RuntimeError, match="blocks of 32, not 80"):
        ext.int8_gemm(x[:, :80], q[:, :80].contiguous(), scale, None)
    with pytest.raises(RuntimeError, match="one scale per output row"):
        ext.int8_gemm(x, q, scale[:4], None)
    assert ext.int8_gemm(x[:0], q, scale, None).shape == (0, 8)


def test_int4_gemm_refuses_bad_input(ext):
    x, packed, scale, zero, _ = case(10, 32, 128, 32, torch.float32)
    with pytest.raises(RuntimeError, match=r"x must be \[rows, 128\]"):
        ext.int4_gemm(x[:, :96], packed, scale, zero, 32, None)
    with pytest.raises(RuntimeError, match="group 48"):
        ext.int4_gemm(x, packed, scale[:, :2].contiguous(), zero[:, :2].contiguous(), 48,
                      None)
    with pytest.raises(RuntimeError, match="scales and zero points"):
        ext.int4_gemm(x, packed, scale[:16], zero[:16], 32, None)
    with pytest.raises(RuntimeError, match="bias has 31 values"):
        ext.int4_gemm(x, packed, scale, zero, 32, torch.zeros(31))


@pytest.mark.parametrize("flag", ["-DCOVE_KERNELS_NO_VNNI", "-DCOVE_KERNELS_SCALAR"])
def test_builds_without_vnni_keep_the_float_product(ext, flag):
    """Without VNNI (and in the scalar build) there is no int4_gemm (a clear error); the
    layer's prompt path (the dequantised weight in torch's GEMM) works there."""
    layer = Int4WeightOnlyLinear.from_weight(torch.randn(64, 128, generator=gen(1)) * 0.05,
                                             torch.randn(64, generator=gen(2)), 32)
    x = torch.randn(20, 128, generator=gen(3))
    other = kernels.build((flag,))
    assert not other.has_int4_gemm()
    with pytest.raises(RuntimeError, match="needs AVX512-VNNI"):
        other.int4_gemm(x, layer.qweight, layer.scale, layer.zero, 32, None)
    close(layer._wide(other, x), F.linear(x, layer.dequantize(), layer.bias))


_OFF = """
import torch, torch.nn.functional as F
from cove import kernels
from cove.models.weight_only import Int4WeightOnlyLinear
assert kernels.load() is None
layer = Int4WeightOnlyLinear.from_weight(torch.randn(64, 128) * 0.05, None, 32)
x = torch.randn(40, 128)
out, expected = layer(x), F.linear(x, layer.dequantize())
assert (out - expected).abs().max() <= 0.02 * expected.abs().max()  # bfloat16 activations
print("ok")
"""


def test_prompt_with_kernels_off():
    env = {**os.environ, "COVE_KERNELS": "0", "PYTHONPATH": REPO}
    result = subprocess.run([sys.executable, "-c", _OFF], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
