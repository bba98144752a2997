"""cove.models: configurations, checkpoint loading and model families (transformers' names)."""

from cove.models.auto import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
    AutoModelForSeq2SeqLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)
from cove.models.bart import (
    BartConfig,
    BartForConditionalGeneration,
    BartForQuestionAnswering,
    BartForSequenceClassification,
    BartModel,
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
from cove.models.configuration import PreTrainedConfig, PretrainedConfig
from cove.models.distilbert import (
    DistilBertConfig,
    DistilBertForMaskedLM,
    DistilBertForQuestionAnswering,
    DistilBertForSequenceClassification,
    DistilBertForTokenClassification,
    DistilBertModel,
)
from cove.models.gpt2 import (
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    GPT2Model,
)
from cove.models.llama import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    LlamaModel,
    MistralConfig,
    MistralForCausalLM,
    MistralForSequenceClassification,
    MistralModel,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2ForSequenceClassification,
    Qwen2Model,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3ForSequenceClassification,
    Qwen3Model,
    SmolLM3Config,
    SmolLM3ForCausalLM,
    SmolLM3ForSequenceClassification,
    SmolLM3Model,
)
from cove.models.marian import MarianConfig, MarianModel, MarianMTModel
from cove.models.modeling import PreTrainedModel
from cove.models.mpnet import (
    MPNetConfig,
    MPNetForMaskedLM,
    MPNetForQuestionAnswering,
    MPNetForSequenceClassification,
    MPNetForTokenClassification,
    MPNetModel,
)
from cove.models.quantization import BitsAndBytesConfig
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
from cove.models.t5 import T5Config, T5EncoderModel, T5ForConditionalGeneration, T5Model
from cove.models.weight_only import Int4WeightOnlyConfig, Int8WeightOnlyConfig, TorchAoConfig

__all__ = [
    "AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForMaskedLM",
    "AutoModelForQuestionAnswering", "AutoModelForSeq2SeqLM", "AutoModelForSequenceClassification",
    "AutoModelForTokenClassification", "BertConfig", "BertForMaskedLM", "BertForQuestionAnswering",
    "BertForSequenceClassification", "BertForTokenClassification", "BertModel",
    "BitsAndBytesConfig", "CheckpointError", "Int4WeightOnlyConfig", "Int8WeightOnlyConfig",
    "TorchAoConfig",
    "DistilBertConfig", "DistilBertForMaskedLM", "DistilBertForQuestionAnswering",
    "DistilBertForSequenceClassification", "DistilBertForTokenClassification", "DistilBertModel",
    "GPT2Config", "GPT2ForSequenceClassification", "GPT2LMHeadModel", "GPT2Model", "LlamaConfig",
    "LlamaForCausalLM", "LlamaForSequenceClassification", "LlamaModel", "MPNetConfig",
    "MPNetForMaskedLM", "MPNetForQuestionAnswering", "MPNetForSequenceClassification",
    "MPNetForTokenClassification", "MPNetModel", "MistralConfig", "MistralForCausalLM",
    "MistralForSequenceClassification", "MistralModel", "PreTrainedConfig", "PreTrainedModel", "PretrainedConfig",
    "Qwen2Config", "Qwen2ForCausalLM", "Qwen2ForSequenceClassification", "Qwen2Model",
    "Qwen3Config", "Qwen3ForCausalLM", "Qwen3ForSequenceClassification", "Qwen3Model",
    "RobertaConfig", "RobertaForMaskedLM", "RobertaForQuestionAnswering",
    "RobertaForSequenceClassification", "RobertaForTokenClassification", "RobertaModel",
    "SmolLM3Config", "SmolLM3ForCausalLM", "SmolLM3ForSequenceClassification", "SmolLM3Model",
    "XLMRobertaConfig", "XLMRobertaForMaskedLM", "XLMRobertaForQuestionAnswering",
    "XLMRobertaForSequenceClassification", "XLMRobertaForTokenClassification", "XLMRobertaModel",
    "T5Config", "T5EncoderModel", "T5ForConditionalGeneration", "T5Model", "BartConfig",
    "BartForConditionalGeneration", "BartForQuestionAnswering", "BartForSequenceClassification",
    "BartModel", "MarianConfig", "MarianMTModel", "MarianModel",
]
