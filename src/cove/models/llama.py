"""One decoder for Llama, Mistral, Qwen2, Qwen3 and SmolLM3, with transformers' module and
parameter names.

The families differ only in what their configs say: grouped-query attention
(num_key_value_heads), head_dim, biases on the projections, RMSNorm on each head's queries and
keys (Qwen3), sliding-window attention (Mistral, Qwen2/3 with use_sliding_window), layers without
rotary embeddings (SmolLM3's no_rope_layers: "NoPE" layers) and the rotary embedding's scaling
(rope_parameters, or rope_theta + rope_scaling in transformers 4.x configs).
Each family has its own config class (its defaults and model_type) and named subclasses, so a
saved config.json names the right architecture.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from cove import kernels
from cove.generation import GenerationMixin
from cove.models import decoding
from cove.models.cache import KVCache
from cove.models.configuration import PretrainedConfig
from cove.models.layers import (
    GatedMLP,
    RMSNorm,
    attend,
    causal_lm_output,
    causal_mask,
    decoder_inputs,
    decoder_output,
    lean,
    merge_heads,
    project,
    remade_on_save,
    run_block,
    sequence_classifier_output,
)
from cove.models.modeling import PreTrainedModel
from cove.models.rotary import DEFAULT_THETA, RotaryEmbedding, apply_rotary, standardize_rope

# -- configurations -------------------------------------------------------------------------

_COMMON = {  # the defaults the four families share in transformers
    "hidden_act": "silu", "initializer_range": 0.02, "rms_norm_eps": 1e-6, "use_cache": True,
    "tie_word_embeddings": False, "rope_parameters": None, "attention_dropout": 0.0,
}
_QWEN = {
    **_COMMON, "vocab_size": 151936, "hidden_size": 4096, "intermediate_size": 22016,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
    "max_position_embeddings": 32768, "use_sliding_window": False, "sliding_window": 4096,
    "max_window_layers": 28, "layer_types": None, "pad_token_id": None, "bos_token_id": None,
    "eos_token_id": None,
}


class DecoderConfig(PretrainedConfig):
    """What the decoder reads, normalised as transformers 5.x does it (and writes it back)."""

    # Traits a family fixes in code rather than in config.json:
    qk_norm: ClassVar[bool] = False  # Qwen3: RMSNorm over each head's queries and keys
    qkv_bias: ClassVar[bool] = False  # Qwen2: q/k/v biases (but none on o_proj)
    default_theta: ClassVar[float] = DEFAULT_THETA  # the rotary base when config.json has none

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if "head_dim" in self.defaults and self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if "max_window_layers" in self.defaults:
            # Qwen: the window is off unless asked for, and then only from max_window_layers on.
            if not self.use_sliding_window:
                self.sliding_window = None
            if self.layer_types is None:
                self.layer_types = [
                    "sliding_attention" if self.sliding_window is not None
                    and i >= self.max_window_layers else "full_attention"
                    for i in range(self.num_hidden_layers)]
        if "no_rope_layers" in self.defaults:
            self._set_nope_layers()
        if getattr(self, "rope_theta", None) is None:
            self.rope_theta = self.default_theta  # a theta in rope_parameters still wins
        standardize_rope(self)

    def _set_nope_layers(self) -> None:
        # SmolLM3: no_rope_layers[i] == 0 makes layer i a NoPE layer (no rotary embedding); by
        # default every no_rope_layer_interval-th one. With use_sliding_window, only NoPE
        # layers get the window.
        n = self.num_hidden_layers
        if self.no_rope_layers is None:
            self.no_rope_layers = [int((i + 1) % self.no_rope_layer_interval != 0)
                                   for i in range(n)]
        if len(self.no_rope_layers) < n:
            raise ValueError(f"no_rope_layers has {len(self.no_rope_layers)} entries but the "
                             f"model has {n} layers (num_hidden_layers): give one per layer.")
        if self.layer_types is None:
            windowed = self.use_sliding_window and self.sliding_window is not None
            self.layer_types = ["sliding_attention" if windowed and not self.no_rope_layers[i]
                                else "full_attention" for i in range(n)]

    def rotary_layers(self) -> list[bool]:
        """Whether each layer applies the rotary embedding (False for SmolLM3's NoPE layers)."""
        flags = self.no_rope_layers if "no_rope_layers" in self.defaults else None
        return [True if flags is None else bool(flags[i]) for i in range(self.num_hidden_layers)]

    def sliding_windows(self) -> list[int | None]:
        """Each layer's attention window; None for full attention."""
        window = getattr(self, "sliding_window", None)
        types = getattr(self, "layer_types", None) or ["sliding_attention"] * self.num_hidden_layers
        return [window if t == "sliding_attention" else None for t in types]


class LlamaConfig(DecoderConfig):
    model_type = "llama"
    defaults = {
        **_COMMON, "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": None,
        "max_position_embeddings": 2048, "pad_token_id": None, "bos_token_id": 1,
        "eos_token_id": 2, "pretraining_tp": 1, "attention_bias": False, "mlp_bias": False,
        "head_dim": None,
    }


class MistralConfig(DecoderConfig):
    model_type = "mistral"
    defaults = {
        **_COMMON, "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "head_dim": None, "max_position_embeddings": 4096 * 32, "pad_token_id": None,
        "bos_token_id": 1, "eos_token_id": 2, "sliding_window": 4096,
    }

    def sliding_windows(self) -> list[int | None]:
        # transformers' Mistral applies its window to every layer, whatever layer_types says.
        return [getattr(self, "sliding_window", None)] * self.num_hidden_layers


class Qwen2Config(DecoderConfig):
    model_type = "qwen2"
    defaults = _QWEN
    qkv_bias = True


class Qwen3Config(DecoderConfig):
    model_type = "qwen3"
    defaults = {**_QWEN, "head_dim": 128, "attention_bias": False}
    qk_norm = True


class SmolLM3Config(DecoderConfig):
    model_type = "smollm3"
    defaults = {
        **_COMMON, "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 11008,
        "num_hidden_layers": 36, "num_attention_heads": 16, "num_key_value_heads": 4,
        "max_position_embeddings": 32768, "pad_token_id": 128004, "bos_token_id": 128000,
        "eos_token_id": 128001, "use_sliding_window": False, "sliding_window": None,
        "no_rope_layers": None, "no_rope_layer_interval": 4, "layer_types": None,
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": True,
    }
    default_theta = 2_000_000.0


def head_dim(config: DecoderConfig) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


# -- the decoder ----------------------------------------------------------------------------

class LlamaAttention(nn.Module):
    def __init__(self, config: DecoderConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.use_rope = config.rotary_layers()[layer_idx]
        self.head_dim = head_dim(config)
        self.dropout_p = config.attention_dropout
        bias = getattr(config, "attention_bias", False)
        width, heads = config.hidden_size, config.num_attention_heads
        kv_width = config.num_key_value_heads * self.head_dim
        self.q_proj = nn.Linear(width, heads * self.head_dim, bias=bias or config.qkv_bias)
        self.k_proj = nn.Linear(width, kv_width, bias=bias or config.qkv_bias)
        self.v_proj = nn.Linear(width, kv_width, bias=bias or config.qkv_bias)
        self.o_proj = nn.Linear(heads * self.head_dim, width, bias=bias)
        if config.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None, cache: KVCache | None, need_weights: bool
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        b, s, _ = x.shape
        projections = (self.q_proj, self.k_proj, self.v_proj)
        # training with adapters: the three projections as one GEMM, outputs side by side
        joined = project(x, projections) if lean() else None
        q, k, v = (p(x) for p in projections) if joined is None else \
            joined.split([p.out_features for p in projections], -1)
        q = q.view(b, s, -1, self.head_dim)
        k = k.view(b, s, -1, self.head_dim)
        v = v.view(b, s, -1, self.head_dim).transpose(1, 2)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        if self.use_rope:
            q, k = apply_rotary(q, k, *rope)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        out, weights = attend(q, k, v, mask, self.dropout_p if self.training else 0.0,
                              need_weights, scale=self.head_dim ** -0.5, causal=True)
        merged = merge_heads(out)
        # a copy of attention's output, which attention keeps: remade for o_proj's backward
        remade_on_save(merged, lambda: merge_heads(out))
        return self.o_proj(merged), weights


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: DecoderConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config, layer_idx)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, config.hidden_act,
                            bias=getattr(config, "mlp_bias", False))
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, x, rope, mask, cache, need_weights):
        attn, weights = self.self_attn(self.input_layernorm(x), rope, mask, cache, need_weights)
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), weights


