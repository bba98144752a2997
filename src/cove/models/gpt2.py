"""GPT-2, with transformers' module and parameter names and checkpoint layout.

GPT-2's projections are "Conv1D": a linear layer whose weight is stored [in, out], the
transpose of nn.Linear's. Cove keeps that layout so checkpoints load and save unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cove.generation import GenerationMixin
from cove.models.cache import KVCache
from cove.models.configuration import PretrainedConfig
from cove.models.layers import (
    activation,
    attend,
    causal_lm_output,
    causal_mask,
    check_heads,
    decoder_inputs,
    decoder_output,
    merge_heads,
    run_block,
    sequence_classifier_output,
    split_heads,
)
from cove.models.modeling import PreTrainedModel


class GPT2Config(PretrainedConfig):
    model_type = "gpt2"
    attribute_map = {"hidden_size": "n_embd", "max_position_embeddings": "n_positions",
                     "num_attention_heads": "n_head", "num_hidden_layers": "n_layer"}
    defaults = {
        "vocab_size": 50257, "n_positions": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12,
        "n_inner": None, "activation_function": "gelu_new", "resid_pdrop": 0.1,
        "embd_pdrop": 0.1, "attn_pdrop": 0.1, "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02, "summary_type": "cls_index", "summary_use_proj": True,
        "summary_activation": None, "summary_proj_to_labels": True,
        "summary_first_dropout": 0.1, "scale_attn_weights": True, "use_cache": True,
        "bos_token_id": 50256, "eos_token_id": 50256, "pad_token_id": None,
        "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "add_cross_attention": False, "tie_word_embeddings": True,
    }


class Conv1D(nn.Module):
    """x @ weight + bias with weight [in, out] (GPT-2's checkpoint layout)."""

    def __init__(self, out_features: int, in_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(
            *x.shape[:-1], -1)


class GPT2Attention(nn.Module):
    def __init__(self, config: GPT2Config, layer_idx: int) -> None:
        super().__init__()
        width = config.hidden_size
        check_heads(width, config.num_attention_heads)
        self.layer_idx, self.num_heads = layer_idx, config.num_attention_heads
        self.scale = (width // self.num_heads) ** -0.5 if config.scale_attn_weights else 1.0
        if config.scale_attn_by_inverse_layer_idx:
            self.scale /= layer_idx + 1
        self.c_attn = Conv1D(3 * width, width)
        self.c_proj = Conv1D(width, width)
        self.attn_dropout = nn.Dropout(config.attn_pdrop)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | None,
                need_weights: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        q, k, v = (split_heads(t, self.num_heads)
                   for t in self.c_attn(x).split(x.shape[-1], dim=2))
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        out, weights = attend(q, k, v, mask, self.attn_dropout.p if self.training else 0.0,
                              need_weights, scale=self.scale, causal=True)
        return self.resid_dropout(self.c_proj(merge_heads(out))), weights


class GPT2MLP(nn.Module):
    def __init__(self, intermediate_size: int, config: GPT2Config) -> None:
        super().__init__()
        self.c_fc = Conv1D(intermediate_size, config.hidden_size)
        self.c_proj = Conv1D(config.hidden_size, intermediate_size)
        self.act = activation(config.activation_function)
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class GPT2Block(nn.Module):
    def __init__(self, config: GPT2Config, layer_idx: int) -> None:
        super().__init__()
        width = config.hidden_size
        self.ln_1 = nn.LayerNorm(width, eps=config.layer_norm_epsilon)
        self.attn = GPT2Attention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(width, eps=config.layer_norm_epsilon)
        self.mlp = GPT2MLP(config.n_inner or 4 * width, config)

    def forward(self, x, mask, cache, need_weights):
        attn, weights = self.attn(self.ln_1(x), mask, cache, need_weights)
        x = x + attn
        return x + self.mlp(self.ln_2(x)), weights


class GPT2PreTrainedModel(PreTrainedModel):
    config_class = GPT2Config
    base_model_prefix = "transformer"
    # Old checkpoints carry each layer's causal-mask buffers: rebuilt here, never loaded.
    ignore_unexpected = [r"position_ids$", r"\.attn\.(masked_)?bias$"]

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, Conv1D):
            nn.init.normal_(module.weight, std=std)
            nn.init.zeros_(module.bias)
        if isinstance(module, (GPT2Attention, GPT2MLP)):  # scaled for the residual stream
            nn.init.normal_(module.c_proj.weight, std=std / math.sqrt(2 * self.config.n_layer))

    def new_cache(self, batch_size: int, max_length: int, dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None) -> KVCache:
        """An empty KV cache for `batch_size` rows of up to `max_length` positions."""
        c = self.config
        return KVCache(c.n_layer, batch_size, c.n_head, c.n_embd // c.n_head, max_length,
                       dtype=dtype or self.dtype, device=device or self.device)


class GPT2Model(GPT2PreTrainedModel):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        if config.add_cross_attention:
            raise ValueError("add_cross_attention=True (GPT-2 inside an encoder-decoder) is not "
                             "supported yet.")
        self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
        self.wpe = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList(GPT2Block(config, i) for i in range(config.num_hidden_layers))
        self.ln_f = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_epsilon)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def forward(self, input_ids=None, attention_mask=None, position_ids=None,
                past_key_values: KVCache | None = None, use_cache: bool = False,
                inputs_embeds=None, output_hidden_states=None, output_attentions=None,
                return_dict=None, *, token_type_ids=None):
        inputs = decoder_inputs(self, self.wte, input_ids, inputs_embeds, position_ids,
                                past_key_values, use_cache, output_hidden_states,
                                output_attentions)
        x = inputs.x + self.wpe(inputs.position_ids)
        if token_type_ids is not None:  # GPT-2 embeds token types with the word embeddings
            x = x + self.wte(token_type_ids)
        x = self.drop(x)
        mask = causal_mask(attention_mask, x.shape[1], inputs.kv_len, None, x.device,
                           position_ids)
        hidden, attentions = [], []
        for block in self.h:
            if inputs.output_hidden_states:
                hidden.append(x)
            x, weights = run_block(block, x, mask, inputs.cache, inputs.output_attentions)
            attentions.append(weights)
        return decoder_output(self.config, return_dict, self.ln_f(x), inputs, hidden, attentions)


class GPT2LMHeadModel(GenerationMixin, GPT2PreTrainedModel):
    tied_weights = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.wte

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(self, input_ids=None, attention_mask=None, position_ids=None,
                past_key_values: KVCache | None = None, use_cache: bool = False,
                inputs_embeds=None, labels=None, output_hidden_states=None,
                output_attentions=None, return_dict=None, logits_to_keep: int = 0, *,
                token_type_ids=None):
        base = self.transformer(input_ids, attention_mask, position_ids, past_key_values,
                                use_cache, inputs_embeds, output_hidden_states,
                                output_attentions, return_dict=True,
                                token_type_ids=token_type_ids)
        return causal_lm_output(self.lm_head, self.config, base, labels, logits_to_keep,
                                return_dict)


class GPT2ForSequenceClassification(GPT2PreTrainedModel):
    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.score = nn.Linear(config.hidden_size, config.num_labels, bias=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None,
                past_key_values: KVCache | None = None, use_cache: bool = False,
                inputs_embeds=None, labels=None, output_hidden_states=None,
                output_attentions=None, return_dict=None, *, token_type_ids=None):
        base = self.transformer(input_ids, attention_mask, position_ids, past_key_values,
                                use_cache, inputs_embeds, output_hidden_states,
                                output_attentions, return_dict=True,
                                token_type_ids=token_type_ids)
        return sequence_classifier_output(self.score, self.config, base, input_ids, labels,
                                          return_dict)
