"""Decoding steps of Llama-family causal LMs in one C++ call per token.

`generate` feeds a prompt through the model's own forward (torch's ops), then one token per
row per step. For those steps a Llama, Mistral, Qwen2/3 or SmolLM3 model on the CPU hands
its layers to cove.kernels' Decoder (decode.cpp): the norms, projections, rotary embedding,
cache writes, attention, MLP and LM head of all layers run in one call, on the model's own
weight tensors (float32, bfloat16, or the weight-only int8/int4 and GGUF layers). A float32
model's step computes in float32; a bfloat16 model's rounds each value to bfloat16 where its
module forward does (decode.cpp's top says where), so its greedy answers are the module
forward's (whose one-query attention in bfloat16 is the step's own, computed in float32, not
SDPA's). Before the first step the model's weights move onto 2 MiB pages (cove.models.pages). A
torch forward of one token issues thousands of small
ops (5,484 for SmolLM2-135M); this issues a handful.

`KernelSteps` is that step over one block of every layer's keys and values, [layers, 2, slots,
kv_heads, max_length, head_dim] in the model's dtype, each row of a step in a slot of its own
at a length of its own: it writes the row's new key and value at that length and attends over
the slot's positions up to it. Two caches hand it their block:
- generate's `StaticKVCache` (a KVCache), allocated for the whole generation: row m in slot m,
  every row at one length, left padding masked by the attention mask (`FastDecoder`);
- the serving engine's `SlotKVCache`: each running request in its own slot at its own length,
  no mask needed (`slot_steps`; the engine steps 8 rows a call).
The prompts' forwards (the module's) write into the same block through the caches' `update`.

`fast_decoder` and `slot_steps` say None, and the caller keeps the module forward, when the
step would not be the module's: kernels off (COVE_KERNELS=0) or not built, not a Llama-family
model, not on the CPU, gradients on (generate), attentions or hidden states asked for, more
than 8 rows (generate), a dtype other than float32 or bfloat16, hooks or adapters (LoRA's
layer types) on the modules, a layer type other than Llama's, a sliding window that would
cut, dynamic rope past the trained length, dropout in training mode.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from cove import kernels
from cove.models.cache import KVCache
from cove.models.outputs import CausalLMOutputWithPast
from cove.models.pages import place_on_huge_pages

log = logging.getLogger("cove.models")

_DTYPES = (torch.float32, torch.bfloat16)


class StaticKVCache(KVCache):
    """A KVCache whose one block of every layer's keys and values the kernels' decoding steps
    write in place.

    `storage` is that block, [layers, 2, batch, kv_heads, max_length, head_dim]. The prompt's
    forward fills it through `update`; each decoding step writes slot `length` of every layer,
    then `advance`s. Its row count is fixed: the kernels' Decoder steps over it as built.
    """

    @property
    def storage(self) -> torch.Tensor:
        return self._block

    def advance(self) -> None:
        """Count the slot a decoding step wrote in every layer."""
        end = self.lengths[0] + 1
        if end > self.max_length:
            raise ValueError(f"The KV cache holds {self.max_length} positions; "
                             f"{end} were asked for. Allocate a larger cache.")
        self.lengths = [end] * len(self.lengths)

    def reorder(self, index: torch.Tensor) -> None:
        """Keep the batch rows `index` names, in that order (beam search)."""
        if index.numel() != self._block.shape[2]:
            raise ValueError(f"reorder: {index.numel()} rows for a cache of "
                             f"{self._block.shape[2]}; a StaticKVCache keeps its row count.")
        super().reorder(index)


def _plain_forward(module: nn.Module) -> bool:
    """Whether the module runs its class's own forward (kernels.use_for_linears' routing
    computes the same product): no instance override from anyone else."""
    own = module.__dict__.get("forward")
    return own is None or getattr(own, "__func__", None) is kernels._linear_forward


def _linear(ext: Any, module: nn.Module) -> Any | None:
    """The kernels' view of a linear layer (its own tensors), or None for another kind."""
    from cove.models.weight_only import Int4WeightOnlyLinear, Int8WeightOnlyLinear

    bias = None if module.bias is None else module.bias.detach()
    if type(module) is nn.Linear and _plain_forward(module):
        w = module.weight.detach()
        if w.dtype not in _DTYPES or not w.is_contiguous():
            return None
        return ext.Linear(0 if w.dtype == torch.float32 else 1, w, bias=bias)
    if type(module) is Int8WeightOnlyLinear:
        return ext.Linear(2, module.qweight, module.scale, bias=bias)
    if type(module) is Int4WeightOnlyLinear and module.cove_layout:
        return ext.Linear(3, module.qweight, module.scale, module.zero, module.group_size,
                          bias=bias)
    return None