class LlamaPreTrainedModel(PreTrainedModel):
    config_class = LlamaConfig
    base_model_prefix = "model"
    # Llama 2 era .bin checkpoints saved each layer's rotary frequencies: rebuilt here.
    ignore_unexpected = [r"position_ids$", r"rotary_emb\.inv_freq$"]

    def new_cache(self, batch_size: int, max_length: int, dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None) -> KVCache:
        """An empty KV cache for `batch_size` rows of up to `max_length` positions."""
        c = self.config
        return KVCache(c.num_hidden_layers, batch_size, c.num_key_value_heads, head_dim(c),
                       max_length, dtype=dtype or self.dtype, device=device or self.device)


class LlamaModel(LlamaPreTrainedModel):
    def __init__(self, config: DecoderConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size,
                                         padding_idx=config.pad_token_id)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, i)
                                    for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.rope_parameters, head_dim(config),
                                          config.max_position_embeddings)
        self.sliding_windows = config.sliding_windows()
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def forward(self, input_ids=None, attention_mask=None, position_ids=None,
                past_key_values: KVCache | None = None, use_cache: bool = False,
                inputs_embeds=None, output_hidden_states=None, output_attentions=None,
                return_dict=None):
        inputs = decoder_inputs(self, self.embed_tokens, input_ids, inputs_embeds, position_ids,
                                past_key_values, use_cache, output_hidden_states,
                                output_attentions)
        x = inputs.x
        rope = self.rotary_emb(inputs.position_ids, x.dtype)
        masks = {w: causal_mask(attention_mask, x.shape[1], inputs.kv_len, w, x.device,
                                 position_ids)
                 for w in set(self.sliding_windows)}
        hidden, attentions = [], []
        for layer, window in zip(self.layers, self.sliding_windows, strict=True):
            if inputs.output_hidden_states:
                hidden.append(x)
            x, weights = run_block(layer, x, rope, masks[window], inputs.cache,
                                   inputs.output_attentions)
            attentions.append(weights)
        return decoder_output(self.config, return_dict, self.norm(x), inputs, hidden, attentions)


