"""What encoder-decoder families share: their outputs, the decoder's cache (self-attention
keys and values appended per step, cross-attention keys and values computed once), and the
cross-attention of several decoder rows over one encoder row (beams, returned sequences)."""

from __future__ import annotations

import weakref

import torch
from torch import nn

from cove.models.cache import KVCache
from cove.models.outputs import ModelOutput, _WithCache


class Seq2SeqModelOutput(_WithCache):
    """last_hidden_state (the decoder's), past_key_values, decoder_hidden_states,
    decoder_attentions, cross_attentions, encoder_last_hidden_state, encoder_hidden_states,
    encoder_attentions."""


class Seq2SeqLMOutput(_WithCache):
    """loss, logits, past_key_values, decoder_hidden_states, decoder_attentions,
    cross_attentions, encoder_last_hidden_state, encoder_hidden_states, encoder_attentions."""


class Seq2SeqSequenceClassifierOutput(ModelOutput):
    pass


class Seq2SeqQuestionAnsweringModelOutput(ModelOutput):
    pass


class BaseModelOutputWithPastAndCrossAttentions(_WithCache):
    pass


def as_encoder_output(encoder_outputs) -> ModelOutput:
    """An encoder's output as a ModelOutput (a tuple's items are last_hidden_state,
    hidden_states, attentions, as transformers reads them)."""
    if isinstance(encoder_outputs, ModelOutput) and "last_hidden_state" in encoder_outputs:
        return encoder_outputs
    if isinstance(encoder_outputs, dict):
        return ModelOutput(**encoder_outputs)
    items = list(encoder_outputs) + [None, None]
    return ModelOutput(last_hidden_state=items[0], hidden_states=items[1],
                       attentions=items[2])


def shared_rows(decoder_rows: int, encoder_rows: int) -> int:
    """How many consecutive decoder rows share each encoder row: generate runs the encoder and
    the cross-attention keys and values once per prompt, not once per beam."""
    if encoder_rows <= 0 or decoder_rows % encoder_rows:
        raise ValueError(f"{decoder_rows} decoder rows cannot share {encoder_rows} encoder rows: "
                         "pass one encoder row per decoder row, or a whole number of decoder "
                         "rows (consecutive: a prompt's beams) per encoder row.")
    return decoder_rows // encoder_rows


