"""Cove: a self-hostable, open implementation of the Hugging Face system.

    from cove import AutoTokenizer, AutoModelForSequenceClassification, pipeline

Every transformers-named object Cove has is importable from `cove` itself, as from
`transformers`; `import cove` stays light (no torch): a name loads its package on first use.
The libraries keep their own packages: cove.hub, cove.datasets (and their HF names).
"""

# ruff: noqa: F401  (the TYPE_CHECKING imports at the end are re-exports)
from __future__ import annotations

from typing import TYPE_CHECKING

from cove._lazy import lazy_exports

__version__ = "0.1.0"

# package -> the transformers names it provides. tests/test_top_level.py keeps this table, the
# TYPE_CHECKING imports below and the packages' own exports in step.
_EXPORTS = {
    "cove.models": (
        "AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoModelForMaskedLM",
        "AutoModelForQuestionAnswering", "AutoModelForSequenceClassification",
        "AutoModelForTokenClassification", "BertConfig", "BertForMaskedLM",
        "BertForQuestionAnswering", "BertForSequenceClassification",
        "BertForTokenClassification", "BertModel", "DistilBertConfig",
        "DistilBertForMaskedLM", "DistilBertForQuestionAnswering",
        "DistilBertForSequenceClassification", "DistilBertForTokenClassification",
        "DistilBertModel", "GPT2Config", "GPT2ForSequenceClassification", "GPT2LMHeadModel",
        "GPT2Model", "LlamaConfig", "LlamaForCausalLM", "LlamaForSequenceClassification",
        "LlamaModel", "MPNetConfig", "MPNetForMaskedLM", "MPNetForQuestionAnswering",
        "MPNetForSequenceClassification", "MPNetForTokenClassification", "MPNetModel",
        "MistralConfig", "MistralForCausalLM", "MistralForSequenceClassification",
        "MistralModel", "PreTrainedConfig", "PreTrainedModel", "PretrainedConfig",
        "Qwen2Config", "Qwen2ForCausalLM", "Qwen2ForSequenceClassification", "Qwen2Model",
        "Qwen3Config", "Qwen3ForCausalLM", "Qwen3ForSequenceClassification", "Qwen3Model",
        "RobertaConfig", "RobertaForMaskedLM", "RobertaForQuestionAnswering",
        "RobertaForSequenceClassification", "RobertaForTokenClassification", "RobertaModel",
        "SmolLM3Config", "SmolLM3ForCausalLM", "SmolLM3ForSequenceClassification",
        "SmolLM3Model", "XLMRobertaConfig", "XLMRobertaForMaskedLM",
        "XLMRobertaForQuestionAnswering", "XLMRobertaForSequenceClassification",
        "XLMRobertaForTokenClassification", "XLMRobertaModel",
    ),
    "cove.tokenizers": (
        "AddedToken", "AutoTokenizer", "BatchEncoding", "BertTokenizer",
        "BertTokenizerFast", "CharSpan", "DistilBertTokenizer", "DistilBertTokenizerFast",
        "GPT2Tokenizer", "GPT2TokenizerFast", "LlamaTokenizer", "LlamaTokenizerFast",
        "MPNetTokenizer", "MPNetTokenizerFast", "PreTrainedTokenizerBase",
        "PreTrainedTokenizerFast", "RobertaTokenizer", "RobertaTokenizerFast",
        "T5Tokenizer", "T5TokenizerFast", "TokenSpan", "TokenizersBackend",
    ),
    "cove.generation": (
        "EosTokenCriteria", "ForcedBOSTokenLogitsProcessor",
        "ForcedEOSTokenLogitsProcessor", "GenerationConfig", "GenerationMixin",
        "InfNanRemoveLogitsProcessor", "LogitNormalization", "LogitsProcessor",
        "LogitsProcessorList", "MaxLengthCriteria", "MaxTimeCriteria",
        "MinLengthLogitsProcessor", "MinNewTokensLengthLogitsProcessor", "MinPLogitsWarper",
        "RepetitionPenaltyLogitsProcessor", "StopStringCriteria", "StoppingCriteria",
        "StoppingCriteriaList", "SuppressTokensAtBeginLogitsProcessor",
        "SuppressTokensLogitsProcessor", "TemperatureLogitsWarper", "TextIteratorStreamer",
        "TextStreamer", "TopKLogitsWarper", "TopPLogitsWarper",
    ),
    "cove.pipelines": (
        "FeatureExtractionPipeline", "FillMaskPipeline", "Pipeline",
        "QuestionAnsweringPipeline", "TextClassificationPipeline", "TextGenerationPipeline",
        "TokenClassificationPipeline", "ZeroShotClassificationPipeline", "pipeline",
    ),
    "cove.seed": (
        "set_seed",
    ),
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS, reference="transformers")

