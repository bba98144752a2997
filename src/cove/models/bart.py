"""BART, with transformers' module and parameter names.

An encoder and a decoder of post-norm blocks (LayerNorm after each residual sum), learned
position embeddings offset by 2 (fairseq's padding positions), a LayerNorm on the embeddings,
and an LM head tied to `shared` plus a `final_logits_bias` buffer.
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
from cove.models.layers import (
    activation,
    attend,
    classification_loss,
    init_weights,
    merge_heads,
    run_block,
    span_logits,
    span_loss,
)
from cove.models.modeling import PreTrainedModel
from cove.models.seq2seq import (
    BaseModelOutputWithPastAndCrossAttentions,
    EncoderDecoderCache,
    Seq2SeqLMOutput,
    Seq2SeqModelOutput,
    Seq2SeqQuestionAnsweringModelOutput,
    Seq2SeqSequenceClassifierOutput,
    as_encoder_output,
    fold_queries,
    lm_logits,
    shared_rows,
    step_linear,
    unfold_rows,
)


class BartConfig(PretrainedConfig):
    model_type = "bart"
    attribute_map = {"num_attention_heads": "encoder_attention_heads", "hidden_size": "d_model",
                     "num_hidden_layers": "encoder_layers"}
    defaults = {
        "vocab_size": 50265, "max_position_embeddings": 1024, "encoder_layers": 12,
        "encoder_ffn_dim": 4096, "encoder_attention_heads": 16, "decoder_layers": 12,
        "decoder_ffn_dim": 4096, "decoder_attention_heads": 16, "encoder_layerdrop": 0.0,
        "decoder_layerdrop": 0.0, "activation_function": "gelu", "d_model": 1024,
        "dropout": 0.1, "attention_dropout": 0.0, "activation_dropout": 0.0, "init_std": 0.02,
        "classifier_dropout": 0.0, "scale_embedding": False, "use_cache": True,
        "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2, "is_encoder_decoder": True,
        "decoder_start_token_id": 2, "forced_eos_token_id": 2,
    }

    def __init__(self, **kwargs: Any) -> None:
        if "id2label" not in kwargs and "num_labels" not in kwargs:
            kwargs["num_labels"] = 3  # as transformers' BartConfig
        super().__init__(**kwargs)


def shift_tokens_right(input_ids: torch.Tensor, pad_token_id: int | None,
                       decoder_start_token_id: int) -> torch.Tensor:
    """Decoder inputs for labels: the start token, then the labels but the last (-100 -> pad)."""
    if pad_token_id is None:
        raise ValueError("config.pad_token_id has to be defined.")
    shifted = input_ids.new_zeros(input_ids.shape)
    shifted[:, 1:] = input_ids[:, :-1]
    shifted[:, 0] = decoder_start_token_id
    return shifted.masked_fill(shifted == -100, pad_token_id)


class BartLearnedPositionalEmbedding(nn.Embedding):
    """Position p is row p + 2 (fairseq kept two rows for its padding scheme)."""

    offset = 2

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__(num_embeddings + self.offset, embedding_dim)

    def forward(self, seq_len: int, past: int = 0) -> torch.Tensor:
        positions = torch.arange(past, past + seq_len, device=self.weight.device)
        return super().forward(positions + self.offset)[None]


def _drop(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout, skipped in eval mode (a decoding step would make ~20 no-op calls)."""
    return F.dropout(x, p, training) if training and p else x


