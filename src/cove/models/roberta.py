"""RoBERTa and XLM-RoBERTa: BERT's encoder with padding-aware positions and their own heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cove.models.bert import BertConfig, BertEmbeddings, BertModel, _base_kwargs, _finish
from cove.models.configuration import PretrainedConfig
from cove.models.dropout import Dropout
from cove.models.layers import classification_loss, span_logits, span_loss, token_loss
from cove.models.modeling import PreTrainedModel
from cove.models.outputs import (
    MaskedLMOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)


class RobertaConfig(BertConfig):
    model_type = "roberta"
    defaults = {**BertConfig.defaults, "vocab_size": 50265, "pad_token_id": 1,
                "bos_token_id": 0, "eos_token_id": 2}


class XLMRobertaConfig(RobertaConfig):
    model_type = "xlm-roberta"
    defaults = {**RobertaConfig.defaults, "vocab_size": 30522}


def padding_aware_positions(input_ids: torch.Tensor | None, padding_idx: int, seq_len: int,
                            device: torch.device) -> torch.Tensor:
    """fairseq's positions: padding_idx + 1, + 2, ... over real tokens; padding keeps padding_idx.

    Given embeddings instead of ids, padding cannot be seen: count from padding_idx + 1.
    """
    if input_ids is None:
        return torch.arange(padding_idx + 1, seq_len + padding_idx + 1, device=device)[None]
    real = input_ids.ne(padding_idx).int()
    return (torch.cumsum(real, dim=1) * real).long() + padding_idx


class RobertaEmbeddings(BertEmbeddings):
    def __init__(self, config: RobertaConfig) -> None:
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size,
                                                padding_idx=self.padding_idx)

    def positions(self, input_ids: torch.Tensor | None, seq_len: int) -> torch.Tensor:
        return padding_aware_positions(input_ids, self.padding_idx, seq_len,
                                       self.position_ids.device)


class RobertaModel(BertModel):
    config_class = RobertaConfig
    base_model_prefix = "roberta"
    embeddings_class = RobertaEmbeddings


class RobertaLMHead(nn.Module):
    """dense -> gelu -> layer_norm -> decoder (tied to the word embeddings); MPNet's too."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Always exact gelu, whatever hidden_act says: as the original checkpoints were trained.
        return self.decoder(self.layer_norm(F.gelu(self.dense(x))))


class RobertaClassificationHead(nn.Module):
    """dense -> tanh -> out_proj on the first token (<s>); MPNet's too."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        p = getattr(config, "classifier_dropout", None)
        self.dropout = Dropout(config.hidden_dropout_prob if p is None else p)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.dropout(torch.tanh(self.dense(self.dropout(hidden[:, 0]))))
        return self.out_proj(x)


class RobertaPreTrainedModel(PreTrainedModel):
    config_class = RobertaConfig
    base_model_prefix = "roberta"


class RobertaForMaskedLM(RobertaPreTrainedModel):
    tied_weights = {"lm_head.decoder.weight": "roberta.embeddings.word_embeddings.weight",
                    "lm_head.decoder.bias": "lm_head.bias"}

    def __init__(self, config: RobertaConfig) -> None:
        super().__init__(config)
        self.roberta = RobertaModel(config, add_pooling_layer=False)
        self.lm_head = RobertaLMHead(config)
        self.post_init()

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head.decoder

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None,
                position_ids=None, inputs_embeds=None, labels=None, return_dict=None, **kwargs):
        base = self.roberta(input_ids, attention_mask, token_type_ids, position_ids,
                            inputs_embeds, **_base_kwargs(kwargs))
        logits = self.lm_head(base.last_hidden_state)
        loss = token_loss(logits, labels) if labels is not None else None
        return _finish(MaskedLMOutput, return_dict, self.config, loss, base, logits=logits)


class RobertaForSequenceClassification(RobertaPreTrainedModel):
    def __init__(self, config: RobertaConfig) -> None:
        super().__init__(config)
        self.roberta = RobertaModel(config, add_pooling_layer=False)
        self.classifier = RobertaClassificationHead(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None,
                position_ids=None, inputs_embeds=None, labels=None, return_dict=None, **kwargs):
        base = self.roberta(input_ids, attention_mask, token_type_ids, position_ids,
                            inputs_embeds, **_base_kwargs(kwargs))
        logits = self.classifier(base.last_hidden_state)
        loss = classification_loss(logits, labels, self.config) if labels is not None else None
        return _finish(SequenceClassifierOutput, return_dict, self.config, loss, base,
                       logits=logits)


class RobertaForTokenClassification(RobertaPreTrainedModel):
    def __init__(self, config: RobertaConfig) -> None:
        super().__init__(config)
        self.roberta = RobertaModel(config, add_pooling_layer=False)
        p = config.classifier_dropout
        self.dropout = Dropout(config.hidden_dropout_prob if p is None else p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None,
                position_ids=None, inputs_embeds=None, labels=None, return_dict=None, **kwargs):
        base = self.roberta(input_ids, attention_mask, token_type_ids, position_ids,
                            inputs_embeds, **_base_kwargs(kwargs))
        logits = self.classifier(self.dropout(base.last_hidden_state))
        loss = token_loss(logits, labels) if labels is not None else None
        return _finish(TokenClassifierOutput, return_dict, self.config, loss, base,
                       logits=logits)


class RobertaForQuestionAnswering(RobertaPreTrainedModel):
    def __init__(self, config: RobertaConfig) -> None:
        super().__init__(config)
        self.roberta = RobertaModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, 2)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None,
                position_ids=None, inputs_embeds=None, start_positions=None,
                end_positions=None, return_dict=None, **kwargs):
        base = self.roberta(input_ids, attention_mask, token_type_ids, position_ids,
                            inputs_embeds, **_base_kwargs(kwargs))
        start, end = span_logits(self.qa_outputs(base.last_hidden_state))
        loss = (span_loss(start, end, start_positions, end_positions)
                if start_positions is not None and end_positions is not None else None)
        return _finish(QuestionAnsweringModelOutput, return_dict, self.config, loss, base,
                       start_logits=start, end_logits=end)


# XLM-RoBERTa is RoBERTa with another vocabulary: same modules and names; these classes only
# give saved configs transformers' model_type and architectures.
class XLMRobertaModel(RobertaModel):
    config_class = XLMRobertaConfig


class XLMRobertaForMaskedLM(RobertaForMaskedLM):
    config_class = XLMRobertaConfig


class XLMRobertaForSequenceClassification(RobertaForSequenceClassification):
    config_class = XLMRobertaConfig


class XLMRobertaForTokenClassification(RobertaForTokenClassification):
    config_class = XLMRobertaConfig


class XLMRobertaForQuestionAnswering(RobertaForQuestionAnswering):
    config_class = XLMRobertaConfig
