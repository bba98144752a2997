"""BERT (and the encoder blocks RoBERTa reuses), with transformers' module and parameter names."""

from __future__ import annotations

import torch
from torch import nn

from cove.models.configuration import PretrainedConfig
from cove.models.dropout import Dropout
from cove.models.layers import (
    activation,
    check_heads,
    classification_loss,
    padding_mask,
    run_block,
    self_attention,
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


class BertConfig(PretrainedConfig):
    model_type = "bert"
    defaults = {
        "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
        "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": 512, "type_vocab_size": 2, "initializer_range": 0.02,
        "layer_norm_eps": 1e-12, "pad_token_id": 0, "position_embedding_type": "absolute",
        "classifier_dropout": None,
    }


class BertEmbeddings(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        if config.position_embedding_type != "absolute":
            raise ValueError(
                f"position_embedding_type={config.position_embedding_type!r} is not supported "
                "yet: only 'absolute'."
            )
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size,
                                            padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)
        n = config.max_position_embeddings
        self.register_buffer("position_ids", torch.arange(n).unsqueeze(0), persistent=False)
        self.register_buffer("token_type_ids", torch.zeros(1, n, dtype=torch.long),
                             persistent=False)

    def positions(self, input_ids: torch.Tensor | None, seq_len: int) -> torch.Tensor:
        return self.position_ids[:, :seq_len]

    def forward(self, input_ids=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        batch, seq_len = inputs_embeds.shape[:2]
        if position_ids is None:
            position_ids = self.positions(input_ids, seq_len)
        if token_type_ids is None:
            token_type_ids = self.token_type_ids[:, :seq_len].expand(batch, seq_len)
        x = (inputs_embeds + self.token_type_embeddings(token_type_ids)
             + self.position_embeddings(position_ids))
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        check_heads(config.hidden_size, config.num_attention_heads)
        self.num_heads = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, need_weights: bool):
        return self_attention(x, (self.query, self.key, self.value), self.num_heads, mask,
                              self.dropout_p if self.training else 0.0, need_weights)


class BertResidualOutput(nn.Module):
    """dense -> dropout -> LayerNorm(x + residual): both BertSelfOutput and BertOutput."""

    def __init__(self, config: BertConfig, in_features: int) -> None:
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertResidualOutput(config, config.hidden_size)

    def forward(self, x, mask, need_weights):
        out, weights = self.self(x, mask, need_weights)
        return self.output(out, x), weights


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertResidualOutput(config, config.intermediate_size)

    def forward(self, x, mask, need_weights):
        x, weights = self.attention(x, mask, need_weights)
        return self.output(self.intermediate(x), x), weights


class BertEncoder(nn.Module):
    # Families with BERT's layer loop but other layers (DistilBERT, MPNet) set their own.
    layer_class: type[nn.Module] = BertLayer

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(self.layer_class(config)
                                   for _ in range(config.num_hidden_layers))

    def forward(self, x, mask, output_attentions: bool, output_hidden_states: bool):
        hidden, attentions = ([x] if output_hidden_states else None), []
        for layer in self.layer:
            x, weights = run_block(layer, x, mask, output_attentions)
            if output_hidden_states:
                hidden.append(x)
            if output_attentions:
                attentions.append(weights)
        return x, (tuple(hidden) if hidden else None), (tuple(attentions) or None)


class BertPooler(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden[:, 0]))


class BertPreTrainedModel(PreTrainedModel):
    config_class = BertConfig
    base_model_prefix = "bert"


class BertModel(BertPreTrainedModel):
    embeddings_class = BertEmbeddings

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True) -> None:
        super().__init__(config)
        self.embeddings = self.embeddings_class(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None,
                position_ids=None, inputs_embeds=None, output_attentions=None,
                output_hidden_states=None, return_dict=None):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds.")
        c = self.config
        output_attentions = c.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (c.output_hidden_states if output_hidden_states is None
                                else output_hidden_states)
        x = self.embeddings(input_ids, token_type_ids, position_ids, inputs_embeds)
        mask = padding_mask(attention_mask, x.dtype)
        x, hidden, attentions = self.encoder(x, mask, output_attentions, output_hidden_states)
        pooled = self.pooler(x) if self.pooler is not None else None
        out = BaseModelOutputWithPooling(last_hidden_state=x, pooler_output=pooled,
                                         hidden_states=hidden, attentions=attentions)
        return out if (c.return_dict if return_dict is None else return_dict) else out.to_tuple()


def _finish(output_cls, return_dict, config, loss, base, **fields):
    out = output_cls(loss=loss, **fields, hidden_states=base.hidden_states,
                     attentions=base.attentions)
    return out if (config.return_dict if return_dict is None else return_dict) else out.to_tuple()


def _base_kwargs(kwargs: dict) -> dict:
    kwargs["return_dict"] = True
    return kwargs


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = activation(config.hidden_act)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.transform_act_fn(self.dense(x)))


class BertLMPredictionHead(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(x))


class BertOnlyMLMHead(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.predictions = BertLMPredictionHead(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictions(x)


class BertForMaskedLM(BertPreTrainedModel):
    tied_weights = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight",
                    "cls.predictions.decoder.bias": "cls.predictions.bias"}

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.cls.predictions.decoder

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None,
                position_ids=None, inputs_embeds=None, labels=None, return_dict=None, **kwargs):
        base = self.bert(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                         **_base_kwargs(kwargs))
        logits = self.cls(base.last_hidden_state)
        loss = token_loss(logits, labels) if labels is not None else None
        return _finish(MaskedLMOutput, return_dict, self.config, loss, base, logits=logits)


class BertForSequenceClassification(BertPreTrainedModel):
    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.bert = BertModel(config)
        p = config.classifier_dropout
        self.dropout = Dropout(config.hidden_dropout_prob if p is None else p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None,
                position_ids=None, inputs_embeds=None, labels=None, return_dict=None, **kwargs):
        base = self.bert(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                         **_base_kwargs(kwargs))
        logits = self.classifier(self.dropout(base.pooler_output))
        loss = classification_loss(logits, labels, self.config) if labels is not None else None
        return _finish(SequenceClassifierOutput, return_dict, self.config, loss, base,
                       logits=logits)


class BertForTokenClassification(BertPreTrainedModel):
    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        p = config.classifier_dropout
        self.dropout = Dropout(config.hidden_dropout_prob if p is None else p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None,
                position_ids=None, inputs_embeds=None, labels=None, return_dict=None, **kwargs):
        base = self.bert(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                         **_base_kwargs(kwargs))
        logits = self.classifier(self.dropout(base.last_hidden_state))
        loss = token_loss(logits, labels) if labels is not None else None
        return _finish(TokenClassifierOutput, return_dict, self.config, loss, base,
                       logits=logits)


class BertForQuestionAnswering(BertPreTrainedModel):
    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None,
                position_ids=None, inputs_embeds=None, start_positions=None,
                end_positions=None, return_dict=None, **kwargs):
        base = self.bert(input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds,
                         **_base_kwargs(kwargs))
        start, end = self.qa_outputs(base.last_hidden_state).split(1, dim=-1)
        start, end = start.squeeze(-1).contiguous(), end.squeeze(-1).contiguous()
        loss = (span_loss(start, end, start_positions, end_positions)
                if start_positions is not None and end_positions is not None else None)
        return _finish(QuestionAnsweringModelOutput, return_dict, self.config, loss, base,
                       start_logits=start, end_logits=end)
