"""Building blocks shared by the model families: activations, attention, masks, norms, heads."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from cove.models.dropout import dropout as apply_dropout
from cove.models.dropout import dropout_attention
from cove.models.fused import (
    lean,
    lean_saving,
    lm_head_loss,
    project,
    remade_on_save,
    rms_norm,
    silu_gate,
)
from cove.models.outputs import (
    BaseModelOutputWithPast,
    CausalLMOutputWithPast,
    SequenceClassifierOutputWithPast,
)

if TYPE_CHECKING:
    from cove.models.cache import KVCache


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


def run_block(block: nn.Module, *args):
    """Run one block of a layer loop. With gradient checkpointing on (the model's
    `gradient_checkpointing_enable()` marks its blocks), a training forward that records
    gradients keeps only the block's inputs and recomputes the rest in the backward pass."""
    kwargs = getattr(block, "checkpoint_kwargs", None)
    if kwargs is not None and block.training and torch.is_grad_enabled():
        return torch.utils.checkpoint.checkpoint(block, *args, **kwargs)
    with lean_saving():  # training: norm outputs and gated products are remade, not kept
        return block(*args)


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


def repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[batch, kv_heads, seq, dim] -> [batch, kv_heads * groups, seq, dim] (grouped-query)."""
    if groups == 1:
        return x
    b, h, s, d = x.shape
    return x[:, :, None].expand(b, h, groups, s, d).reshape(b, h * groups, s, d)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    dropout: float,
    need_weights: bool = False,
    scale: float | None = None,
    causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scaled dot-product attention over [batch, heads, seq, dim] tensors.

    `mask` is additive (0 or a large negative) or boolean (True = attend), broadcast to
    [batch, heads, q, kv]. `causal` with no mask means plain causal attention over q == kv
    positions (or a single query, which sees everything). Keys and values may have fewer heads
    than queries (grouped-query attention). SDPA unless the caller asks for the attention
    weights, which SDPA does not return, or for dropout on CPU, where SDPA falls back to its
    unfused kernel: `dropout_attention` then keeps a 1-byte mask instead of the float noise
    and the dropped probabilities.
    """
    if isinstance(mask, PackedCausalMask):
        if not need_weights:
            return mask.attend(q, k, v, dropout, scale), None
        mask = mask.dense()
    if not need_weights and not dropout:
        out = _one_query_bf16(q, k, v, mask, scale)
        if out is not None:
            return out, None
    groups = q.shape[1] // k.shape[1]
    q_len = q.shape[2]
    is_causal = causal and mask is None and q_len > 1
    if is_causal and (need_weights or (dropout and q.device.type == "cpu")):
        # the queries are the last q_len of the keys' positions (as causal_mask has them)
        kv_len = k.shape[2]
        mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=q.device).tril(kv_len - q_len)
    if dropout and not need_weights and q.device.type == "cpu":
        return dropout_attention(q, repeat_kv(k, groups), repeat_kv(v, groups), mask, dropout,
                                 scale), None
    if not need_weights:
        if groups > 1 and q_len == 1:
            # One query per head: fold each group's heads into query positions of its kv head,
            # so no key/value copy is made (the decoding step).
            b, h, _, d = q.shape
            out = F.scaled_dot_product_attention(q.reshape(b, h // groups, groups, d), k, v,
                                                 attn_mask=mask, dropout_p=dropout, scale=scale)
            return out.reshape(b, h, 1, -1), None
        if groups > 1 and mask is not None:
            # As transformers: with an explicit mask, SDPA's grouped-query option can fall back
            # to its slowest kernel; expanded keys and values keep the fast ones.
            k, v, groups = repeat_kv(k, groups), repeat_kv(v, groups), 1
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout,
                                              scale=scale, is_causal=is_causal,
                                              enable_gqa=groups > 1), None
    k, v = repeat_kv(k, groups), repeat_kv(v, groups)
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if mask is not None and mask.dtype == torch.bool:
        # masked_fill, not an addition: a large negative plus a score could overflow half floats.
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    elif mask is not None:
        scores = scores + mask
    weights = scores.softmax(dim=-1)
    probs = apply_dropout(weights, dropout) if dropout else weights
    return torch.matmul(probs, v), weights


