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
from cove.models.distilbert import (
    DistilBertConfig,
    DistilBertForMaskedLM,
    DistilBertForQuestionAnswering,
    DistilBertForSequenceClassification,
    DistilBertForTokenClassification,
    DistilBertModel,
)
from cove.models.modeling import PreTrainedModel
from cove.models.mpnet import (
    MPNetConfig,
    MPNetForMaskedLM,
    MPNetForQuestionAnswering,
    MPNetForSequenceClassification,
    MPNetForTokenClassification,
    MPNetModel,
)
from cove.models.roberta import (
    RobertaConfig,
    RobertaForMaskedLM,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    RobertaModel,
    XLMRobertaConfig,
    XLMRobertaForMaskedLM,
    XLMRobertaForQuestionAnswering,
    XLMRobertaForSequenceClassification,
    XLMRobertaForTokenClassification,
    XLMRobertaModel,
)

__all__ = [
    "AutoConfig", "AutoModel", "AutoModelForMaskedLM", "AutoModelForQuestionAnswering",
    "AutoModelForSequenceClassification", "AutoModelForTokenClassification", "BertConfig",
    "BertForMaskedLM", "BertForQuestionAnswering", "BertForSequenceClassification",
    "BertForTokenClassification", "BertModel", "CheckpointError", "DistilBertConfig",
    "DistilBertForMaskedLM", "DistilBertForQuestionAnswering",
    "DistilBertForSequenceClassification", "DistilBertForTokenClassification", "DistilBertModel",
    "MPNetConfig", "MPNetForMaskedLM", "MPNetForQuestionAnswering",
    "MPNetForSequenceClassification", "MPNetForTokenClassification", "MPNetModel",
    "PreTrainedModel", "PretrainedConfig", "RobertaConfig", "RobertaForMaskedLM",
    "RobertaForQuestionAnswering", "RobertaForSequenceClassification",
    "RobertaForTokenClassification", "RobertaModel", "XLMRobertaConfig", "XLMRobertaForMaskedLM",
    "XLMRobertaForQuestionAnswering", "XLMRobertaForSequenceClassification",
    "XLMRobertaForTokenClassification", "XLMRobertaModel",
]