def _why_not(model: nn.Module, max_length: int, max_position: int,
             forward_kwargs: dict[str, Any]) -> str | None:
    """Why the kernels' step over `max_length` cached positions would not compute the module's
    (None: it would)."""
    from cove.models.layers import GatedMLP, RMSNorm
    from cove.models.llama import LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM

    if kernels.load() is None:
        return "cove.kernels are off or not built"
    if not isinstance(model, LlamaForCausalLM):
        return f"{type(model).__name__} is not a Llama-family model"
    config = model.config
    extra = set(forward_kwargs) - {"logits_to_keep"}
    if extra:
        return f"forward arguments {sorted(extra)}"
    if config.output_attentions or config.output_hidden_states:
        return "the config asks for attentions or hidden states"
    if model.dtype not in _DTYPES:
        return f"dtype {model.dtype}"
    if any(p.device.type != "cpu" for p in model.parameters()):
        return "parameters off the CPU"
    if model.training and config.attention_dropout:
        return "attention dropout in training mode"
    if any(m._forward_hooks or m._forward_pre_hooks for m in model.modules()):
        return "forward hooks on the modules"
    if nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks:
        return "global forward hooks"
    if any(w is not None and max_length > w for w in model.model.sliding_windows):
        return "a sliding window that cuts"
    rope = model.model.rotary_emb
    if rope.params["rope_type"] == "dynamic" and max_position + 1 > rope.max_position_embeddings:
        return "dynamic rope past the trained length"
    for layer in model.model.layers:
        if type(layer) is not LlamaDecoderLayer or type(layer.self_attn) is not LlamaAttention \
                or type(layer.mlp) is not GatedMLP or layer.mlp.act_fn is not F.silu:
            return f"layer type {type(layer).__name__}"
        norms = [layer.input_layernorm, layer.post_attention_layernorm]
        if hasattr(layer.self_attn, "q_norm"):
            norms += [layer.self_attn.q_norm, layer.self_attn.k_norm]
        if any(type(n) is not RMSNorm or n.variance_epsilon != config.rms_norm_eps
               for n in norms):
            return "norm type"
    if type(model.model.norm) is not RMSNorm:
        return "norm type"
    return None