def _one_query_bf16(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    mask: torch.Tensor | None, scale: float | None) -> torch.Tensor | None:
    """bfloat16 decoding's attention on the CPU (one query per row, no mask or a boolean one
    over the keys) through cove.kernels' attend_one: the decoding step's own attention
    (decode.cpp), so generate's kernel steps and this forward agree bit for bit; in float32
    over the bfloat16 keys and values, ~5x faster than SDPA there. None where it does not
    apply (SDPA then)."""
    if (q.shape[2] != 1 or q.dtype != torch.bfloat16 or k.dtype != torch.bfloat16
            or v.dtype != torch.bfloat16 or q.device.type != "cpu"):
        return None
    n, d = k.shape[2], k.shape[3]
    keep = None
    if mask is not None:
        if (mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[1:3] != (1, 1)
                or mask.shape[-1] != n):
            return None
        keep = mask.reshape(mask.shape[0], n).expand(q.shape[0], n)
    if k.stride(-1) != 1 or k.stride(-2) != d or v.stride(-1) != 1 or v.stride(-2) != d:
        return None
    from cove import kernels

    ext = kernels.load()
    if ext is None:
        return None
    return ext.attend_one(q, k, v, keep, scale if scale is not None else d ** -0.5)


def packed_segments(position_ids: torch.Tensor) -> torch.Tensor | None:
    """[batch or 1, seq] position ids -> the index of the packed sequence each position is in,
    or None when every row holds one sequence. As transformers: a new sequence starts wherever
    the positions do not go up by one."""
    position_ids = position_ids.reshape(-1, position_ids.shape[-1])
    starts = position_ids[:, 1:] - position_ids[:, :-1] != 1
    if not bool(starts.any()):
        return None
    return F.pad(starts.cumsum(-1), (1, 0))


