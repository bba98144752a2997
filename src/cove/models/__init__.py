"""cove.models: configurations, checkpoint loading and model families (transformers' names)."""

from cove.models.auto import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)
from cove.models.bert import (
    BertConfig,
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
)
from cove.models.checkpoint import CheckpointError
from cove.models.configuration import PretrainedConfig
from cove.models.modeling import PreTrainedModel

__all__ = [
    "AutoConfig", "AutoModel", "AutoModelForMaskedLM", "AutoModelForQuestionAnswering",
    "AutoModelForSequenceClassification", "AutoModelForTokenClassification", "BertConfig",
    "BertForMaskedLM", "BertForQuestionAnswering", "BertForSequenceClassification",
    "BertForTokenClassification", "BertModel", "CheckpointError", "PreTrainedModel",
    "PretrainedConfig",
]
