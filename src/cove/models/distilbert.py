"""DistilBERT: a 6-layer BERT without token types or pooler, with its own module names."""

from __future__ import annotations

import torch
from torch import nn

from cove.models.bert import BertEncoder, _base_kwargs, _finish
from cove.models.configuration import PretrainedConfig
from cove.models.dropout import Dropout
from cove.models.layers import (
    activation,
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
    BaseModelOutput,
    MaskedLMOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)


class DistilBertConfig(PretrainedConfig):
    model_type = "distilbert"
    attribute_map = {"hidden_size": "dim", "num_attention_heads": "n_heads",
                     "num_hidden_layers": "n_layers"}
    defaults = {
        "vocab_size": 30522, "max_position_embeddings": 512, "sinusoidal_pos_embds": False,
        "n_layers": 6, "n_heads": 12, "dim": 768, "hidden_dim": 3072, "dropout": 0.1,
        "attention_dropout": 0.1, "activation": "gelu", "initializer_range": 0.02,
        "qa_dropout": 0.1, "seq_classif_dropout": 0.2, "pad_token_id": 0,
        # In the original checkpoints' config.json; the MLM head is tied by tie_word_embeddings.
        "tie_weights_": True,
    }


LAYER_NORM_EPS = 1e-12  # fixed in DistilBERT, not a config field


def sinusoidal_positions(n_pos: int, dim: int) -> torch.Tensor:
    """The fixed table of sinusoidal_pos_embds=True: sin on even columns, cos on odd ones."""
    pos = torch.arange(n_pos, dtype=torch.float64)[:, None]
    j = torch.arange(dim)
    angle = pos / torch.pow(10000.0, (2 * (j // 2) / dim).to(torch.float64))
    table = torch.empty(n_pos, dim)
    table[:, 0::2] = torch.sin(angle[:, 0::2]).float()
    table[:, 1::2] = torch.cos(angle[:, 1::2]).float()
    return table


class DistilBertEmbeddings(nn.Module):
    def __init__(self, config: DistilBertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.dim,
                                            padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.dim)
        self.LayerNorm = nn.LayerNorm(config.dim, eps=LAYER_NORM_EPS)
        self.dropout = Dropout(config.dropout)
        self.register_buffer("position_ids", torch.arange(config.max_position_embeddings)[None],
                             persistent=False)

    def forward(self, input_ids=None, inputs_embeds=None, position_ids=None) -> torch.Tensor:
        if inputs_embeds is None:
            inputs_embeds = self.word_embeddings(input_ids)
        if position_ids is None:
            position_ids = self.position_ids[:, :inputs_embeds.shape[1]]
        return self.dropout(self.LayerNorm(inputs_embeds + self.position_embeddings(position_ids)))


class DistilBertSelfAttention(nn.Module):
    def __init__(self, config: DistilBertConfig) -> None:
        super().__init__()
        check_heads(config.dim, config.n_heads)
        self.n_heads = config.n_heads
        self.q_lin = nn.Linear(config.dim, config.dim)
        self.k_lin = nn.Linear(config.dim, config.dim)
        self.v_lin = nn.Linear(config.dim, config.dim)
        self.out_lin = nn.Linear(config.dim, config.dim)
        self.dropout_p = config.attention_dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, need_weights: bool):
        out, weights = self_attention(x, (self.q_lin, self.k_lin, self.v_lin), self.n_heads,
                                      mask, self.dropout_p if self.training else 0.0,
                                      need_weights)
        return self.out_lin(out), weights


class FFN(nn.Module):
    def __init__(self, config: DistilBertConfig) -> None:
        super().__init__()
        self.lin1 = nn.Linear(config.dim, config.hidden_dim)
        self.lin2 = nn.Linear(config.hidden_dim, config.dim)
        self.activation = activation(config.activation)
        self.dropout = Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.lin2(self.activation(self.lin1(x))))


class TransformerBlock(nn.Module):
    """Post-norm block: attention and FFN, each followed by LayerNorm(x + residual)."""

    def __init__(self, config: DistilBertConfig) -> None:
        super().__init__()
        self.attention = DistilBertSelfAttention(config)
        self.sa_layer_norm = nn.LayerNorm(config.dim, eps=LAYER_NORM_EPS)
        self.ffn = FFN(config)
        self.output_layer_norm = nn.LayerNorm(config.dim, eps=LAYER_NORM_EPS)

    def forward(self, x, mask, need_weights):
        out, weights = self.attention(x, mask, need_weights)
        x = self.sa_layer_norm(out + x)
        return self.output_layer_norm(self.ffn(x) + x), weights


class Transformer(BertEncoder):
    """BERT's layer loop over DistilBERT blocks (module `transformer.layer.N`)."""

    layer_class = TransformerBlock


class DistilBertPreTrainedModel(PreTrainedModel):
    config_class = DistilBertConfig
    base_model_prefix = "distilbert"

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, DistilBertEmbeddings) and self.config.sinusoidal_pos_embds:
            table = module.position_embeddings.weight
            if not table.is_meta:  # when loading, the checkpoint brings the table
                with torch.no_grad():
                    table.copy_(sinusoidal_positions(*table.shape))


