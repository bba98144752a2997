"""The prompt-learning encoders: virtual token embeddings (prompt tuning), a small MLP/LSTM
over them (p-tuning), or every layer's keys and values (prefix tuning).

Each holds `embedding` (num_virtual_tokens rows). A config loaded for inference
(inference_mode) builds the embedding alone, of the encoder's output width: the saved
`prompt_embeddings` are the encoder's outputs, and are used as they are.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from cove.peft.config import (
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptEncoderReparameterizationType,
    PromptTuningConfig,
    PromptTuningInit,
)


class PromptEmbedding(nn.Module):
    """Prompt tuning's virtual token embeddings."""

    def __init__(self, config: PromptTuningConfig, word_embeddings: nn.Embedding) -> None:
        super().__init__()
        total = config.num_virtual_tokens * config.num_transformer_submodules
        self.embedding = nn.Embedding(total, config.token_dim)
        init = config.prompt_tuning_init
        if config.inference_mode or init is PromptTuningInit.RANDOM:
            return
        if init is PromptTuningInit.SAMPLE_VOCAB:
            ids = torch.randint(0, word_embeddings.num_embeddings, (total,), dtype=torch.long)
        else:
            ids = torch.tensor(_text_ids(config, total), dtype=torch.long)
        ids = ids.to(word_embeddings.weight.device)
        with torch.no_grad():
            rows = word_embeddings(ids).detach().clone().to(torch.float32)
        self.embedding.weight = nn.Parameter(rows)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return self.embedding(indices)


def _text_ids(config: PromptTuningConfig, total: int) -> list[int]:
    """The init text's token ids, repeated or cut to `total` virtual tokens."""
    from cove.tokenizers import AutoTokenizer  # only text initialisation needs a tokenizer

    tokenizer = AutoTokenizer.from_pretrained(config.tokenizer_name_or_path,
                                              **(config.tokenizer_kwargs or {}))
    ids = tokenizer(config.prompt_tuning_init_text)["input_ids"]
    if not ids:
        raise ValueError("prompt_tuning_init_text tokenizes to no tokens: give a longer text.")
    if len(ids) < total:
        ids = ids * math.ceil(total / len(ids))
    return ids[:total]


class PromptEncoder(nn.Module):
    """P-tuning: virtual token embeddings through an MLP (or a bidirectional LSTM and an
    MLP) of width encoder_hidden_size."""

    def __init__(self, config: PromptEncoderConfig) -> None:
        super().__init__()
        dim = config.token_dim
        hidden = config.encoder_hidden_size
        total = config.num_virtual_tokens * config.num_transformer_submodules
        self.encoder_type = config.encoder_reparameterization_type
        self.embedding = nn.Embedding(total, dim)
        if config.inference_mode:
            return
        if self.encoder_type is PromptEncoderReparameterizationType.LSTM:
            self.lstm_head = nn.LSTM(dim, hidden, num_layers=config.encoder_num_layers,
                                     dropout=config.encoder_dropout, bidirectional=True,
                                     batch_first=True)
            self.mlp_head = nn.Sequential(nn.Linear(hidden * 2, hidden * 2), nn.ReLU(),
                                          nn.Linear(hidden * 2, dim))
        else:
            self.mlp_head = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(),
                                          nn.Linear(hidden, hidden), nn.ReLU(),
                                          nn.Linear(hidden, dim))

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        x = self.embedding(indices)
        if not hasattr(self, "mlp_head"):
            return x
        if hasattr(self, "lstm_head"):
            x = self.lstm_head(x)[0]
        return self.mlp_head(x)


class PrefixEncoder(nn.Module):
    """Prefix tuning: per virtual token, every layer's key and value (num_layers * 2 *
    token_dim numbers), directly or through a Tanh MLP (prefix_projection)."""

    def __init__(self, config: PrefixTuningConfig) -> None:
        super().__init__()
        width = config.num_layers * 2 * config.token_dim
        self.prefix_projection = config.prefix_projection and not config.inference_mode
        if self.prefix_projection:
            self.embedding = nn.Embedding(config.num_virtual_tokens, config.token_dim)
            self.transform = nn.Sequential(
                nn.Linear(config.token_dim, config.encoder_hidden_size), nn.Tanh(),
                nn.Linear(config.encoder_hidden_size, width))
        else:
            self.embedding = nn.Embedding(config.num_virtual_tokens, width)

    def forward(self, prefix: torch.Tensor) -> torch.Tensor:
        if self.prefix_projection:
            return self.transform(self.embedding(prefix))
        return self.embedding(prefix)


def build_encoder(config: Any, word_embeddings: nn.Embedding) -> nn.Module:
    if isinstance(config, PromptTuningConfig):
        return PromptEmbedding(config, word_embeddings)
    if isinstance(config, PromptEncoderConfig):
        return PromptEncoder(config)
    return PrefixEncoder(config)