def fold_queries(q: torch.Tensor, group: int, heads: int) -> torch.Tensor:
    """Projected queries [rows, n, heads * dim] -> [rows / group, heads, group * n, dim]: the
    `group` rows that share an encoder row become more query positions of that row, so the
    cross-attention reads its keys and values once (a view, no copy)."""
    rows, n, width = q.shape
    return q.view(rows // group, group * n, heads, width // heads).transpose(1, 2)


def unfold_rows(x: torch.Tensor, group: int) -> torch.Tensor:
    """Attention weights [rows / group, heads, group * n, k] -> [rows, heads, n, k]."""
    b, heads, gn, k = x.shape
    return x.view(b, heads, group, gn // group, k).transpose(1, 2).reshape(
        b * group, heads, gn // group, k)


# Decoding rows up to which the LM head is taken as weight @ x^T; from _ONEDNN_ROWS on, through
# oneDNN (below).
_FEW_ROWS = 7
_ONEDNN_ROWS = 8
# Each LM head's weight, transposed, for single-row decoding, with the weight's state it was
# made from: [width, vocab] contiguous.
_COLUMNS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _columns(head: nn.Linear) -> torch.Tensor:
    """head.weight.t(), contiguous: made on the first single-row decoding step and kept with
    the head (as much memory again as the weight) until the weight changes."""
    w = head.weight
    state = (w.data_ptr(), w._version, w.dtype, w.device, w.shape)
    found = _COLUMNS.get(head)
    if found is None or found[0] != state:
        found = _COLUMNS[head] = (state, w.detach().t().contiguous())
    return found[1]


# torch's oneDNN linear (the op torch's compiler uses for CPU linears); absent from builds
# without oneDNN, where decoding keeps torch's BLAS.
_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def step_linear(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """module(x), where x [rows, n, in] goes into a decoder layer's linear.

    In a decoding step of 8 rows or more (one position per row, no gradients, a plain float32
    nn.Linear on the CPU without hooks) the product goes through oneDNN's GEMM on the weight as
    it is: with two threads about 1.1x CPU time per 4-beam batch-8 t5-small generate here
    (1.6-2x on the [32, 512] x [512, 512 or 2048] products alone), with one thread the same as
    torch's BLAS. Values agree with module(x) to float32 rounding.
    """
    if (_ONEDNN and x.dim() == 3 and x.shape[1] == 1 and x.shape[0] >= _ONEDNN_ROWS
            and type(module) is nn.Linear and not torch.is_grad_enabled()
            and x.device.type == "cpu" and x.dtype == module.weight.dtype == torch.float32
            and not module._forward_hooks and not module._forward_pre_hooks):
        return torch.ops.mkldnn._linear_pointwise(x, module.weight, module.bias, "none", [], "")
    return module(x)


def lm_logits(head: nn.Module, x: torch.Tensor, cache: EncoderDecoderCache | None
              ) -> torch.Tensor:
    """head(x): the decoder's states [rows, n, width] to vocabulary logits.

    In a decoding step (one position per row, a cache, no gradients, a plain bias-free
    float32 nn.Linear head on the CPU without hooks) the same dot products are taken another
    way: the [vocab, width] weight (tens of MB, read once per step, most of a step's memory
    traffic) streams faster through weight @ x^T than through x @ weight^T for a few rows
    (about 1.5-2x for 2-7 rows, measured with torch's CPU BLAS), for one row faster still as
    x @ (a transposed copy of the weight, kept with the head: about 2x), and for 8 rows and
    more (a batch's beams) through oneDNN's GEMM on the weight as it is (no copy kept):
    1.2-1.7x the blocked BLAS product this replaced at 8-64 rows, about 2x F.linear, measured
    on AMD EPYC (Zen 4), where torch's MKL GEMM takes a slower path. Values agree with head(x)
    to float32 rounding (a different summation order).
    """
    rows = x.shape[0]
    if (cache is None or x.shape[1] != 1 or torch.is_grad_enabled()
            or type(head) is not nn.Linear or head.bias is not None or head._forward_hooks
            or head._forward_pre_hooks):
        return head(x)
    w = head.weight
    if rows >= _ONEDNN_ROWS:
        if not (_ONEDNN and x.device.type == "cpu" and x.dtype == w.dtype == torch.float32):
            return head(x)
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), w, None, "none", [], "")
    states = x.reshape(rows, x.shape[2])
    if rows == 1:
        logits = states @ _columns(head)
    else:
        logits = torch.mm(w, states.t()).t().contiguous()
    return logits.unsqueeze(1)


class EncoderDecoderCache:
    """The decoder's cache: a preallocated KVCache for self-attention, plus each layer's
    cross-attention keys and values, computed from the encoder's output on the first step and
    reused after (transformers' `EncoderDecoderCache`, `is_updated`)."""

    def __init__(self, self_attention_cache: KVCache) -> None:
        self.self_attention_cache = self_attention_cache
        self.cross_attention_cache: list[tuple[torch.Tensor, torch.Tensor] | None] = [
            None] * len(self_attention_cache.lengths)

    @property
    def length(self) -> int:
        return self.self_attention_cache.length

    def get_seq_length(self, layer: int = 0) -> int:
        return self.self_attention_cache.get_seq_length(layer)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.self_attention_cache.update(layer, k, v)

    def cross(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self.cross_attention_cache[layer]

    def set_cross(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        self.cross_attention_cache[layer] = (k, v)

    def reorder(self, index: torch.Tensor) -> None:
        """Beam search: row i takes row index[i]'s content. Cross-attention keys and values
        held once per prompt (for several rows) stay: rows may then only move among the rows
        of their own prompt."""
        self.self_attention_cache.reorder(index)
        index = index.reshape(-1).long()
        for layer, kv in enumerate(self.cross_attention_cache):
            if kv is None:
                continue
            i = index.to(kv[0].device)
            if kv[0].shape[0] == i.numel():
                self.cross_attention_cache[layer] = (kv[0].index_select(0, i),
                                                     kv[1].index_select(0, i))
                continue
            group = shared_rows(i.numel(), kv[0].shape[0])
            own = torch.arange(i.numel(), device=i.device) // group
            if not torch.equal(i // group, own):
                raise ValueError("reorder: these cross-attention keys and values are shared "
                                 f"by groups of {group} rows (a prompt's beams); rows can only "
                                 "move within their group.")
