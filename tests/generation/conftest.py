"""A tiny deterministic causal LM with Cove's decoder interface, and a tiny byte-level tokenizer.

`FakeCausalLM` is a one-layer transformer (learned absolute positions, so position ids matter;
attention over a preallocated KVCache, so cache handling matters) with large random weights,
so its next-token distributions are peaked and greedy choices have no near-ties. It follows
the forward interface of Cove's causal LMs: attention_mask [batch, past + new] of 1/0 (left
padding), position_ids, past_key_values (KVCache), logits_to_keep, and `new_cache`.
"""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from torch import nn
from torch.nn import functional as F

from cove.generation import GenerationMixin
from cove.generation.stopping_criteria import byte_level_alphabet
from cove.models.cache import KVCache
from cove.models.configuration import PretrainedConfig
from cove.models.modeling import PreTrainedModel
from cove.models.outputs import ModelOutput
from cove.tokenizers import PreTrainedTokenizerFast

# Words the tiny tokenizer merges into single tokens (so texts cross token boundaries in
# interesting ways: "st" + "opera", "sto" + "pper", ...).
MERGES = [("s", "t"), ("o", "p"), ("st", "op"), ("e", "r"), ("op", "er"), ("p", "p"),
          ("pp", "er"), ("s", "to"), ("t", "o"), ("a", "t"), ("Ġ", "t"), ("h", "e"), ("Ġt", "he"),
          ("Ġ", "a"), ("l", "a"), ("la", "s"), ("Ġ", "s"), ("o", "n"), ("Ġ", "on")]


def make_tokenizer() -> PreTrainedTokenizerFast:
    alphabet = [byte_level_alphabet()[b] for b in range(256)]
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    merges = []
    for a, b in MERGES:
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
        merges.append((a, b))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend)
    tok.add_special_tokens({"eos_token": "<eos>", "pad_token": "<pad>"})
    return tok


class FakeConfig(PretrainedConfig):
    model_type = "fake-causal-lm"
    defaults = {"vocab_size": 280, "hidden_size": 32, "num_attention_heads": 2,
                "max_position_embeddings": 256, "tie_word_embeddings": False,
                "init_std": 1.0, "seed": 0}


class FakeCausalLM(GenerationMixin, PreTrainedModel):
    config_class = FakeConfig

    def __init__(self, config: FakeConfig) -> None:
        super().__init__(config)
        h = config.hidden_size
        self.heads = config.num_attention_heads
        self.head_dim = h // self.heads
        self.embed = nn.Embedding(config.vocab_size, h)
        self.pos = nn.Embedding(config.max_position_embeddings, h)
        self.qkv = nn.Linear(h, 3 * h)
        self.out = nn.Linear(h, h)
        self.lm_head = nn.Linear(h, config.vocab_size, bias=False)
        # Added to the logits: lets a test keep the model to a part of the vocabulary.
        self.register_buffer("logit_bias", torch.zeros(config.vocab_size), persistent=False)
        self.forward_calls = 0
        # Large weights: peaked next-token distributions (logits with std ~3).
        gen = torch.Generator().manual_seed(config.seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                scale = 1.0 if name.startswith(("embed", "pos")) or p.dim() == 1 \
                    else p.shape[-1] ** -0.5
                if name.startswith("lm_head"):
                    scale *= 3.0
                p.copy_(torch.randn(p.shape, generator=gen) * scale * config.init_std)

    def new_cache(self, batch_size: int, max_length: int, dtype=None, device=None) -> KVCache:
        return KVCache(1, batch_size, self.heads, self.head_dim, max_length,
                       dtype=dtype or self.embed.weight.dtype, device=device)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None,
                past_key_values: KVCache | None = None, use_cache=False, inputs_embeds=None,
                labels=None, output_hidden_states=None, output_attentions=None,
                return_dict=None, logits_to_keep: int = 0):
        self.forward_calls += 1
        x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
        batch, new = x.shape[:2]
        past = past_key_values.length if past_key_values is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + new, device=x.device)[None].expand(batch, -1)
        x = x + self.pos(position_ids)
        q, k, v = self.qkv(x).view(batch, new, 3, self.heads, self.head_dim).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        if past_key_values is not None:
            k, v = past_key_values.update(0, k, v)
        total = k.shape[2]
        query_index = torch.arange(past, past + new, device=x.device)[:, None]
        key_index = torch.arange(total, device=x.device)[None, :]
        allowed = key_index <= query_index  # [new, total]
        if attention_mask is not None:
            allowed = allowed[None] & attention_mask[:, None, :total].bool()
            allowed = allowed | (key_index == query_index)[None]  # pad rows see themselves
            allowed = allowed[:, None]
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        hidden = x + self.out(attn.transpose(1, 2).reshape(batch, new, -1))
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden) + self.logit_bias
        return ModelOutput(logits=logits, past_key_values=past_key_values if use_cache else None,
                           hidden_states=(x, hidden) if output_hidden_states else None)


class BigramLM(GenerationMixin, PreTrainedModel):
    """Next-token log-probabilities from a fixed table indexed by the last token (no cache)."""

    config_class = FakeConfig

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__(FakeConfig(vocab_size=table.shape[0]))
        self.table = nn.Parameter(table.clone(), requires_grad=False)

    def forward(self, input_ids=None, attention_mask=None, position_ids=None,
                past_key_values=None, use_cache=False, inputs_embeds=None, labels=None,
                output_hidden_states=None, output_attentions=None, return_dict=None,
                logits_to_keep: int = 0):
        logits = self.table[input_ids]
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return ModelOutput(logits=logits)


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
    return make_tokenizer()


def make_model(tokenizer, seed: int = 0, text_only: bool = True) -> FakeCausalLM:
    """A fake LM over the tokenizer's vocabulary; text_only: it (almost) only writes tokens
    made of lowercase letters and spaces, so its output decodes to readable text."""
    config = FakeConfig(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id, seed=seed)
    model = FakeCausalLM(config).eval()
    if text_only:
        letters = set("abcdefghijklmnopqrstuvwxyz ")
        for i in range(len(tokenizer)):
            if not set(tokenizer.decode([i])) <= letters:
                model.logit_bias[i] = -30.0
    return model


@pytest.fixture()
def model(tokenizer) -> FakeCausalLM:
    return make_model(tokenizer)
