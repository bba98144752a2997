"""cove.peft: parameter-efficient fine-tuning (LoRA, DoRA, IA3, prompt and prefix tuning) with
PEFT's names and file format.

    from cove.peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(task_type=TaskType.CAUSAL_LM, r=8, lora_alpha=32,
                        target_modules=["q_proj", "v_proj"])
    model = get_peft_model(model, config)
    model.print_trainable_parameters()

Adapters save as adapter_config.json + adapter_model.safetensors with PEFT's keys: PEFT loads
what Cove saves and the reverse. Importing this package imports nothing heavy: the names below
load their module on first use.
"""

# ruff: noqa: F401  (the TYPE_CHECKING imports at the end are re-exports)
from __future__ import annotations

from typing import TYPE_CHECKING

from cove._lazy import lazy_exports

# module -> the public names it defines
_EXPORTS = {
    "cove.peft.config": ("PeftConfig", "PeftType", "TaskType", "LoraConfig", "IA3Config",
                         "PromptLearningConfig", "PromptTuningConfig", "PromptTuningInit",
                         "PrefixTuningConfig", "PromptEncoderConfig",
                         "PromptEncoderReparameterizationType"),
    "cove.peft.peft_model": ("PeftModel", "PeftModelForCausalLM", "PeftModelForSeq2SeqLM",
                             "PeftModelForSequenceClassification",
                             "PeftModelForTokenClassification", "PeftModelForQuestionAnswering",
                             "PeftModelForFeatureExtraction", "get_peft_model",
                             "MODEL_TYPE_TO_PEFT_MODEL_MAPPING"),
    "cove.peft.lora": ("LoraModel",),
    "cove.peft.ia3": ("IA3Model",),
    "cove.peft.prompt": ("PromptEmbedding", "PromptEncoder", "PrefixEncoder"),
    "cove.peft.save_and_load": ("get_peft_model_state_dict", "set_peft_model_state_dict",
                                "load_peft_weights"),
    # peft's function; it prepares a quantised model, so it lives beside the quantised layers
    "cove.models.quantization": ("prepare_model_for_kbit_training",),
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS, reference="peft")

if TYPE_CHECKING:  # what IDEs and type checkers see; at run time the names resolve lazily
    from cove.models.quantization import (
        prepare_model_for_kbit_training,
    )
    from cove.peft.config import (
        IA3Config,
        LoraConfig,
        PeftConfig,
        PeftType,
        PrefixTuningConfig,
        PromptEncoderConfig,
        PromptEncoderReparameterizationType,
        PromptLearningConfig,
        PromptTuningConfig,
        PromptTuningInit,
        TaskType,
    )
    from cove.peft.ia3 import (
        IA3Model,
    )
    from cove.peft.lora import (
        LoraModel,
    )
    from cove.peft.peft_model import (
        MODEL_TYPE_TO_PEFT_MODEL_MAPPING,
        PeftModel,
        PeftModelForCausalLM,
        PeftModelForFeatureExtraction,
        PeftModelForQuestionAnswering,
        PeftModelForSeq2SeqLM,
        PeftModelForSequenceClassification,
        PeftModelForTokenClassification,
        get_peft_model,
    )
    from cove.peft.prompt import (
        PrefixEncoder,
        PromptEmbedding,
        PromptEncoder,
    )
    from cove.peft.save_and_load import (
        get_peft_model_state_dict,
        load_peft_weights,
        set_peft_model_state_dict,
    )