if TYPE_CHECKING:  # what IDEs and type checkers see; at run time the names resolve lazily
    from cove.generation import (
        EosTokenCriteria,
        ForcedBOSTokenLogitsProcessor,
        ForcedEOSTokenLogitsProcessor,
        GenerationConfig,
        GenerationMixin,
        InfNanRemoveLogitsProcessor,
        LogitNormalization,
        LogitsProcessor,
        LogitsProcessorList,
        MaxLengthCriteria,
        MaxTimeCriteria,
        MinLengthLogitsProcessor,
        MinNewTokensLengthLogitsProcessor,
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        StoppingCriteria,
        StoppingCriteriaList,
        StopStringCriteria,
        SuppressTokensAtBeginLogitsProcessor,
        SuppressTokensLogitsProcessor,
        TemperatureLogitsWarper,
        TextIteratorStreamer,
        TextStreamer,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )
    from cove.models import (
        AutoConfig,
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoModelForQuestionAnswering,
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        BertConfig,
        BertForMaskedLM,
        BertForQuestionAnswering,
        BertForSequenceClassification,
        BertForTokenClassification,
        BertModel,
        DistilBertConfig,
        DistilBertForMaskedLM,
        DistilBertForQuestionAnswering,
        DistilBertForSequenceClassification,
        DistilBertForTokenClassification,
        DistilBertModel,
        GPT2Config,
        GPT2ForSequenceClassification,
        GPT2LMHeadModel,
        GPT2Model,
        LlamaConfig,
        LlamaForCausalLM,
        LlamaForSequenceClassification,
        LlamaModel,
        MistralConfig,
        MistralForCausalLM,
        MistralForSequenceClassification,
        MistralModel,
        MPNetConfig,
        MPNetForMaskedLM,
        MPNetForQuestionAnswering,
        MPNetForSequenceClassification,
        MPNetForTokenClassification,
        MPNetModel,
        PreTrainedConfig,
        PretrainedConfig,
        PreTrainedModel,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen2ForSequenceClassification,
        Qwen2Model,
        Qwen3Config,
        Qwen3ForCausalLM,
        Qwen3ForSequenceClassification,
        Qwen3Model,
        RobertaConfig,
        RobertaForMaskedLM,
        RobertaForQuestionAnswering,
        RobertaForSequenceClassification,
        RobertaForTokenClassification,
        RobertaModel,
        SmolLM3Config,
        SmolLM3ForCausalLM,
        SmolLM3ForSequenceClassification,
        SmolLM3Model,
        XLMRobertaConfig,
        XLMRobertaForMaskedLM,
        XLMRobertaForQuestionAnswering,
        XLMRobertaForSequenceClassification,
        XLMRobertaForTokenClassification,
        XLMRobertaModel,
    )
    from cove.pipelines import (
        FeatureExtractionPipeline,
        FillMaskPipeline,
        Pipeline,
        QuestionAnsweringPipeline,
        TextClassificationPipeline,
        TextGenerationPipeline,
        TokenClassificationPipeline,
        ZeroShotClassificationPipeline,
        pipeline,
    )
    from cove.seed import (
        set_seed,
    )
    from cove.tokenizers import (
        AddedToken,
        AutoTokenizer,
        BatchEncoding,
        BertTokenizer,
        BertTokenizerFast,
        CharSpan,
        DistilBertTokenizer,
        DistilBertTokenizerFast,
        GPT2Tokenizer,
        GPT2TokenizerFast,
        LlamaTokenizer,
        LlamaTokenizerFast,
        MPNetTokenizer,
        MPNetTokenizerFast,
        PreTrainedTokenizerBase,
        PreTrainedTokenizerFast,
        RobertaTokenizer,
        RobertaTokenizerFast,
        T5Tokenizer,
        T5TokenizerFast,
        TokenizersBackend,
        TokenSpan,
    )