class BartAttention(nn.Module):
    def __init__(self, d_model: int, heads: int, dropout: float, layer_idx: int,
                 is_cross: bool = False) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, d_model // heads
        self.dropout_p = dropout
        self.layer_idx = layer_idx
        self.is_cross = is_cross
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        return x.view(b, s, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x, mask, cache=None, key_value_states=None, need_weights=False):
        """In cross-attention, consecutive rows of `x` may share a row of `key_value_states`
        (a prompt's beams): their queries then attend together."""
        if self.is_cross and cache is not None and cache.cross(self.layer_idx) is not None:
            k, v = cache.cross(self.layer_idx)
        else:
            source = key_value_states if self.is_cross else x
            k = self._split(step_linear(self.k_proj, source))
            v = self._split(step_linear(self.v_proj, source))
            if cache is not None:
                if self.is_cross:
                    cache.set_cross(self.layer_idx, k, v)
                else:
                    k, v = cache.update(self.layer_idx, k, v)
        group = shared_rows(x.shape[0], k.shape[0]) if self.is_cross else 1
        q = fold_queries(step_linear(self.q_proj, x), group, self.heads)
        out, weights = attend(q, k, v, mask, self.dropout_p if self.training else 0.0,
                              need_weights)
        if group > 1 and weights is not None:
            weights = unfold_rows(weights, group)
        # (folded rows: [rows / group, group * n, width] is [rows, n, width] in memory)
        return step_linear(self.out_proj, merge_heads(out).view(*x.shape[:2], -1)), weights


class BartEncoderLayer(nn.Module):
    def __init__(self, config: BartConfig, layer_idx: int) -> None:
        super().__init__()
        d = config.d_model
        self.self_attn = BartAttention(d, config.encoder_attention_heads,
                                       config.attention_dropout, layer_idx)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, config.encoder_ffn_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_dim, d)
        self.final_layer_norm = nn.LayerNorm(d)
        self.act = activation(config.activation_function)
        self.dropout, self.activation_dropout = config.dropout, config.activation_dropout

    def forward(self, x, mask, need_weights):
        attn, weights = self.self_attn(x, mask, need_weights=need_weights)
        x = self.self_attn_layer_norm(x + _drop(attn, self.dropout, self.training))
        h = _drop(self.act(self.fc1(x)), self.activation_dropout, self.training)
        x = self.final_layer_norm(x + _drop(self.fc2(h), self.dropout, self.training))
        return x, weights


class BartDecoderLayer(nn.Module):
    def __init__(self, config: BartConfig, layer_idx: int) -> None:
        super().__init__()
        d, heads = config.d_model, config.decoder_attention_heads
        self.self_attn = BartAttention(d, heads, config.attention_dropout, layer_idx)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.encoder_attn = BartAttention(d, heads, config.attention_dropout, layer_idx,
                                          is_cross=True)
        self.encoder_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, config.decoder_ffn_dim)
        self.fc2 = nn.Linear(config.decoder_ffn_dim, d)
        self.final_layer_norm = nn.LayerNorm(d)
        self.act = activation(config.activation_function)
        self.dropout, self.activation_dropout = config.dropout, config.activation_dropout

    def forward(self, x, mask, encoder_states, encoder_mask, cache, need_weights):
        attn, w_self = self.self_attn(x, mask, cache, need_weights=need_weights)
        x = self.self_attn_layer_norm(x + _drop(attn, self.dropout, self.training))
        w_cross = None
        if encoder_states is not None:
            attn, w_cross = self.encoder_attn(x, encoder_mask, cache, encoder_states,
                                              need_weights)
            x = self.encoder_attn_layer_norm(x + _drop(attn, self.dropout, self.training))
        h = _drop(self.act(step_linear(self.fc1, x)), self.activation_dropout, self.training)
        x = self.final_layer_norm(x + _drop(step_linear(self.fc2, h), self.dropout,
                                            self.training))
        return x, w_self, w_cross


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (1.0 - allowed.to(dtype)) * torch.finfo(dtype).min


def _padding(mask: torch.Tensor | None, dtype: torch.dtype, device) -> torch.Tensor | None:
    if mask is None or bool(mask.all()):
        return None
    return _additive(mask[:, None, None, :].to(device), dtype)


