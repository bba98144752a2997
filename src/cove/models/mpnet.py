"""MPNet: a BERT-style encoder with a learned relative-position bias shared by all layers.

The bias is added to the attention scores; here it is folded into the additive padding mask,
so the layers attend with the same `attend` (SDPA, or eager for weights) as BERT's.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cove.models.bert import (
    BertEncoder,
    BertIntermediate,
    BertPooler,
    BertResidualOutput,
    _base_kwargs,
    _finish,
)
from cove.models.configuration import PretrainedConfig
from cove.models.dropout import Dropout
from cove.models.layers import (
    check_heads,
    classification_loss,
    padding_mask,
    self_attention,
    span_logits,
    span_loss,
    token_loss,
)
from cove.models.modeling import PreTrainedModel
from cove.models.outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)
from cove.models.roberta import (
    RobertaClassificationHead,
    RobertaLMHead,
    padding_aware_positions,
)


class MPNetConfig(PretrainedConfig):
    model_type = "mpnet"
    defaults = {
        "vocab_size": 30527, "hidden_size": 768, "num_hidden_layers": 12,
        "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": 512, "initializer_range": 0.02, "layer_norm_eps": 1e-12,
        "relative_attention_num_buckets": 32, "pad_token_id": 1, "bos_token_id": 0,
        "eos_token_id": 2,
    }


# MPNet's padding index is 1 whatever pad_token_id says, and the bias buckets are computed
# for 32 whatever relative_attention_num_buckets says: as in transformers and the checkpoints.
PADDING_IDX = 1
NUM_BUCKETS = 32
MAX_DISTANCE = 128


class MPNetEmbeddings(nn.Module):
    def __init__(self, config: MPNetConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size,
                                            padding_idx=PADDING_IDX)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size,
                                                padding_idx=PADDING_IDX)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.register_buffer("position_ids", torch.arange(config.max_position_embeddings)[None],
                             persistent=False)

    def forward(self, input_ids=None, position_ids=None, inputs_embeds=None) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        if position_ids is None:
            position_ids = padding_aware_positions(input_ids, PADDING_IDX, inputs_embeds.shape[1],
                                                   inputs_embeds.device)
        return self.dropout(self.LayerNorm(inputs_embeds + self.position_embeddings(position_ids)))


class MPNetSelfAttention(nn.Module):
    def __init__(self, config: MPNetConfig) -> None:
        super().__init__()
        check_heads(config.hidden_size, config.num_attention_heads)
        self.num_heads = config.num_attention_heads
        self.q = nn.Linear(config.hidden_size, config.hidden_size)
        self.k = nn.Linear(config.hidden_size, config.hidden_size)
        self.v = nn.Linear(config.hidden_size, config.hidden_size)
        self.o = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, need_weights: bool):
        out, weights = self_attention(x, (self.q, self.k, self.v), self.num_heads, mask,
                                      self.dropout_p if self.training else 0.0, need_weights)
        return self.o(out), weights


class MPNetAttention(nn.Module):
    def __init__(self, config: MPNetConfig) -> None:
        super().__init__()
        self.attn = MPNetSelfAttention(config)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, x, mask, need_weights):
        out, weights = self.attn(x, mask, need_weights)
        return self.LayerNorm(self.dropout(out) + x), weights


class MPNetLayer(nn.Module):
    def __init__(self, config: MPNetConfig) -> None:
        super().__init__()
        self.attention = MPNetAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertResidualOutput(config, config.intermediate_size)

    def forward(self, x, mask, need_weights):
        x, weights = self.attention(x, mask, need_weights)
        return self.output(self.intermediate(x), x), weights


def relative_position_bucket(relative: torch.Tensor, num_buckets: int = NUM_BUCKETS,
                             max_distance: int = MAX_DISTANCE) -> torch.Tensor:
    """T5-style buckets: half per direction, exact for short distances, log-spaced beyond."""
    n = -relative
    num_buckets //= 2
    bucket = (n < 0).long() * num_buckets
    n = n.abs()
    max_exact = num_buckets // 2
    # log(0) for the short distances is masked out by the where() below
    large = max_exact + (torch.log(n.float() / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).long()
    large = large.clamp(max=num_buckets - 1)
    return bucket + torch.where(n < max_exact, n, large)


class MPNetEncoder(BertEncoder):
    layer_class = MPNetLayer

    def __init__(self, config: MPNetConfig) -> None:
        super().__init__(config)
        self.relative_attention_bias = nn.Embedding(config.relative_attention_num_buckets,
                                                    config.num_attention_heads)

    def position_bias(self, seq_len: int) -> torch.Tensor:
        """[1, heads, seq, seq]: the same for every layer and every sequence of the batch."""
        pos = torch.arange(seq_len, device=self.relative_attention_bias.weight.device)
        buckets = relative_position_bucket(pos[None, :] - pos[:, None])
        return self.relative_attention_bias(buckets).permute(2, 0, 1)[None]

    def forward(self, x, mask, output_attentions: bool, output_hidden_states: bool):
        bias = self.position_bias(x.shape[1]).to(x.dtype)
        mask = bias if mask is None else bias + mask
        return super().forward(x, mask, output_attentions, output_hidden_states)


class MPNetPreTrainedModel(PreTrainedModel):
    config_class = MPNetConfig
    base_model_prefix = "mpnet"


class MPNetModel(MPNetPreTrainedModel):
    def __init__(self, config: MPNetConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config)
        self.embeddings = MPNetEmbeddings(config)
        self.encoder = MPNetEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                output_attentions=None, output_hidden_states=None, return_dict=None):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds.")
        c = self.config
        output_attentions = c.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (c.output_hidden_states if output_hidden_states is None
                                else output_hidden_states)
        x = self.embeddings(input_ids, position_ids, inputs_embeds)
        mask = padding_mask(attention_mask, x.dtype)
        x, hidden, attentions = self.encoder(x, mask, output_attentions, output_hidden_states)
        pooled = self.pooler(x) if self.pooler is not None else None
        out = BaseModelOutputWithPooling(last_hidden_state=x, pooler_output=pooled,
                                         hidden_states=hidden, attentions=attentions)
        return out if (c.return_dict if return_dict is None else return_dict) else out.to_tuple()


class MPNetForMaskedLM(MPNetPreTrainedModel):
    tied_weights = {"lm_head.decoder.weight": "mpnet.embeddings.word_embeddings.weight",
                    "lm_head.decoder.bias": "lm_head.bias"}

    def __init__(self, config: MPNetConfig) -> None:
        super().__init__(config)
        self.mpnet = MPNetModel(config, add_pooling_layer=False)
        self.lm_head = RobertaLMHead(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head.decoder

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                labels=None, return_dict=None, **kwargs):
        base = self.mpnet(input_ids, attention_mask, position_ids, inputs_embeds,
                          **_base_kwargs(kwargs))
        logits = self.lm_head(base.last_hidden_state)
        loss = token_loss(logits, labels) if labels is not None else None
        return _finish(MaskedLMOutput, return_dict, self.config, loss, base, logits=logits)


class MPNetForSequenceClassification(MPNetPreTrainedModel):
    def __init__(self, config: MPNetConfig) -> None:
        super().__init__(config)
        self.mpnet = MPNetModel(config, add_pooling_layer=False)
        self.classifier = RobertaClassificationHead(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                labels=None, return_dict=None, **kwargs):
        base = self.mpnet(input_ids, attention_mask, position_ids, inputs_embeds,
                          **_base_kwargs(kwargs))
        logits = self.classifier(base.last_hidden_state)
        loss = classification_loss(logits, labels, self.config) if labels is not None else None
        return _finish(SequenceClassifierOutput, return_dict, self.config, loss, base,
                       logits=logits)


class MPNetForTokenClassification(MPNetPreTrainedModel):
    def __init__(self, config: MPNetConfig) -> None:
        super().__init__(config)
        self.mpnet = MPNetModel(config, add_pooling_layer=False)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                labels=None, return_dict=None, **kwargs):
        base = self.mpnet(input_ids, attention_mask, position_ids, inputs_embeds,
                          **_base_kwargs(kwargs))
        logits = self.classifier(self.dropout(base.last_hidden_state))
        loss = token_loss(logits, labels) if labels is not None else None
        return _finish(TokenClassifierOutput, return_dict, self.config, loss, base,
                       logits=logits)


class MPNetForQuestionAnswering(MPNetPreTrainedModel):
    def __init__(self, config: MPNetConfig) -> None:
        super().__init__(config)
        self.mpnet = MPNetModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, inputs_embeds=None,
                start_positions=None, end_positions=None, return_dict=None, **kwargs):
        base = self.mpnet(input_ids, attention_mask, position_ids, inputs_embeds,
                          **_base_kwargs(kwargs))
        start, end = span_logits(self.qa_outputs(base.last_hidden_state))
        loss = (span_loss(start, end, start_positions, end_positions)
                if start_positions is not None and end_positions is not None else None)
        return _finish(QuestionAnsweringModelOutput, return_dict, self.config, loss, base,
                       start_logits=start, end_logits=end)
