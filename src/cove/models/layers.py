"""Building blocks shared by the model families: activations, attention, masks, heads' losses."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


ACT2FN = {
    "gelu": F.gelu,
    "gelu_new": gelu_new,
    "gelu_pytorch_tanh": gelu_new,
    "gelu_fast": gelu_new,
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
}


def activation(name: str):
    try:
        return ACT2FN[name]
    except KeyError:
        raise ValueError(f"Unknown activation {name!r}: use one of {sorted(ACT2FN)}") from None


def padding_mask(attention_mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """[batch, seq] of 1/0 -> an additive [batch, 1, 1, seq] mask (0 or the dtype's minimum).

    None when nothing is masked: SDPA then takes its fastest path.
    """
    if attention_mask is None or bool(attention_mask.all()):
        return None
    mask = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - mask) * torch.finfo(dtype).min


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    b, s, _ = x.shape
    return x.view(b, s, num_heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, s, d = x.shape
    return x.transpose(1, 2).reshape(b, s, h * d)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    dropout: float,
    need_weights: bool = False,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scaled dot-product attention over [batch, heads, seq, dim] tensors.

    SDPA unless the caller asks for the attention weights, which SDPA does not return.
    """
    if not need_weights:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                              scale=scale), None
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores + mask
    weights = scores.softmax(dim=-1)
    probs = F.dropout(weights, p=dropout) if dropout else weights
    return torch.matmul(probs, v), weights


def self_attention(
    x: torch.Tensor,
    projections: tuple[nn.Module, nn.Module, nn.Module],
    num_heads: int,
    mask: torch.Tensor | None,
    dropout: float,
    need_weights: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Project `x` to queries, keys and values, attend per head, and merge the heads back."""
    q, k, v = (split_heads(p(x), num_heads) for p in projections)
    out, weights = attend(q, k, v, mask, dropout, need_weights)
    return merge_heads(out), weights


def check_heads(width: int, heads: int) -> None:
    if width % heads:
        raise ValueError(f"The hidden size {width} is not a multiple of the number of "
                         f"attention heads {heads}.")


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, config) -> torch.Tensor:
    """The loss transformers picks for sequence classification (by config.problem_type)."""
    num_labels = logits.shape[-1]
    problem = config.problem_type
    if problem is None:
        if num_labels == 1:
            problem = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
    if problem == "regression":
        return F.mse_loss(logits.squeeze(-1), labels.squeeze(-1).to(logits.dtype)) \
            if num_labels == 1 else F.mse_loss(logits, labels.to(logits.dtype))
    if problem == "single_label_classification":
        return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


def token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over tokens; label -100 is ignored (padding, sub-words)."""
    return F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), ignore_index=-100)


def span_logits(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A question-answering head's [batch, seq, 2] -> start and end logits, each [batch, seq]."""
    start, end = logits.split(1, dim=-1)
    return start.squeeze(-1).contiguous(), end.squeeze(-1).contiguous()


def span_loss(start_logits, end_logits, start_positions, end_positions) -> torch.Tensor:
    """Mean of start and end cross-entropies; out-of-range positions are ignored."""
    n = start_logits.shape[1]
    start = start_positions.view(-1).clamp(0, n)
    end = end_positions.view(-1).clamp(0, n)
    return (F.cross_entropy(start_logits, start, ignore_index=n)
            + F.cross_entropy(end_logits, end, ignore_index=n)) / 2


def init_weights(module: nn.Module, std: float) -> None:
    """transformers' initialisation for encoders: normal(std) weights, zero biases, unit norms."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