class BartEncoder(nn.Module):
    def __init__(self, config: BartConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model, config.pad_token_id)
        self.embed_positions = BartLearnedPositionalEmbedding(config.max_position_embeddings,
                                                              config.d_model)
        self.layers = nn.ModuleList(BartEncoderLayer(config, i)
                                    for i in range(config.encoder_layers))
        self.layernorm_embedding = nn.LayerNorm(config.d_model)

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None,
                output_hidden_states=False, output_attentions=False):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds.")
        x = self.embed_tokens(input_ids) * self.embed_scale if inputs_embeds is None \
            else inputs_embeds
        x = x + self.embed_positions(x.shape[1]).to(x.device, x.dtype)
        x = _drop(self.layernorm_embedding(x), self.config.dropout, self.training)
        mask = _padding(attention_mask, x.dtype, x.device)
        hidden, attentions = [], []
        for layer in self.layers:
            if output_hidden_states:
                hidden.append(x)
            x, weights = run_block(layer, x, mask, output_attentions)
            attentions.append(weights)
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=x, hidden_states=(*hidden, x) if output_hidden_states else None,
            attentions=tuple(attentions) if output_attentions else None)


class BartDecoder(nn.Module):
    def __init__(self, config: BartConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_scale = math.sqrt(config.d_model) if config.scale_embedding else 1.0
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model, config.pad_token_id)
        self.embed_positions = BartLearnedPositionalEmbedding(config.max_position_embeddings,
                                                              config.d_model)
        self.layers = nn.ModuleList(BartDecoderLayer(config, i)
                                    for i in range(config.decoder_layers))
        self.layernorm_embedding = nn.LayerNorm(config.d_model)

    def forward(self, input_ids=None, attention_mask=None, encoder_hidden_states=None,
                encoder_attention_mask=None, inputs_embeds=None, cache=None,
                output_hidden_states=False, output_attentions=False):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of decoder_input_ids and decoder_inputs_embeds.")
        x = self.embed_tokens(input_ids) * self.embed_scale if inputs_embeds is None \
            else inputs_embeds
        n = x.shape[1]
        past = cache.length if cache is not None else 0
        x = x + self.embed_positions(n, past).to(x.device, x.dtype)
        x = _drop(self.layernorm_embedding(x), self.config.dropout, self.training)
        mask = None
        if n > 1 or attention_mask is not None:
            q_pos = torch.arange(past, past + n, device=x.device)[:, None]
            allowed = (torch.arange(past + n, device=x.device)[None, :] <= q_pos)[None, None]
            if attention_mask is not None:
                allowed = allowed & attention_mask[:, None, None, :past + n].bool().to(x.device)
            mask = _additive(allowed, x.dtype)
        encoder_mask = _padding(encoder_attention_mask, x.dtype, x.device) \
            if encoder_hidden_states is not None else None
        hidden, self_attns, cross_attns = [], [], []
        for layer in self.layers:
            if output_hidden_states:
                hidden.append(x)
            x, w_self, w_cross = run_block(layer, x, mask, encoder_hidden_states, encoder_mask,
                                           cache, output_attentions)
            self_attns.append(w_self)
            cross_attns.append(w_cross)
        return BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=x, past_key_values=cache,
            hidden_states=(*hidden, x) if output_hidden_states else None,
            attentions=tuple(self_attns) if output_attentions else None,
            cross_attentions=tuple(cross_attns) if output_attentions
            and encoder_hidden_states is not None else None)


def _flag(value, default):
    return default if value is None else value


class BartPreTrainedModel(PreTrainedModel):
    config_class = BartConfig
    base_model_prefix = "model"

    def _init_weights(self, module: nn.Module) -> None:
        init_weights(module, self.config.init_std)

    def new_cache(self, batch_size: int, max_length: int, dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None) -> EncoderDecoderCache:
        c = self.config
        heads = c.decoder_attention_heads
        return EncoderDecoderCache(KVCache(c.decoder_layers, batch_size, heads,
                                           c.d_model // heads, max_length,
                                           dtype=dtype or self.dtype,
                                           device=device or self.device))