class PackedCausalMask:
    """Causal attention within each of the sequences packed end to end in a row, without a
    [seq x seq] mask: `attend` runs SDPA's mask-free causal path once per sequence, so the work
    is the sum of the squared sequence lengths rather than the square of the row's.

    Each row is a list of blocks laid end to end: `(n,)`, a sequence of n tokens; or
    `(p, b1, b2, ...)`, a prefix of p tokens shared by several continuations: the prefix, then
    each continuation, which sees the prefix and itself only (preference pairs: the prompt
    once, then the chosen and the rejected completions). One row of blocks serves every row of
    the batch. Packed position ids (restarting at 0) give blocks of one sequence each; a
    layout of shared prefixes is passed to a Cove decoder as its `attention_mask`, with the
    position ids of each continuation following on from its prefix.
    `dense()` (and indexing) gives the boolean [rows, 1, seq, seq] mask (True = attend)."""

    def __init__(self, blocks: list[list[tuple[int, ...]]], device: torch.device | str = "cpu"
                 ) -> None:
        self.blocks = [[tuple(int(n) for n in b) for b in row] for row in blocks]
        self.length = sum(sum(b) for b in self.blocks[0])
        if any(sum(sum(b) for b in row) != self.length for row in self.blocks):
            raise ValueError("PackedCausalMask: every row must span the same length")
        self.device = device
        self._dense: torch.Tensor | None = None
        self._masks: dict[tuple[int, int], torch.Tensor] = {}

    def _continuation_mask(self, n: int, prefix: int, device: torch.device) -> torch.Tensor:
        """[n, prefix + n]: a continuation's queries see the prefix, then themselves causally
        (made once, shared by every layer)."""
        mask = self._masks.get((n, prefix))
        if mask is None:
            mask = torch.ones(n, prefix + n, dtype=torch.bool, device=device).tril(prefix)
            self._masks[(n, prefix)] = mask
        return mask

    @classmethod
    def from_segments(cls, segments: torch.Tensor) -> PackedCausalMask:
        """From [rows, seq] indices of the sequence each position is in."""
        return cls([[(n,) for n in torch.unique_consecutive(row, return_counts=True)[1].tolist()]
                    for row in segments], segments.device)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.blocks), 1, self.length, self.length))

    def dense(self) -> torch.Tensor:
        if self._dense is None:
            mask = torch.zeros(self.shape, dtype=torch.bool, device=self.device)
            for i, row in enumerate(self.blocks):
                m, start = mask[i, 0], 0
                for prefix, *branches in row:
                    first = prefix + (branches[0] if branches else 0)
                    m[start:start + first, start:start + first] = torch.ones(
                        first, first, dtype=torch.bool, device=self.device).tril()
                    at = start + first
                    for n in branches[1:]:
                        m[at:at + n, start:start + prefix] = True
                        m[at:at + n, at:at + n] = torch.ones(
                            n, n, dtype=torch.bool, device=self.device).tril()
                        at += n
                    start = at
            self._dense = mask
        return self._dense

    def __getitem__(self, index):
        return self.dense()[index]

    def positions(self) -> torch.Tensor:
        """[rows, seq]: each position's place in its sequence (a continuation's follow on
        from its prefix)."""
        rows = []
        for row in self.blocks:
            parts = []
            for prefix, *branches in row:
                parts.append(torch.arange(prefix + (branches[0] if branches else 0)))
                parts += [torch.arange(prefix, prefix + n) for n in branches[1:]]
            rows.append(torch.cat(parts))
        return torch.stack(rows).to(self.device)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float,
               scale: float | None) -> torch.Tensor:
        """SDPA over [batch, heads, seq, dim] queries, keys and values (keys and values may
        have fewer heads), as the layout allows."""
        groups = q.shape[1] // k.shape[1]

        def causal(a, b, c):
            return F.scaled_dot_product_attention(a, b, c, dropout_p=dropout, scale=scale,
                                                  is_causal=a.shape[2] > 1,
                                                  enable_gqa=groups > 1)

        def run(q, k, v, row):
            outs, start = [], 0
            for prefix, *branches in row:
                first = prefix + (branches[0] if branches else 0)
                if first:
                    outs.append(causal(q[:, :, start:start + first], k[:, :, start:start + first],
                                       v[:, :, start:start + first]))
                at = start + first
                for n in branches[1:]:
                    if not n:
                        continue
                    if not prefix:
                        outs.append(causal(q[:, :, at:at + n], k[:, :, at:at + n],
                                           v[:, :, at:at + n]))
                    else:
                        # the continuation's queries see the prefix, then themselves causally
                        keys = torch.cat([k[:, :, start:start + prefix], k[:, :, at:at + n]], 2)
                        values = torch.cat([v[:, :, start:start + prefix], v[:, :, at:at + n]],
                                           2)
                        mask = self._continuation_mask(n, prefix, q.device)
                        outs.append(F.scaled_dot_product_attention(
                            q[:, :, at:at + n], repeat_kv(keys, groups),
                            repeat_kv(values, groups), attn_mask=mask, dropout_p=dropout,
                            scale=scale))
                    at += n
                start = at
            return outs[0] if len(outs) == 1 else torch.cat(outs, 2)

        if len(self.blocks) == 1:
            return run(q, k, v, self.blocks[0])
        return torch.cat([run(q[i:i + 1], k[i:i + 1], v[i:i + 1], row)
                          for i, row in enumerate(self.blocks)])


