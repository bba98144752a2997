"""T5 (v1.0, and v1.1 / Flan-T5: gated-GELU feed-forward, untied LM head), with transformers'
module and parameter names.

An encoder and a decoder of pre-norm blocks (T5's RMS norm: a scale, no bias, no mean), one
embedding matrix `shared` for both, and no position embeddings: the first block of each stack
holds a learned bias per head for each relative-position bucket (bidirectional buckets in the
encoder, causal ones in the decoder), which every block then adds to its attention scores.
Attention scores are not scaled (T5 folds 1/sqrt(d_kv) into its initialisation). With tied
embeddings (v1.0) the decoder's output is scaled by d_model**-0.5 before the LM head.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cove.generation import GenerationMixin
from cove.models.cache import KVCache
from cove.models.configuration import PretrainedConfig
from cove.models.layers import RMSNorm, activation, merge_heads, run_block
from cove.models.modeling import PreTrainedModel
from cove.models.outputs import BaseModelOutput
from cove.models.seq2seq import (
    BaseModelOutputWithPastAndCrossAttentions,
    EncoderDecoderCache,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
    as_encoder_output,
    fold_queries,
    lm_logits,
    shared_rows,
    step_linear,
    unfold_rows,
)


class T5Config(PretrainedConfig):
    model_type = "t5"
    attribute_map = {"hidden_size": "d_model", "num_attention_heads": "num_heads",
                     "num_hidden_layers": "num_layers", "head_dim": "d_kv"}
    defaults = {
        "vocab_size": 32128, "d_model": 512, "d_kv": 64, "d_ff": 2048, "num_layers": 6,
        "num_decoder_layers": None, "num_heads": 8, "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128, "dropout_rate": 0.1,
        "layer_norm_epsilon": 1e-6, "initializer_factor": 1.0, "feed_forward_proj": "relu",
        "is_encoder_decoder": True, "use_cache": True, "pad_token_id": 0, "eos_token_id": 1,
        "classifier_dropout": 0.0,
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers
        parts = self.feed_forward_proj.split("-")
        if len(parts) > 2 or (len(parts) == 2 and parts[0] != "gated"):
            raise ValueError(f"feed_forward_proj {self.feed_forward_proj!r} is not valid: use "
                             "'gated-{ACT_FN}' or '{ACT_FN}', e.g. 'gated-gelu' or 'relu'.")
        self.is_gated_act = parts[0] == "gated"
        self.dense_act_fn = "gelu_new" if self.feed_forward_proj == "gated-gelu" else parts[-1]

    @property
    def scales_decoder_output(self) -> bool:
        """v1.0 (tied head): the decoder's output times d_model**-0.5 before the LM head.
        transformers 5.x writes `scale_decoder_outputs`; older configs only say
        tie_word_embeddings."""
        scale = self.__dict__.get("scale_decoder_outputs")
        return bool(self.tie_word_embeddings if scale is None else scale)


def relative_position_bucket(relative_position: torch.Tensor, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> torch.Tensor:
    """Mesh TensorFlow's buckets: exact for small distances, logarithmic up to max_distance
    (farther ones share the last bucket); in the bidirectional case half the buckets are for
    keys after the query. relative_position = key position - query position."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        buckets += (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = -torch.clamp(relative_position, max=0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    large = max_exact + (torch.log(distance.float() / max_exact)
                         / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).long()
    large = torch.clamp(large, max=num_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


def _drop(dropout: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    """`dropout(x)`, without a module call in eval mode: a decoding step would make ~50."""
    return dropout(x) if dropout.training else x


class T5Attention(nn.Module):
    def __init__(self, config: T5Config, is_decoder: bool, has_relative_attention_bias: bool,
                 layer_idx: int) -> None:
        super().__init__()
        self.is_decoder = is_decoder
        self.has_relative_attention_bias = has_relative_attention_bias
        self.layer_idx = layer_idx
        self.n_heads, self.d_kv = config.num_heads, config.d_kv
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance
        self.dropout_p = config.dropout_rate
        inner = self.n_heads * self.d_kv
        self.q = nn.Linear(config.d_model, inner, bias=False)
        self.k = nn.Linear(config.d_model, inner, bias=False)
        self.v = nn.Linear(config.d_model, inner, bias=False)
        self.o = nn.Linear(inner, config.d_model, bias=False)
        if has_relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(self.num_buckets, self.n_heads)

    def compute_bias(self, query_length: int, key_length: int, past: int = 0) -> torch.Tensor:
        """[1, heads, query_length, key_length]; queries sit at positions past, past + 1, ..."""
        device = self.relative_attention_bias.weight.device
        context = torch.arange(query_length, device=device)[:, None] + past
        memory = torch.arange(key_length, device=device)[None, :]
        bucket = relative_position_bucket(memory - context, not self.is_decoder,
                                          self.num_buckets, self.max_distance)
        return self.relative_attention_bias(bucket).permute(2, 0, 1).unsqueeze(0)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        return x.view(b, s, self.n_heads, self.d_kv).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None,
                position_bias: torch.Tensor | None, cache: Any = None,
                key_value_states: torch.Tensor | None = None, need_weights: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """mask: additive, [batch or 1, 1, q, k]. Returns the output, the position bias (mask
        not included: later blocks reuse it; None in cross-attention) and the attention
        weights if asked for. In cross-attention, consecutive rows of `x` may share a row of
        `key_value_states` (a prompt's beams): their queries then attend together."""
        cross = key_value_states is not None
        past = cache.length if cache is not None and not cross else 0
        if cross and cache is not None and cache.cross(self.layer_idx) is not None:
            k, v = cache.cross(self.layer_idx)
        else:
            source = key_value_states if cross else x
            k, v = self._split(step_linear(self.k, source)), self._split(step_linear(self.v, source))
            if cache is not None:
                if cross:
                    cache.set_cross(self.layer_idx, k, v)
                else:
                    k, v = cache.update(self.layer_idx, k, v)
        group = shared_rows(x.shape[0], k.shape[0]) if cross else 1
        q = fold_queries(step_linear(self.q, x), group, self.n_heads)
        if position_bias is None and self.has_relative_attention_bias:
            position_bias = self.compute_bias(x.shape[1], k.shape[2], past)
        # Cross-attention has no position bias: without a padding mask either, SDPA gets no
        # mask at all (transformers adds a zero bias)
        if mask is None or position_bias is None:
            scores_bias = mask if position_bias is None else position_bias
        else:
            scores_bias = position_bias + mask
        dropout = self.dropout_p if self.training else 0.0
        if need_weights:
            scores = torch.matmul(q, k.transpose(-1, -2))
            if scores_bias is not None:
                scores = scores + scores_bias
            weights = F.softmax(scores.float(), dim=-1).type_as(scores)
            out = torch.matmul(F.dropout(weights, p=dropout) if dropout else weights, v)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=None if scores_bias is None else scores_bias.to(q.dtype),
                dropout_p=dropout, scale=1.0)
            weights = None
        if group > 1 and weights is not None:
            weights = unfold_rows(weights, group)
        # (folded rows: [rows / group, group * n, width] is [rows, n, width] in memory)
        return (step_linear(self.o, merge_heads(out).view(*x.shape[:2], -1)), position_bias,
                weights)


class T5LayerSelfAttention(nn.Module):
    def __init__(self, config: T5Config, is_decoder: bool, has_bias: bool, layer_idx: int
                 ) -> None:
        super().__init__()
        self.SelfAttention = T5Attention(config, is_decoder, has_bias, layer_idx)
        self.layer_norm = RMSNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x, mask, position_bias, cache, need_weights):
        out, bias, weights = self.SelfAttention(self.layer_norm(x), mask, position_bias, cache,
                                                need_weights=need_weights)
        return x + _drop(self.dropout, out), bias, weights


