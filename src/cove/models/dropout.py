"""Training dropout that keeps a 1-byte mask, and attention with dropout that saves only what its
backward pass needs.

ATen's CPU dropout draws a float noise value per element (bernoulli_), multiplies by it and
keeps the 4-byte noise for the backward pass; with SDPA, non-zero dropout also rules out the
fused CPU kernels, so the attention probabilities, the noise and the dropped probabilities are
all kept. Here each random 64-bit word from torch's generator gives four 16-bit lanes, each
compared with an integer threshold (one generator draw per four elements), and the backward
pass keeps the bool mask; attention saves its probabilities and that mask only.

Probability resolution: the drop probability is rounded to the nearest multiple of 1/65536 (at
most 7.7e-6 off: p = 0.1 drops 6554/65536 = 0.100006 of the elements), and kept elements are
scaled by the inverse of that realised keep rate, so the output's expectation is the input's.
The masks come from the given generator (or torch's default one, so `torch.manual_seed` makes
them reproducible).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cove import kernels

_LANES = 1 << 16  # values of one 16-bit lane: the probability resolution


def _check_probability(p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")


def dropout_mask(shape: torch.Size | tuple[int, ...], p: float, device: torch.device | str,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, float]:
    """A bool mask of `shape`, True where an element is kept (it is dropped with probability p,
    to 1/65536), and the scale for the kept elements (the inverse of the realised keep rate)."""
    _check_probability(p)
    dropped = round(p * _LANES)
    if dropped == _LANES:
        return torch.zeros(shape, dtype=torch.bool, device=device), 1.0
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device)
    words.random_(-(1 << 63), None, generator=generator)  # every bit random
    lanes = words.view(torch.int16)[:n].view(shape)
    # A lane is uniform over [-32768, 32767]: it is below -32768 + dropped with probability
    # dropped / 65536.
    return lanes >= dropped - _LANES // 2, _LANES / (_LANES - dropped)


def _multiplier(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The keep mask as 0/1 in `dtype`. Converting the mask, then a plain product, is the fast
    way on CPU: a product with the bool (or uint8) mask, torch.where or masked_fill each took
    2-5x as long as the two (a 16x12x128x128 float32 tensor, one thread, cold cache). The
    bool mask is read as uint8 (True is 1): ATen's uint8 -> float conversion is vectorised,
    its bool one is not (0.55 against 1.82 ms for that tensor, one thread)."""
    return keep.view(torch.uint8).to(dtype)


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float, generator: torch.Generator | None
                ) -> torch.Tensor:
        keep, scale = dropout_mask(x.shape, p, x.device, generator)
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return _multiplier(keep, x.dtype).mul_(x).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (keep,) = ctx.saved_tensors
        return _multiplier(keep, grad.dtype).mul_(grad).mul_(ctx.scale), None, None