def causal_mask(attention_mask: torch.Tensor | None, q_len: int, kv_len: int,
                sliding_window: int | None, device: torch.device | str,
                position_ids: torch.Tensor | None = None) -> torch.Tensor | None:
    """A boolean [batch or 1, 1, q_len, kv_len] mask (True = attend) for a decoder.

    The queries are the last q_len of kv_len positions (earlier ones come from the cache).
    `attention_mask` is [batch, >= kv_len] of 1/0 (padding, left or right). With a sliding
    window a query sees only the `sliding_window` latest positions, itself included.
    `attention_mask` may instead be a PackedCausalMask (its layout, as is; no cache).
    Without an attention mask or cached positions, `position_ids` that restart inside a row
    mark packed sequences (padding-free training): the mask is then block-diagonal, so no
    sequence sees another: a PackedCausalMask, which `attend` runs per sequence (a dense
    block-diagonal mask when a sliding window also cuts).
    None when `attend(..., causal=True)` needs no mask: SDPA then takes its fastest path.
    """
    window_cuts = sliding_window is not None and kv_len > sliding_window
    if isinstance(attention_mask, PackedCausalMask):
        if not q_len == kv_len == attention_mask.length:
            raise ValueError(f"a PackedCausalMask of {attention_mask.length} positions for "
                             f"{q_len} queries over {kv_len} keys (it takes no cache)")
        if not window_cuts:
            return attention_mask
        pos = attention_mask.positions()  # within a sequence, as the position ids count
        return attention_mask.dense() & (pos[:, None, None, :]
                                         > pos[:, None, :, None] - sliding_window)
    segments = None
    if attention_mask is None and position_ids is not None and 1 < q_len == kv_len:
        segments = packed_segments(position_ids)
    if attention_mask is not None:
        if attention_mask.shape[-1] < kv_len:
            raise ValueError(f"attention_mask covers {attention_mask.shape[-1]} positions; the "
                             f"keys span {kv_len} (cached and new).")
        attention_mask = attention_mask[:, :kv_len]
        if bool(attention_mask.all()):
            attention_mask = None
    if attention_mask is None and segments is None and not window_cuts and q_len in (1, kv_len):
        return None
    if segments is not None and attention_mask is None and not window_cuts:
        return PackedCausalMask.from_segments(segments)
    q_pos = torch.arange(kv_len - q_len, kv_len, device=device)[:, None]
    kv_pos = torch.arange(kv_len, device=device)[None, :]
    mask = kv_pos <= q_pos
    rows_own_positions = window_cuts and attention_mask is not None and position_ids is not None
    if sliding_window is not None and not rows_own_positions:
        mask = mask & (kv_pos > q_pos - sliding_window)
    mask = mask[None, None]
    if rows_own_positions:
        # Rows at different positions (padding, or a continuous-batching cache whose rows end
        # at their own lengths): the window counts each row's own positions, the keys'
        # from the attention mask, the queries' from their position ids.
        key_pos = attention_mask.long().cumsum(-1) - 1
        mask = mask & (key_pos[:, None, None, :]
                       > position_ids[:, None, -q_len:, None] - sliding_window)
    if segments is not None:
        mask = mask & (segments[:, None, :, None] == segments[:, None, None, :])
    if attention_mask is not None:
        mask = mask & attention_mask[:, None, None, :].bool()
        # A query with nothing to see (left padding) attends everywhere instead: its output is
        # never used, and an all-masked softmax row would be NaN on some backends.
        mask = mask | ~mask.any(dim=-1, keepdim=True)
    return mask


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


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale, computed in float32 (Llama, Mistral, Qwen)."""

    def __init__(self, size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.variance_epsilon = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad):
            # the same values, keeping only x and the reciprocal RMS for the backward pass
            return rms_norm(x, self.weight, self.variance_epsilon)
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * x.to(dtype)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)): SwiGLU with silu (Llama, Mistral, Qwen)."""

    def __init__(self, hidden_size: int, intermediate_size: int, act: str, bias: bool = False
                 ) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=bias)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=bias)
        self.act_fn = activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_fn is F.silu and lean():
            # Training: keep gate and up only; the down projection's saved input (the
            # product) is remade from them in the backward pass. Adapted gate and up
            # projections run as one GEMM, their outputs side by side.
            joined = project(x, (self.gate_proj, self.up_proj))
            if joined is None:
                gate, up = self.gate_proj(x), self.up_proj(x)
                product = silu_gate(gate, up)
            else:
                gate, up = joined.chunk(2, -1)
                product = silu_gate(joined)
            remade_on_save(product, lambda: F.silu(gate).mul_(up))
            return self.down_proj(product)
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: position t predicts labels[t + 1]; -100 is ignored."""
    labels = F.pad(labels, (0, 1), value=-100)[..., 1:].to(logits.device)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                           ignore_index=-100)


def last_token_logits(logits: torch.Tensor, input_ids: torch.Tensor | None,
                      pad_token_id: int | None) -> torch.Tensor:
    """[batch, seq, labels] -> [batch, labels] at each row's rightmost non-pad token.

    As transformers: with no pad id (or only embeddings) the last position; a batch of more
    than one row then needs a pad id.
    """
    batch = logits.shape[0]
    if pad_token_id is None and batch != 1:
        raise ValueError("Cannot handle batch sizes > 1 if no padding token is defined.")
    if pad_token_id is None or input_ids is None:
        last = torch.full((batch,), logits.shape[1] - 1, device=logits.device)
    else:
        real = (input_ids != pad_token_id).to(logits.device, torch.int32)
        last = (torch.arange(input_ids.shape[-1], device=logits.device, dtype=torch.int32)
                * real).argmax(-1)
    return logits[torch.arange(batch, device=logits.device), last]


def keep_last(x: torch.Tensor, logits_to_keep: int | torch.Tensor) -> torch.Tensor:
    """The positions an LM head needs: all (0), the last n, or those a 1-D index names."""
    if isinstance(logits_to_keep, torch.Tensor):
        return x[:, logits_to_keep]
    return x[:, -logits_to_keep:] if logits_to_keep else x


# -- decoder plumbing: inputs, outputs and heads every causal LM shares -----------------------

class DecoderInputs(NamedTuple):
    x: torch.Tensor  # the new positions' embeddings, [batch, new, hidden]
    cache: KVCache | None
    position_ids: torch.Tensor  # [batch or 1, new]
    kv_len: int  # cached + new positions: what each layer's queries attend over
    output_hidden_states: bool
    output_attentions: bool


def decoder_inputs(model: nn.Module, embed: nn.Module, input_ids, inputs_embeds, position_ids,
                   cache: KVCache | None, use_cache: bool, output_hidden_states,
                   output_attentions) -> DecoderInputs:
    """Embeddings, the cache (a new one of exactly the needed length when use_cache asks for
    one), position ids (default: the positions after the cached ones) and output options."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("Pass exactly one of input_ids and inputs_embeds.")
    x = embed(input_ids) if inputs_embeds is None else inputs_embeds
    if cache is None and use_cache:
        cache = model.new_cache(x.shape[0], x.shape[1], dtype=x.dtype, device=x.device)
    past = cache.length if cache is not None else 0
    if position_ids is None:
        position_ids = torch.arange(past, past + x.shape[1], device=x.device)[None]
    c = model.config
    return DecoderInputs(
        x, cache, position_ids, past + x.shape[1],
        c.output_hidden_states if output_hidden_states is None else output_hidden_states,
        c.output_attentions if output_attentions is None else output_attentions)