class KernelSteps:
    """A model's one-token steps through the kernels' Decoder, over a cache block [layers, 2,
    slots, kv_heads, max_length, head_dim]; rotary cos/sin tables cover positions
    0..max_position."""

    def __init__(self, model: nn.Module, ext: Any, max_position: int) -> None:
        # the weights the steps stream, on 2 MiB pages (once per model; see cove.models.pages)
        place_on_huge_pages(model)
        c = model.config
        base = model.model
        attn = base.layers[0].self_attn
        self.embed = base.embed_tokens
        # in the model's dtype, as its forward rounds them; held as float32 values
        cos, sin = base.rotary_emb(torch.arange(max_position + 1)[None], model.dtype)
        self.cos, self.sin = cos[0].float().contiguous(), sin[0].float().contiguous()
        self.decoder = ext.Decoder(c.num_attention_heads, c.num_key_value_heads, attn.head_dim,
                                   c.rms_norm_eps, _norm(base.norm), _must(ext, model.lm_head))
        for layer in base.layers:
            a, mlp = layer.self_attn, layer.mlp
            qk = (_norm(a.q_norm), _norm(a.k_norm)) if hasattr(a, "q_norm") else (None, None)
            self.decoder.add_layer(
                _norm(layer.input_layernorm), _norm(layer.post_attention_layernorm), *qk,
                a.use_rope, *(_must(ext, m) for m in (a.q_proj, a.k_proj, a.v_proj, a.o_proj,
                                                      mlp.gate_proj, mlp.up_proj,
                                                      mlp.down_proj)))

    def __call__(self, ids: torch.Tensor, block: torch.Tensor, slots: torch.Tensor,
                 lengths: torch.Tensor, positions: torch.Tensor,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """One new token for each of 1..8 rows: `ids`, `slots` (distinct), `lengths` (each
        slot's filled positions, where the new key and value go) and `positions` (rotary), all
        [rows]; `attention_mask` [rows, > max length] of 1/0 over the slots' positions (None:
        each row's 0..length count). Returns the next token's logits [rows, vocab] in the
        model's dtype."""
        return self.decoder.step(self.embed(ids), block, slots, lengths,
                                 positions.long().contiguous(), self.cos, self.sin,
                                 attention_mask)


class FastDecoder:
    """generate's decoding steps through `KernelSteps`, over a StaticKVCache of `rows` rows and
    `max_length` positions (row m in slot m, every row at the cache's length)."""

    def __init__(self, model: nn.Module, ext: Any, rows: int, max_length: int,
                 max_position: int) -> None:
        c = model.config
        self.steps = KernelSteps(model, ext, max_position)
        self.cache = StaticKVCache(c.num_hidden_layers, rows, c.num_key_value_heads,
                                   model.model.layers[0].self_attn.head_dim, max_length,
                                   dtype=model.dtype)
        self._slots = torch.arange(rows)
        self._lengths = torch.zeros(rows, dtype=torch.long)

    def step(self, ids: torch.Tensor, positions: torch.Tensor,
             attention_mask: torch.Tensor | None) -> CausalLMOutputWithPast:
        """One new token per row: `ids` and `positions` [rows], `attention_mask` [rows, >=
        positions cached + 1] of 1/0 (None: every slot counts). Returns the logits [rows, 1,
        vocab] of the next token, in the model's dtype."""
        self._lengths.fill_(self.cache.length)
        logits = self.steps(ids, self.cache.storage, self._slots, self._lengths, positions,
                            attention_mask)
        self.cache.advance()
        return CausalLMOutputWithPast(logits=logits[:, None], past_key_values=self.cache)


class _Unsupported(Exception):
    pass


def _must(ext: Any, module: nn.Module) -> Any:
    found = _linear(ext, module)
    if found is None:
        raise _Unsupported(f"layer {type(module).__name__}")
    return found


def _norm(norm: nn.Module) -> torch.Tensor:
    return norm.weight.detach().float().contiguous()


def fast_decoder(model: nn.Module, positions: torch.Tensor,
                 forward_kwargs: dict[str, Any]) -> FastDecoder | None:
    """Kernel decoding steps for `generate` over positions [rows, max_length] (every
    position the generation will feed), or None where they would not compute the module's
    forward (the reason is logged at debug level)."""
    rows, max_length = positions.shape
    max_position = int(positions.max()) if positions.numel() else 0
    if torch.is_grad_enabled():
        reason = "gradients are on"
    elif not 1 <= rows <= kernels.MAX_ROWS:
        reason = f"{rows} rows (the kernels take 1 to {kernels.MAX_ROWS})"
    else:
        reason = _why_not(model, max_length, max_position, forward_kwargs)
    if reason is None:
        try:
            return FastDecoder(model, kernels.load(), rows, max_length, max_position)
        except _Unsupported as e:
            reason = str(e)
    log.debug("decoding through the module forward: %s", reason)
    return None


def slot_steps(model: nn.Module, slot_length: int) -> KernelSteps | None:
    """Kernel decoding steps for the serving engine, over a SlotKVCache whose slots hold
    `slot_length` positions (a sequence's position is its index in its slot), or None where
    they would not compute the module's forward (the reason is logged at debug level). The
    engine runs its steps without gradients (inference mode), whatever the caller's mode."""
    reason = _why_not(model, slot_length, slot_length - 1, {})
    if reason is None:
        try:
            return KernelSteps(model, kernels.load(), slot_length - 1)
        except _Unsupported as e:
            reason = str(e)
    log.debug("the serving engine decodes through the module forward: %s", reason)
    return None