def dropout(x: torch.Tensor, p: float, training: bool = True,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """`F.dropout` with a 16-bit-lane mask kept as 1 byte per element; `x` itself when not
    training or p == 0."""
    _check_probability(p)
    if not training or p == 0.0:
        return x
    return _Dropout.apply(x, p, generator)


class Dropout(nn.Dropout):
    """nn.Dropout (same `p`, no parameters, nothing in the state dict) drawing its mask with
    `dropout` on CPU; elsewhere torch's own, whose fused kernels already keep a byte mask."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu":
            return super().forward(x)
        return dropout(x, self.p, self.training)


def _attention_kernels(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                       mask: torch.Tensor | None):
    """cove.kernels' extension when its attention kernels take these inputs (float32 on CPU, a
    mask that does not learn), else None."""
    if not (q.device.type == "cpu" and q.dtype == k.dtype == v.dtype == torch.float32
            and (mask is None or not mask.requires_grad)):
        return None
    ext = kernels.load()
    return ext if ext is not None and hasattr(ext, "attention_forward") else None


def _kernel_mask(mask: torch.Tensor | None, shape: torch.Size) -> torch.Tensor | None:
    """The mask as the kernels read it: additive float32 expanded to [batch, heads, q, kv],
    each row contiguous. A boolean mask becomes 0 / the float32 minimum (what masked_fill
    writes; adding it to a score rounds to the minimum again)."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=torch.float32).masked_fill_(
            ~mask, torch.finfo(torch.float32).min)
    mask = mask.to(torch.float32).expand(shape)
    return mask if mask.stride(-1) == 1 else mask.contiguous()


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x with a contiguous last dimension (heads split from a projection already have one)."""
    return x if x.stride(-1) == 1 else x.contiguous()


class _DropoutAttention(torch.autograd.Function):
    """softmax(q k^T * scale + mask) with dropout, times v. Saves q, k, v, the probabilities and
    the 1-byte keep mask; the dropped probabilities are recomputed in the backward pass.
    float32 on CPU runs in cove.kernels' attention kernels (one parallel pass per direction over
    the (batch, head) blocks, reading the heads where they lie); else torch's ops."""

    @staticmethod
    def forward(ctx, q, k, v, mask, scale: float, p: float, generator):
        ext = _attention_kernels(q, k, v, mask)
        ctx.ext = ext
        if ext is not None:
            q, k, v = _rows(q), _rows(k), _rows(v)
            shape = (*q.shape[:3], k.shape[2])
            keep, keep_scale = dropout_mask(shape, p, q.device, generator)
            out, probs = ext.attention_forward(q, k, v, _kernel_mask(mask, shape), keep, scale,
                                               keep_scale)
            ctx.save_for_backward(q, k, v, probs, keep)
            ctx.scale, ctx.keep_scale = scale, keep_scale
            return out
        # Heads split from a [batch, seq, width] projection are strided views: one contiguous
        # copy each here, kept for the backward pass, instead of one per matmul using them.
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        with torch.autocast(q.device.type, enabled=False):
            # Scores and softmax in float32 at least (as SDPA's math kernel): bfloat16 scores
            # would round a logit of 5 by up to 0.016.
            wide = torch.promote_types(q.dtype, torch.float32)
            scores = torch.matmul(q.to(wide) * scale, k.to(wide).transpose(-1, -2))
            if mask is not None and mask.dtype == torch.bool:
                scores.masked_fill_(~mask, torch.finfo(scores.dtype).min)
            elif mask is not None:
                scores.add_(mask)
            probs = scores.softmax(-1).to(q.dtype)
            del scores
            keep, keep_scale = dropout_mask(probs.shape, p, probs.device, generator)
            # The keep scale goes on the [.., q, dim] output, not on the [.., q, kv] probabilities.
            out = torch.matmul(_multiplier(keep, probs.dtype).mul_(probs), v).mul_(keep_scale)
        ctx.save_for_backward(q, k, v, probs, keep)
        ctx.scale, ctx.keep_scale = scale, keep_scale
        ctx.mask_shape = None if mask is None else mask.shape
        ctx.mask_dtype = None if mask is None else mask.dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, v, probs, keep = ctx.saved_tensors
        if ctx.ext is not None:
            dq, dk, dv = ctx.ext.attention_backward(_rows(grad.to(torch.float32)), q, k, v, probs,
                                                    keep, ctx.scale, ctx.keep_scale)
            return dq, dk, dv, None, None, None, None
        with torch.autocast(q.device.type, enabled=False):
            # contiguous once: the two matmuls below then copy nothing
            grad = grad.contiguous().to(v.dtype) * ctx.keep_scale
            multiplier = _multiplier(keep, probs.dtype)
            grad_v = torch.matmul((probs * multiplier).transpose(-1, -2), grad)
            grad_probs = torch.matmul(grad, v.transpose(-1, -2)).mul_(multiplier)
            del multiplier
            # ATen's fused softmax backward (what autograd runs for softmax): one kernel for
            # probs * (grad - sum(grad * probs))
            grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
            del grad_probs
            grad_mask = None
            if ctx.needs_input_grad[3]:  # an additive mask that learns (T5's position bias)
                grad_mask = grad_scores.sum_to_size(ctx.mask_shape).to(ctx.mask_dtype)
            grad_q = torch.matmul(grad_scores, k).mul_(ctx.scale)
            grad_k = torch.matmul(grad_scores.transpose(-1, -2), q).mul_(ctx.scale)
        return grad_q, grad_k, grad_v, grad_mask, None, None, None


def dropout_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      mask: torch.Tensor | None, p: float, scale: float | None = None,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Attention over [batch, heads, seq, dim] queries, keys and values (as many heads each)
    with dropout p on the probabilities. `mask` is additive or boolean (True = attend),
    broadcast to [batch, heads, q, kv]. Under autocast the inputs are cast to its dtype first,
    as SDPA's would be."""
    _check_probability(p)
    if q.shape[1] != k.shape[1] or k.shape[1] != v.shape[1]:
        raise ValueError(f"dropout_attention takes as many key/value heads as query heads; got "
                         f"{q.shape[1]}, {k.shape[1]} and {v.shape[1]} (expand them first)")
    device = q.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    elif not q.dtype == k.dtype == v.dtype:
        raise ValueError(f"query, key and value dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    return _DropoutAttention.apply(q, k, v, mask, scale, p, generator)