def _finish(out, config, return_dict):
    return out if (config.return_dict if return_dict is None else return_dict) else out.to_tuple()


def decoder_output(config, return_dict, x: torch.Tensor, inputs: DecoderInputs,
                   hidden: list[torch.Tensor], attentions: list[torch.Tensor | None]):
    """The base model's output. `hidden` holds each layer's input; the hidden states end with
    the final norm's output, as transformers' do."""
    return _finish(BaseModelOutputWithPast(
        last_hidden_state=x, past_key_values=inputs.cache,
        hidden_states=(*hidden, x) if inputs.output_hidden_states else None,
        attentions=tuple(attentions) if inputs.output_attentions else None), config, return_dict)


def causal_lm_output(lm_head: nn.Module, config, base, labels,
                     logits_to_keep: int | torch.Tensor, return_dict):
    """The LM head's logits and, given labels, the next-token loss.

    With labels over all positions the head and the loss run fused, in chunks of tokens
    (`fused.lm_head_loss`): the same loss without the full log-softmax and its gradient in
    memory. The logits are then returned detached (no gradient flows through them: the
    loss carries it).
    """
    hidden = keep_last(base.last_hidden_state, logits_to_keep)
    if labels is not None and isinstance(logits_to_keep, int) and not logits_to_keep:
        loss, logits = lm_head_loss(lm_head, hidden, labels)
    else:
        logits = lm_head(hidden)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
    return _finish(CausalLMOutputWithPast(
        loss=loss, logits=logits, past_key_values=base.past_key_values,
        hidden_states=base.hidden_states, attentions=base.attentions), config, return_dict)


def sequence_classifier_output(score: nn.Module, config, base, input_ids, labels, return_dict):
    """Scores at each row's last real token (the rightmost non-pad one, as transformers)."""
    logits = last_token_logits(score(base.last_hidden_state), input_ids, config.pad_token_id)
    loss = classification_loss(logits, labels, config) if labels is not None else None
    return _finish(SequenceClassifierOutputWithPast(
        loss=loss, logits=logits, past_key_values=base.past_key_values,
        hidden_states=base.hidden_states, attentions=base.attentions), config, return_dict)


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
