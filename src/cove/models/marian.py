"""Marian (Helsinki-NLP opus-mt translation models), with transformers' names.

BART's post-norm blocks, with fixed sinusoidal position embeddings (computed, not stored:
transformers does not save them either), no LayerNorm on the embeddings, embeddings scaled by
sqrt(d_model) (scale_embedding), and, unless share_encoder_decoder_embeddings, a decoder
vocabulary of its own (decoder_vocab_size) with the LM head tied to the decoder's embeddings.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from cove.models.bart import (
    BartDecoder,
    BartEncoder,
    BartForConditionalGeneration,
    BartModel,
    BartPreTrainedModel,
)
from cove.models.configuration import PretrainedConfig


class MarianConfig(PretrainedConfig):
    model_type = "marian"
    attribute_map = {"num_attention_heads": "encoder_attention_heads", "hidden_size": "d_model",
                     "num_hidden_layers": "encoder_layers"}
    defaults = {
        "vocab_size": 58101, "decoder_vocab_size": None, "max_position_embeddings": 1024,
        "encoder_layers": 12, "encoder_ffn_dim": 4096, "encoder_attention_heads": 16,
        "decoder_layers": 12, "decoder_ffn_dim": 4096, "decoder_attention_heads": 16,
        "encoder_layerdrop": 0.0, "decoder_layerdrop": 0.0, "use_cache": True,
        "is_encoder_decoder": True, "activation_function": "gelu", "d_model": 1024,
        "dropout": 0.1, "attention_dropout": 0.0, "activation_dropout": 0.0, "init_std": 0.02,
        "decoder_start_token_id": 58100, "scale_embedding": False, "pad_token_id": 58100,
        "eos_token_id": 0, "bos_token_id": None, "forced_eos_token_id": 0,
        "share_encoder_decoder_embeddings": True,
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.decoder_vocab_size = self.decoder_vocab_size or self.vocab_size


def sinusoidal_positions(n_pos: int, dim: int) -> torch.Tensor:
    """sin features in the first half of each vector, cos in the second (not interleaved)."""
    pos = torch.arange(n_pos, dtype=torch.float64)[:, None]
    j = torch.arange(dim, dtype=torch.float64)[None, :]
    angles = pos / torch.pow(torch.tensor(10000.0, dtype=torch.float64),
                             2 * torch.div(j, 2, rounding_mode="floor") / dim)
    out = torch.empty(n_pos, dim, dtype=torch.float32)
    half = dim // 2 if dim % 2 == 0 else dim // 2 + 1
    out[:, :half] = torch.sin(angles[:, 0::2]).float()
    out[:, half:] = torch.cos(angles[:, 1::2]).float()
    return out


class MarianSinusoidalPositionalEmbedding(nn.Module):
    def __init__(self, num_positions: int, embedding_dim: int) -> None:
        super().__init__()
        self.register_buffer("weight", sinusoidal_positions(num_positions, embedding_dim),
                             persistent=False)

    def forward(self, seq_len: int, past: int = 0) -> torch.Tensor:
        return self.weight[past:past + seq_len][None]


class MarianEncoder(BartEncoder):
    def __init__(self, config: MarianConfig) -> None:
        super().__init__(config)
        self.embed_positions = MarianSinusoidalPositionalEmbedding(
            config.max_position_embeddings, config.d_model)
        self.layernorm_embedding = nn.Identity()


class MarianDecoder(BartDecoder):
    def __init__(self, config: MarianConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.decoder_vocab_size, config.d_model,
                                         config.pad_token_id)
        self.embed_positions = MarianSinusoidalPositionalEmbedding(
            config.max_position_embeddings, config.d_model)
        self.layernorm_embedding = nn.Identity()

    def forward(self, input_ids=None, attention_mask=None, encoder_hidden_states=None,
                encoder_attention_mask=None, inputs_embeds=None, cache=None,
                output_hidden_states=False, output_attentions=False):
        # transformers' Marian decoder scales by sqrt(d_model) the embeddings a caller passes
        # (decoder_inputs_embeds) too, not only its own; its encoder does not.
        if inputs_embeds is not None:
            inputs_embeds = inputs_embeds * self.embed_scale
        return super().forward(input_ids, attention_mask, encoder_hidden_states,
                               encoder_attention_mask, inputs_embeds, cache,
                               output_hidden_states, output_attentions)


class MarianPreTrainedModel(BartPreTrainedModel):
    config_class = MarianConfig
    # older checkpoints stored the (fixed) sinusoidal tables
    ignore_unexpected = [r"embed_positions\.weight$"]


class MarianModel(MarianPreTrainedModel):
    forward = BartModel.forward

    def __init__(self, config: MarianConfig) -> None:
        super().__init__(config)
        if config.share_encoder_decoder_embeddings:
            self.shared = nn.Embedding(config.vocab_size, config.d_model, config.pad_token_id)
        self.encoder = MarianEncoder(config)
        self.decoder = MarianDecoder(config)
        self.post_init()

    def active_ties(self) -> dict[str, str]:
        if not self.config.share_encoder_decoder_embeddings:
            return {}
        return {"encoder.embed_tokens.weight": "shared.weight",
                "decoder.embed_tokens.weight": "shared.weight"}

    def get_input_embeddings(self) -> nn.Embedding:
        return self.encoder.embed_tokens

    def get_encoder(self) -> MarianEncoder:
        return self.encoder


class MarianMTModel(BartForConditionalGeneration):
    config_class = MarianConfig
    ignore_unexpected = MarianPreTrainedModel.ignore_unexpected

    def __init__(self, config: MarianConfig) -> None:
        BartPreTrainedModel.__init__(self, config)
        self.model = MarianModel(config)
        vocab = config.vocab_size if config.share_encoder_decoder_embeddings \
            else config.decoder_vocab_size
        self.register_buffer("final_logits_bias", torch.zeros(1, vocab))
        self.lm_head = nn.Linear(config.d_model, vocab, bias=False)
        self.post_init()

    def active_ties(self) -> dict[str, str]:
        ties = {f"model.{k}": f"model.{v}" for k, v in self.model.active_ties().items()}
        if getattr(self.config, "tie_word_embeddings", True):
            ties["lm_head.weight"] = ("model.shared.weight"
                                      if self.config.share_encoder_decoder_embeddings
                                      else "model.decoder.embed_tokens.weight")
        return ties

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.encoder.embed_tokens
