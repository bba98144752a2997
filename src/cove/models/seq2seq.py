"""What encoder-decoder families share: their outputs and the decoder's cache (self-attention
keys and values appended per step, cross-attention keys and values computed once)."""

from __future__ import annotations

import torch

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
        """Beam search: row i takes row index[i]'s content."""
        self.self_attention_cache.reorder(index)
        index = index.reshape(-1).long()
        for layer, kv in enumerate(self.cross_attention_cache):
            if kv is not None:
                i = index.to(kv[0].device)
                self.cross_attention_cache[layer] = (kv[0].index_select(0, i),
                                                     kv[1].index_select(0, i))