class T5LayerCrossAttention(nn.Module):
    def __init__(self, config: T5Config, layer_idx: int) -> None:
        super().__init__()
        self.EncDecAttention = T5Attention(config, True, False, layer_idx)
        self.layer_norm = RMSNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x, encoder_states, mask, position_bias, cache, need_weights):
        out, bias, weights = self.EncDecAttention(self.layer_norm(x), mask, position_bias, cache,
                                                  encoder_states, need_weights)
        return x + _drop(self.dropout, out), bias, weights


class T5DenseActDense(nn.Module):
    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.wi = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.act = activation(config.dense_act_fn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return step_linear(self.wo, _drop(self.dropout, self.act(step_linear(self.wi, x))))


class T5DenseGatedActDense(nn.Module):
    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.wi_0 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wi_1 = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.dropout = nn.Dropout(config.dropout_rate)
        self.act = activation(config.dense_act_fn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(step_linear(self.wi_0, x)) * step_linear(self.wi_1, x)
        return step_linear(self.wo, _drop(self.dropout, h))


class T5LayerFF(nn.Module):
    def __init__(self, config: T5Config) -> None:
        super().__init__()
        self.DenseReluDense = (T5DenseGatedActDense(config) if config.is_gated_act
                               else T5DenseActDense(config))
        self.layer_norm = RMSNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + _drop(self.dropout, self.DenseReluDense(self.layer_norm(x)))


class T5Block(nn.Module):
    def __init__(self, config: T5Config, is_decoder: bool, layer_idx: int) -> None:
        super().__init__()
        self.is_decoder = is_decoder
        self.layer = nn.ModuleList([T5LayerSelfAttention(config, is_decoder, layer_idx == 0,
                                                         layer_idx)])
        if is_decoder:
            self.layer.append(T5LayerCrossAttention(config, layer_idx))
        self.layer.append(T5LayerFF(config))

    def forward(self, x, mask, position_bias, encoder_states, encoder_mask, cross_bias, cache,
                need_weights):
        x, position_bias, self_weights = self.layer[0](x, mask, position_bias, cache,
                                                       need_weights)
        cross_weights = None
        if self.is_decoder and encoder_states is not None:
            x, cross_bias, cross_weights = self.layer[1](x, encoder_states, encoder_mask,
                                                         cross_bias, cache, need_weights)
        return self.layer[-1](x), position_bias, cross_bias, self_weights, cross_weights


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A 1/0 (or boolean) mask -> 0 where attended, the dtype's minimum elsewhere."""
    return (1.0 - mask.to(dtype)) * torch.finfo(dtype).min


class T5Stack(nn.Module):
    """The encoder (is_decoder=False) or the decoder: embed_tokens (shared), block, final norm."""

    def __init__(self, config: T5Config, is_decoder: bool) -> None:
        super().__init__()
        self.config = config
        self.is_decoder = is_decoder
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)
        layers = config.num_decoder_layers if is_decoder else config.num_layers
        self.block = nn.ModuleList(T5Block(config, is_decoder, i) for i in range(layers))
        self.final_layer_norm = RMSNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.dropout = nn.Dropout(config.dropout_rate)

    def forward(self, input_ids=None, attention_mask=None, encoder_hidden_states=None,
                encoder_attention_mask=None, inputs_embeds=None, cache=None,
                output_hidden_states=False, output_attentions=False):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds.")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        b, n = x.shape[:2]
        dtype, device = x.dtype, x.device
        past = cache.length if cache is not None else 0
        kv_len = past + n
        mask = None
        if self.is_decoder and (n > 1 or attention_mask is not None):
            # (one new position and no padding: every cached key is visible, no mask needed)
            q_pos = torch.arange(past, kv_len, device=device)[:, None]
            allowed = torch.arange(kv_len, device=device)[None, :] <= q_pos  # [n, kv_len]
            allowed = allowed[None, None]
            if attention_mask is not None:
                allowed = allowed & attention_mask[:, None, None, :kv_len].bool().to(device)
            mask = _additive(allowed, dtype)
        elif attention_mask is not None and not bool(attention_mask.all()):
            mask = _additive(attention_mask[:, None, None, :].to(device), dtype)
        encoder_mask = None
        if encoder_hidden_states is not None and encoder_attention_mask is not None \
                and not bool(encoder_attention_mask.all()):
            encoder_mask = _additive(encoder_attention_mask[:, None, None, :].to(device), dtype)
        x = _drop(self.dropout, x)
        position_bias = cross_bias = None
        hidden, self_attns, cross_attns = [], [], []
        for block in self.block:
            if output_hidden_states:
                hidden.append(x)
            x, position_bias, cross_bias, w_self, w_cross = run_block(
                block, x, mask, position_bias, encoder_hidden_states, encoder_mask, cross_bias,
                cache, output_attentions)
            self_attns.append(w_self)
            cross_attns.append(w_cross)
        x = _drop(self.dropout, self.final_layer_norm(x))
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=x, past_key_values=cache,
            hidden_states=(*hidden, x) if output_hidden_states else None,
            attentions=tuple(self_attns) if output_attentions else None,
            cross_attentions=tuple(cross_attns) if output_attentions and self.is_decoder
            and encoder_hidden_states is not None else None)


