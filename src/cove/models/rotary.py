"""Rotary position embeddings (RoPE) and the scaling variants checkpoints use.

A config describes its rotary embedding in one dict, `rope_parameters` (transformers 5.x):
`rope_type` ("default", "linear", "dynamic", "llama3", "yarn"), `rope_theta` and the type's own
keys. transformers 4.x configs spell it `rope_theta` plus `rope_scaling` (with `type` or
`rope_type`); `standardize_rope` folds those into `rope_parameters` as transformers 5.x does.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

DEFAULT_THETA = 10_000.0
# Scaling variants that stretch an original context length, which defaults to the model's.
_NEEDS_ORIGINAL_LENGTH = ("llama3", "yarn", "longrope")


def standardize_rope(config: Any) -> None:
    """Set `config.rope_parameters` from either spelling; drop the 4.x keys it absorbs."""
    values = config.__dict__
    scaling = values.pop("rope_scaling", None)
    theta = values.pop("rope_theta", None)
    params = dict(scaling or getattr(config, "rope_parameters", None) or {})
    params.setdefault("rope_type", params.get("type", "default"))
    params.setdefault("rope_theta", DEFAULT_THETA if theta is None else theta)
    if params["rope_type"] in _NEEDS_ORIGINAL_LENGTH:
        original = values.get("original_max_position_embeddings")
        if original is not None:
            params["original_max_position_embeddings"] = original
        params.setdefault("original_max_position_embeddings", config.max_position_embeddings)
    config.rope_parameters = params


def inverse_frequencies(params: dict[str, Any], head_dim: int, max_position_embeddings: int,
                        seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """The float32 inverse frequencies of one rotary embedding, and the factor on cos/sin.

    `seq_len` matters only to "dynamic", which stretches the base past the trained length.
    """
    kind = params["rope_type"]
    base = float(params["rope_theta"])
    dim = int(head_dim * params.get("partial_rotary_factor", 1.0))
    exponents = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    if kind == "default":
        return 1.0 / (base ** exponents), 1.0
    if kind == "linear":
        return 1.0 / (base ** exponents) / params["factor"], 1.0
    if kind == "dynamic":  # NTK-aware: a larger base once the sequence outgrows the model
        factor = params["factor"]
        n = max(seq_len or max_position_embeddings, max_position_embeddings)
        base = base * ((factor * n / max_position_embeddings) - (factor - 1)) ** (dim / (dim - 2))
        return 1.0 / (base ** exponents), 1.0
    if kind == "llama3":
        return _llama3(1.0 / (base ** exponents), params), 1.0
    if kind == "yarn":
        return _yarn(base, dim, exponents, params, max_position_embeddings)
    raise ValueError(f"rope_type {kind!r} is not supported: use one of default, linear, dynamic, "
                     "llama3, yarn.")


def _llama3(inv_freq: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
    """Llama 3.1: long wavelengths divided by `factor`, short ones kept, a smooth ramp between."""
    factor = params["factor"]
    low, high = params["low_freq_factor"], params["high_freq_factor"]
    old_length = params["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_length / low, inv_freq / factor, inv_freq)
    smooth = (old_length / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_length / high) * ~(wavelen > old_length / low)
    return torch.where(medium, smoothed, scaled)


def _yarn(base: float, dim: int, exponents: torch.Tensor, params: dict[str, Any],
          max_position_embeddings: int) -> tuple[torch.Tensor, float]:
    """YaRN: interpolate low frequencies, extrapolate high ones, and scale attention."""
    original = params["original_max_position_embeddings"]
    factor = params.get("factor") or max_position_embeddings / original

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = params.get("attention_factor")
    if attention is None:
        m, m_all = params.get("mscale"), params.get("mscale_all_dim")
        attention = float(mscale(factor, m) / mscale(factor, m_all)) if m and m_all \
            else mscale(factor)

    def correction_dim(rotations: float) -> float:  # the dimension that turns `rotations` times
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = correction_dim(params.get("beta_fast") or 32)
    high = correction_dim(params.get("beta_slow") or 1)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # avoid dividing by zero
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    freqs = base ** exponents
    extrapolate = 1 - ramp
    inv_freq = (1.0 / (factor * freqs)) * (1 - extrapolate) + (1.0 / freqs) * extrapolate
    return inv_freq, attention


class RotaryEmbedding(nn.Module):
    """cos and sin of each position's angles, [batch, seq, rotary_dim], in the input's dtype."""

    def __init__(self, params: dict[str, Any], head_dim: int, max_position_embeddings: int) -> None:
        super().__init__()
        self.params, self.head_dim = params, head_dim
        self.max_position_embeddings = max_position_embeddings
        inv_freq, self.attention_scaling = inverse_frequencies(params, head_dim,
                                                               max_position_embeddings)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def _apply(self, fn, recurse: bool = True):
        # model.to(bfloat16) would round the frequencies: move them, but keep them in float32.
        inv_freq = self.inv_freq
        super()._apply(fn, recurse)
        self.inv_freq = inv_freq.to(self.inv_freq.device)
        return self

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype
                ) -> tuple[torch.Tensor, torch.Tensor]:
        inv_freq = self.inv_freq
        if self.params["rope_type"] == "dynamic":
            seq_len = int(position_ids.max()) + 1
            if seq_len > self.max_position_embeddings:
                inv_freq, _ = inverse_frequencies(self.params, self.head_dim,
                                                  self.max_position_embeddings, seq_len)
                inv_freq = inv_freq.to(position_ids.device)
        angles = position_ids[..., None].float() * inv_freq
        angles = torch.cat((angles, angles), dim=-1)
        return ((angles.cos() * self.attention_scaling).to(dtype),
                (angles.sin() * self.attention_scaling).to(dtype))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _turn_into(out: torch.Tensor, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               sign: float) -> torch.Tensor:
    """out = x * cos + sign * rotate_half(x) * sin, without rotate_half's negated copy and
    concatenation: the product, then each half's rotated term added in place (through one
    half-size buffer; not addcmul, whose fused multiply-add would round otherwise than the
    inference path). With sign -1 it is the rotation's transpose (the backward pass: its sin
    has equal halves)."""
    half = x.shape[-1] // 2
    torch.mul(x, cos, out=out)
    term = torch.mul(x[..., half:], sin[..., :half])
    (out[..., :half].sub_ if sign > 0 else out[..., :half].add_)(term)
    torch.mul(x[..., :half], sin[..., half:], out=term)
    (out[..., half:].add_ if sign > 0 else out[..., half:].sub_)(term)
    return out


class _Rotary(torch.autograd.Function):
    """The rotation of queries and keys in one node, saving only cos and sin."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(cos, sin)
        return (_turn_into(torch.empty_like(q), q, cos, sin, 1.0),
                _turn_into(torch.empty_like(k), k, cos, sin, 1.0))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_q: torch.Tensor | None, grad_k: torch.Tensor | None):
        cos, sin = ctx.saved_tensors
        # the transposed rotation turns the other way
        return tuple(None if g is None else _turn_into(torch.empty_like(g), g, cos, sin, -1.0)
                     for g in (grad_q, grad_k)) + (None, None)


def apply_rotary(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate [batch, heads, seq, head_dim] queries and keys; cos/sin are [batch, seq, rot_dim].

    With a partial rotary dimension only the first rot_dim features turn; the rest pass through.
    """
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    rot = cos.shape[-1]
    if (rot == q.shape[-1] and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad)
            and not (cos.requires_grad or sin.requires_grad)):
        # Training: a few in-place passes per tensor instead of rotate_half's negation,
        # concatenation, two products and a sum, and as few again in the backward pass.
        return _Rotary.apply(q, k, cos, sin)

    def turn(x: torch.Tensor) -> torch.Tensor:
        if rot == x.shape[-1]:
            return x * cos + rotate_half(x) * sin
        head, tail = x[..., :rot], x[..., rot:]
        return torch.cat((head * cos + rotate_half(head) * sin, tail), dim=-1)

    return turn(q), turn(k)