class DistilBertModel(DistilBertPreTrainedModel):
    def __init__(self, config: DistilBertConfig) -> None:
        super().__init__(config)
        self.embeddings = DistilBertEmbeddings(config)
        self.transformer = Transformer(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embeddings.word_embeddings

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None,
                position_ids=None, output_attentions=None, output_hidden_states=None,
                return_dict=None):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids and inputs_embeds.")
        c = self.config
        output_attentions = c.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (c.output_hidden_states if output_hidden_states is None
                                else output_hidden_states)
        x = self.embeddings(input_ids, inputs_embeds, position_ids)
        mask = padding_mask(attention_mask, x.dtype)
        x, hidden, attentions = self.transformer(x, mask, output_attentions, output_hidden_states)
        out = BaseModelOutput(last_hidden_state=x, hidden_states=hidden, attentions=attentions)
        return out if (c.return_dict if return_dict is None else return_dict) else out.to_tuple()


class DistilBertForMaskedLM(DistilBertPreTrainedModel):
    tied_weights = {"vocab_projector.weight": "distilbert.embeddings.word_embeddings.weight"}

    def __init__(self, config: DistilBertConfig) -> None:
        super().__init__(config)
        self.activation = activation(config.activation)
        self.distilbert = DistilBertModel(config)
        self.vocab_transform = nn.Linear(config.dim, config.dim)
        self.vocab_layer_norm = nn.LayerNorm(config.dim, eps=LAYER_NORM_EPS)
        self.vocab_projector = nn.Linear(config.dim, config.vocab_size)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.vocab_projector

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None,
                position_ids=None, return_dict=None, **kwargs):
        base = self.distilbert(input_ids, attention_mask, inputs_embeds, position_ids,
                               **_base_kwargs(kwargs))
        x = self.vocab_layer_norm(self.activation(self.vocab_transform(base.last_hidden_state)))
        logits = self.vocab_projector(x)
        loss = token_loss(logits, labels) if labels is not None else None
        return _finish(MaskedLMOutput, return_dict, self.config, loss, base, logits=logits)


class DistilBertForSequenceClassification(DistilBertPreTrainedModel):
    def __init__(self, config: DistilBertConfig) -> None:
        super().__init__(config)
        self.distilbert = DistilBertModel(config)
        self.pre_classifier = nn.Linear(config.dim, config.dim)
        self.classifier = nn.Linear(config.dim, config.num_labels)
        self.dropout = Dropout(config.seq_classif_dropout)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None,
                position_ids=None, return_dict=None, **kwargs):
        base = self.distilbert(input_ids, attention_mask, inputs_embeds, position_ids,
                               **_base_kwargs(kwargs))
        pooled = torch.relu(self.pre_classifier(base.last_hidden_state[:, 0]))
        logits = self.classifier(self.dropout(pooled))
        loss = classification_loss(logits, labels, self.config) if labels is not None else None
        return _finish(SequenceClassifierOutput, return_dict, self.config, loss, base,
                       logits=logits)


class DistilBertForTokenClassification(DistilBertPreTrainedModel):
    def __init__(self, config: DistilBertConfig) -> None:
        super().__init__(config)
        self.distilbert = DistilBertModel(config)
        self.dropout = Dropout(config.dropout)
        self.classifier = nn.Linear(config.dim, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, labels=None,
                position_ids=None, return_dict=None, **kwargs):
        base = self.distilbert(input_ids, attention_mask, inputs_embeds, position_ids,
                               **_base_kwargs(kwargs))
        logits = self.classifier(self.dropout(base.last_hidden_state))
        loss = token_loss(logits, labels) if labels is not None else None
        return _finish(TokenClassifierOutput, return_dict, self.config, loss, base,
                       logits=logits)


class DistilBertForQuestionAnswering(DistilBertPreTrainedModel):
    def __init__(self, config: DistilBertConfig) -> None:
        super().__init__(config)
        if config.num_labels != 2:
            raise ValueError(f"config.num_labels should be 2, but it is {config.num_labels}")
        self.distilbert = DistilBertModel(config)
        self.qa_outputs = nn.Linear(config.dim, 2)
        self.dropout = Dropout(config.qa_dropout)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None,
                start_positions=None, end_positions=None, position_ids=None, return_dict=None,
                **kwargs):
        base = self.distilbert(input_ids, attention_mask, inputs_embeds, position_ids,
                               **_base_kwargs(kwargs))
        start, end = span_logits(self.qa_outputs(self.dropout(base.last_hidden_state)))
        loss = (span_loss(start, end, start_positions, end_positions)
                if start_positions is not None and end_positions is not None else None)
        return _finish(QuestionAnsweringModelOutput, return_dict, self.config, loss, base,
                       start_logits=start, end_logits=end)