class T5PreTrainedModel(PreTrainedModel):
    config_class = T5Config
    base_model_prefix = "transformer"
    ignore_unexpected = [r"decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias"]
    tied_weights = {"encoder.embed_tokens.weight": "shared.weight",
                    "decoder.embed_tokens.weight": "shared.weight"}

    def _init_weights(self, module: nn.Module) -> None:
        """transformers' T5 initialisation (scaled by initializer_factor)."""
        c, f = self.config, self.config.initializer_factor
        if isinstance(module, RMSNorm):
            nn.init.constant_(module.weight, f)
        elif isinstance(module, nn.Embedding) and module.weight.shape[1] == c.d_model:
            nn.init.normal_(module.weight, std=f)
        elif isinstance(module, nn.Linear) and module.out_features == c.vocab_size:
            nn.init.normal_(module.weight, std=f)  # lm_head
        elif isinstance(module, T5DenseActDense):
            nn.init.normal_(module.wi.weight, std=f * c.d_model ** -0.5)
            nn.init.normal_(module.wo.weight, std=f * c.d_ff ** -0.5)
        elif isinstance(module, T5DenseGatedActDense):
            nn.init.normal_(module.wi_0.weight, std=f * c.d_model ** -0.5)
            nn.init.normal_(module.wi_1.weight, std=f * c.d_model ** -0.5)
            nn.init.normal_(module.wo.weight, std=f * c.d_ff ** -0.5)
        elif isinstance(module, T5Attention):
            nn.init.normal_(module.q.weight, std=f * (c.d_model * c.d_kv) ** -0.5)
            nn.init.normal_(module.k.weight, std=f * c.d_model ** -0.5)
            nn.init.normal_(module.v.weight, std=f * c.d_model ** -0.5)
            nn.init.normal_(module.o.weight, std=f * (c.num_heads * c.d_kv) ** -0.5)
            if module.has_relative_attention_bias:
                nn.init.normal_(module.relative_attention_bias.weight, std=f * c.d_model ** -0.5)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.shared

    def get_encoder(self) -> T5Stack:
        return self.encoder

    def get_decoder(self) -> T5Stack:
        return self.decoder

    def _shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Decoder inputs for `labels`: decoder_start_token_id, then the labels but the last
        (-100 becomes the pad id)."""
        start = self.config.decoder_start_token_id
        if start is None:
            raise ValueError("config.decoder_start_token_id has to be defined (T5 uses the pad "
                             "token id, 0).")
        if self.config.pad_token_id is None:
            raise ValueError("config.pad_token_id has to be defined.")
        shifted = labels.new_zeros(labels.shape)
        shifted[..., 1:] = labels[..., :-1]
        shifted[..., 0] = start
        return shifted.masked_fill(shifted == -100, self.config.pad_token_id)

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return self._shift_right(labels)

    def new_cache(self, batch_size: int, max_length: int, dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None) -> EncoderDecoderCache:
        """An empty decoder cache for `batch_size` rows of up to `max_length` positions."""
        c = self.config
        return EncoderDecoderCache(KVCache(c.num_decoder_layers, batch_size, c.num_heads, c.d_kv,
                                           max_length, dtype=dtype or self.dtype,
                                           device=device or self.device))


def _encode(model, encoder_outputs, input_ids, attention_mask, inputs_embeds,
            output_hidden_states, output_attentions):
    if encoder_outputs is None:
        return model.encoder(input_ids, attention_mask, inputs_embeds=inputs_embeds,
                             output_hidden_states=output_hidden_states,
                             output_attentions=output_attentions)
    return as_encoder_output(encoder_outputs)


def _decode(model, encoder_out, attention_mask, decoder_input_ids, decoder_attention_mask,
            decoder_inputs_embeds, past_key_values, use_cache, output_hidden_states,
            output_attentions):
    ids = decoder_input_ids if decoder_inputs_embeds is None else decoder_inputs_embeds
    if past_key_values is None and use_cache:
        past_key_values = model.new_cache(ids.shape[0], ids.shape[1], device=ids.device)
    return model.decoder(decoder_input_ids, decoder_attention_mask,
                         encoder_out.last_hidden_state, attention_mask,
                         inputs_embeds=decoder_inputs_embeds, cache=past_key_values,
                         output_hidden_states=output_hidden_states,
                         output_attentions=output_attentions)


def _flag(value, default):
    return default if value is None else value


class T5Model(T5PreTrainedModel):
    def __init__(self, config: T5Config) -> None:
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = T5Stack(config, is_decoder=False)
        self.decoder = T5Stack(config, is_decoder=True)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None,
                decoder_attention_mask=None, encoder_outputs=None, past_key_values=None,
                inputs_embeds=None, decoder_inputs_embeds=None, use_cache=False,
                output_attentions=None, output_hidden_states=None, return_dict=None):
        c = self.config
        hs = _flag(output_hidden_states, c.output_hidden_states)
        att = _flag(output_attentions, c.output_attentions)
        enc = _encode(self, encoder_outputs, input_ids, attention_mask, inputs_embeds, hs, att)
        dec = _decode(self, enc, attention_mask, decoder_input_ids, decoder_attention_mask,
                      decoder_inputs_embeds, past_key_values, use_cache, hs, att)
        out = Seq2SeqModelOutput(
            last_hidden_state=dec.last_hidden_state, past_key_values=dec.past_key_values,
            decoder_hidden_states=dec.hidden_states, decoder_attentions=dec.attentions,
            cross_attentions=dec.cross_attentions,
            encoder_last_hidden_state=enc.last_hidden_state,
            encoder_hidden_states=enc.hidden_states, encoder_attentions=enc.attentions)
        return out if _flag(return_dict, c.return_dict) else out.to_tuple()


class T5EncoderModel(T5PreTrainedModel):
    tied_weights = {"encoder.embed_tokens.weight": "shared.weight"}
    ignore_unexpected = [r"^decoder\.", r"^lm_head\."]

    def __init__(self, config: T5Config) -> None:
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = T5Stack(config, is_decoder=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None,
                output_attentions=None, output_hidden_states=None, return_dict=None):
        c = self.config
        enc = self.encoder(input_ids, attention_mask, inputs_embeds=inputs_embeds,
                           output_hidden_states=_flag(output_hidden_states,
                                                      c.output_hidden_states),
                           output_attentions=_flag(output_attentions, c.output_attentions))
        out = BaseModelOutput(last_hidden_state=enc.last_hidden_state,
                              hidden_states=enc.hidden_states, attentions=enc.attentions)
        return out if _flag(return_dict, c.return_dict) else out.to_tuple()


class T5ForConditionalGeneration(GenerationMixin, T5PreTrainedModel):
    tied_weights = {**T5PreTrainedModel.tied_weights, "lm_head.weight": "shared.weight"}

    def __init__(self, config: T5Config) -> None:
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = T5Stack(config, is_decoder=False)
        self.decoder = T5Stack(config, is_decoder=True)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def active_ties(self) -> dict[str, str]:
        ties = dict(self.tied_weights)
        if not getattr(self.config, "tie_word_embeddings", True):
            ties.pop("lm_head.weight")  # v1.1 / Flan-T5: a head of its own
        return ties

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def _load_state(self, state: dict[str, torch.Tensor], dtype: torch.dtype | None,
                    *args: Any, **kwargs: Any):
        # transformers 5.x re-saves a Flan-T5 checkpoint with tie_word_embeddings true (and
        # scale_decoder_outputs false) but its own lm_head.weight: as transformers, a head
        # that differs from the embeddings is kept untied.
        head, shared = state.get("lm_head.weight"), state.get("shared.weight")
        if self.config.tie_word_embeddings and head is not None and shared is not None \
                and head.shape == shared.shape and not torch.equal(head, shared):
            self.config.tie_word_embeddings = False
            self.lm_head.weight = nn.Parameter(torch.empty(head.shape, device="meta"))
        return super()._load_state(state, dtype, *args, **kwargs)

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None,
                decoder_attention_mask=None, encoder_outputs=None, past_key_values=None,
                inputs_embeds=None, decoder_inputs_embeds=None, labels=None, use_cache=False,
                output_attentions=None, output_hidden_states=None, return_dict=None):
        c = self.config
        hs = _flag(output_hidden_states, c.output_hidden_states)
        att = _flag(output_attentions, c.output_attentions)
        enc = _encode(self, encoder_outputs, input_ids, attention_mask, inputs_embeds, hs, att)
        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = self._shift_right(labels)
        dec = _decode(self, enc, attention_mask, decoder_input_ids, decoder_attention_mask,
                      decoder_inputs_embeds, past_key_values, use_cache, hs, att)
        x = dec.last_hidden_state
        if c.scales_decoder_output:
            x = x * (c.d_model ** -0.5)
        logits = lm_logits(self.lm_head, x, dec.past_key_values)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                   labels.to(logits.device).reshape(-1), ignore_index=-100)
        out = Seq2SeqLMOutput(
            loss=loss, logits=logits, past_key_values=dec.past_key_values,
            decoder_hidden_states=dec.hidden_states, decoder_attentions=dec.attentions,
            cross_attentions=dec.cross_attentions,
            encoder_last_hidden_state=enc.last_hidden_state,
            encoder_hidden_states=enc.hidden_states, encoder_attentions=enc.attentions)
        return out if _flag(return_dict, c.return_dict) else out.to_tuple()