class BartModel(BartPreTrainedModel):
    tied_weights = {"encoder.embed_tokens.weight": "shared.weight",
                    "decoder.embed_tokens.weight": "shared.weight"}

    def __init__(self, config: BartConfig) -> None:
        super().__init__(config)
        self.shared = nn.Embedding(config.vocab_size, config.d_model, config.pad_token_id)
        self.encoder = BartEncoder(config)
        self.decoder = BartDecoder(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.shared

    def get_encoder(self) -> BartEncoder:
        return self.encoder

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None,
                decoder_attention_mask=None, encoder_outputs=None, past_key_values=None,
                inputs_embeds=None, decoder_inputs_embeds=None, use_cache=False,
                output_attentions=None, output_hidden_states=None, return_dict=None):
        c = self.config
        hs = _flag(output_hidden_states, c.output_hidden_states)
        att = _flag(output_attentions, c.output_attentions)
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            if input_ids is None:
                raise ValueError("Pass decoder_input_ids (or input_ids to shift right).")
            decoder_input_ids = shift_tokens_right(input_ids, c.pad_token_id,
                                                   c.decoder_start_token_id)
        if encoder_outputs is None:
            enc = self.encoder(input_ids, attention_mask, inputs_embeds, hs, att)
        else:
            enc = as_encoder_output(encoder_outputs)
        ids = decoder_input_ids if decoder_inputs_embeds is None else decoder_inputs_embeds
        if past_key_values is None and use_cache:
            past_key_values = self.new_cache(ids.shape[0], ids.shape[1], device=ids.device)
        dec = self.decoder(decoder_input_ids, decoder_attention_mask, enc.last_hidden_state,
                           attention_mask, decoder_inputs_embeds, past_key_values, hs, att)
        out = Seq2SeqModelOutput(
            last_hidden_state=dec.last_hidden_state, past_key_values=dec.past_key_values,
            decoder_hidden_states=dec.hidden_states, decoder_attentions=dec.attentions,
            cross_attentions=dec.cross_attentions,
            encoder_last_hidden_state=enc.last_hidden_state,
            encoder_hidden_states=enc.hidden_states, encoder_attentions=enc.attentions)
        return out if _flag(return_dict, c.return_dict) else out.to_tuple()


class BartForConditionalGeneration(GenerationMixin, BartPreTrainedModel):
    tied_weights = {"model.encoder.embed_tokens.weight": "model.shared.weight",
                    "model.decoder.embed_tokens.weight": "model.shared.weight",
                    "lm_head.weight": "model.shared.weight"}

    def __init__(self, config: BartConfig) -> None:
        super().__init__(config)
        self.model = BartModel(config)
        self.register_buffer("final_logits_bias", torch.zeros(1, config.vocab_size))
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def active_ties(self) -> dict[str, str]:
        ties = dict(self.tied_weights)
        if not getattr(self.config, "tie_word_embeddings", True):
            ties.pop("lm_head.weight")
        return ties

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.shared

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def get_encoder(self) -> BartEncoder:
        return self.model.encoder

    def prepare_decoder_input_ids_from_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return shift_tokens_right(labels, self.config.pad_token_id,
                                  self.config.decoder_start_token_id)

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None,
                decoder_attention_mask=None, encoder_outputs=None, past_key_values=None,
                inputs_embeds=None, decoder_inputs_embeds=None, labels=None, use_cache=False,
                output_attentions=None, output_hidden_states=None, return_dict=None):
        if labels is not None and decoder_input_ids is None and decoder_inputs_embeds is None:
            decoder_input_ids = self.prepare_decoder_input_ids_from_labels(labels)
        base = self.model(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask,
                          encoder_outputs, past_key_values, inputs_embeds,
                          decoder_inputs_embeds, use_cache, output_attentions,
                          output_hidden_states, return_dict=True)
        logits = lm_logits(self.lm_head, base.last_hidden_state, base.past_key_values) \
            + self.final_logits_bias.to(base.last_hidden_state.device)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                   labels.to(logits.device).reshape(-1))
        out = Seq2SeqLMOutput(
            loss=loss, logits=logits, past_key_values=base.past_key_values,
            decoder_hidden_states=base.decoder_hidden_states,
            decoder_attentions=base.decoder_attentions, cross_attentions=base.cross_attentions,
            encoder_last_hidden_state=base.encoder_last_hidden_state,
            encoder_hidden_states=base.encoder_hidden_states,
            encoder_attentions=base.encoder_attentions)
        return out if _flag(return_dict, self.config.return_dict) else out.to_tuple()