class LlamaForCausalLM(GenerationMixin, LlamaPreTrainedModel):
    tied_weights = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: DecoderConfig) -> None:
        super().__init__(config)
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()
        # Forward calls of 1..8 rows through Cove's GEMV kernels (the tied head included):
        # generate's steps take the whole-step kernel (fast_decoder) instead; this serves the
        # other one-token forwards (the serving engine's batches, the cases fast_decoder
        # leaves to the module forward).
        kernels.use_for_linears(self)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def fast_decoder(self, positions: torch.Tensor, forward_kwargs: dict[str, Any]
                     ) -> decoding.FastDecoder | None:
        """generate's decoding steps in one kernel call each over positions [rows, length]
        (cove.models.decoding), or None where they would differ from this forward."""
        return decoding.fast_decoder(self, positions, forward_kwargs)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None,
                past_key_values: KVCache | None = None, use_cache: bool = False,
                inputs_embeds=None, labels=None, output_hidden_states=None,
                output_attentions=None, return_dict=None, logits_to_keep: int = 0):
        base = self.model(input_ids, attention_mask, position_ids, past_key_values, use_cache,
                          inputs_embeds, output_hidden_states, output_attentions,
                          return_dict=True)
        return causal_lm_output(self.lm_head, self.config, base, labels, logits_to_keep,
                                return_dict)


class LlamaForSequenceClassification(LlamaPreTrainedModel):
    def __init__(self, config: DecoderConfig) -> None:
        super().__init__(config)
        self.model = LlamaModel(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None,
                past_key_values: KVCache | None = None, use_cache: bool = False,
                inputs_embeds=None, labels=None, output_hidden_states=None,
                output_attentions=None, return_dict=None):
        base = self.model(input_ids, attention_mask, position_ids, past_key_values, use_cache,
                          inputs_embeds, output_hidden_states, output_attentions,
                          return_dict=True)
        return sequence_classifier_output(self.score, self.config, base, input_ids, labels,
                                          return_dict)


# The other families: the same modules, named for their own config class and checkpoints.
class MistralModel(LlamaModel):
    config_class = MistralConfig


class MistralForCausalLM(LlamaForCausalLM):
    config_class = MistralConfig


class MistralForSequenceClassification(LlamaForSequenceClassification):
    config_class = MistralConfig


class Qwen2Model(LlamaModel):
    config_class = Qwen2Config


class Qwen2ForCausalLM(LlamaForCausalLM):
    config_class = Qwen2Config


class Qwen2ForSequenceClassification(LlamaForSequenceClassification):
    config_class = Qwen2Config


class Qwen3Model(LlamaModel):
    config_class = Qwen3Config


class Qwen3ForCausalLM(LlamaForCausalLM):
    config_class = Qwen3Config


class Qwen3ForSequenceClassification(LlamaForSequenceClassification):
    config_class = Qwen3Config


class SmolLM3Model(LlamaModel):
    config_class = SmolLM3Config


class SmolLM3ForCausalLM(LlamaForCausalLM):
    config_class = SmolLM3Config


class SmolLM3ForSequenceClassification(LlamaForSequenceClassification):
    config_class = SmolLM3Config