class BartClassificationHead(nn.Module):
    def __init__(self, input_dim: int, inner_dim: int, num_classes: int, dropout: float
                 ) -> None:
        super().__init__()
        self.dense = nn.Linear(input_dim, inner_dim)
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(inner_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.dropout(torch.tanh(self.dense(self.dropout(x)))))


class _BartWithBase(BartPreTrainedModel):
    tied_weights = {"model.encoder.embed_tokens.weight": "model.shared.weight",
                    "model.decoder.embed_tokens.weight": "model.shared.weight"}

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.shared

    def _base(self, input_ids, attention_mask, decoder_input_ids, decoder_attention_mask,
              encoder_outputs, inputs_embeds, decoder_inputs_embeds, output_attentions,
              output_hidden_states):
        return self.model(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask,
                          encoder_outputs, None, inputs_embeds, decoder_inputs_embeds, False,
                          output_attentions, output_hidden_states, return_dict=True)

    @staticmethod
    def _fields(base) -> dict:
        return dict(decoder_hidden_states=base.decoder_hidden_states,
                    decoder_attentions=base.decoder_attentions,
                    cross_attentions=base.cross_attentions,
                    encoder_last_hidden_state=base.encoder_last_hidden_state,
                    encoder_hidden_states=base.encoder_hidden_states,
                    encoder_attentions=base.encoder_attentions)


class BartForSequenceClassification(_BartWithBase):
    """The decoder's state at each row's last eos token, through a tanh head."""

    def __init__(self, config: BartConfig) -> None:
        super().__init__(config)
        self.model = BartModel(config)
        self.classification_head = BartClassificationHead(
            config.d_model, config.d_model, config.num_labels, config.classifier_dropout)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None,
                decoder_attention_mask=None, encoder_outputs=None, inputs_embeds=None,
                decoder_inputs_embeds=None, labels=None, output_attentions=None,
                output_hidden_states=None, return_dict=None):
        if input_ids is None:
            raise NotImplementedError("BartForSequenceClassification needs input_ids (it "
                                      "reads the eos positions from them).")
        base = self._base(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask,
                          encoder_outputs, inputs_embeds, decoder_inputs_embeds,
                          output_attentions, output_hidden_states)
        hidden = base.last_hidden_state
        eos = input_ids.eq(self.config.eos_token_id).to(hidden.device)
        if torch.unique_consecutive(eos.sum(1)).numel() != 1:
            raise ValueError("All examples must have the same number of <eos> tokens.")
        sentence = hidden[eos, :].view(hidden.shape[0], -1, hidden.shape[-1])[:, -1, :]
        logits = self.classification_head(sentence)
        loss = classification_loss(logits, labels, self.config) if labels is not None else None
        out = Seq2SeqSequenceClassifierOutput(loss=loss, logits=logits, **self._fields(base))
        return out if _flag(return_dict, self.config.return_dict) else out.to_tuple()


class BartForQuestionAnswering(_BartWithBase):
    def __init__(self, config: BartConfig) -> None:
        super().__init__(config)
        config.num_labels = 2
        self.model = BartModel(config)
        self.qa_outputs = nn.Linear(config.d_model, 2)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None,
                decoder_attention_mask=None, encoder_outputs=None, start_positions=None,
                end_positions=None, inputs_embeds=None, decoder_inputs_embeds=None,
                output_attentions=None, output_hidden_states=None, return_dict=None):
        base = self._base(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask,
                          encoder_outputs, inputs_embeds, decoder_inputs_embeds,
                          output_attentions, output_hidden_states)
        start, end = span_logits(self.qa_outputs(base.last_hidden_state))
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = span_loss(start, end, start_positions, end_positions)
        out = Seq2SeqQuestionAnsweringModelOutput(loss=loss, start_logits=start, end_logits=end,
                                                  **self._fields(base))
        return out if _flag(return_dict, self.config.return_dict) else out.to_tuple()
