"""Auto classes: the family and head chosen from config.json's model_type."""

from __future__ import annotations

import os
from typing import Any

from cove.models import bart, bert, distilbert, gpt2, llama, marian, mpnet, roberta, t5
from cove.models.configuration import CONFIG_NAME, HUB_KWARGS, PretrainedConfig, read_config_dict
from cove.models.files import resolve_file

# model_type -> config class, and (model_type, task) -> model class. Families add themselves here.
CONFIGS: dict[str, type[PretrainedConfig]] = {
    "bert": bert.BertConfig,
    "roberta": roberta.RobertaConfig,
    "xlm-roberta": roberta.XLMRobertaConfig,
    "distilbert": distilbert.DistilBertConfig,
    "mpnet": mpnet.MPNetConfig,
    "gpt2": gpt2.GPT2Config,
    "llama": llama.LlamaConfig,
    "mistral": llama.MistralConfig,
    "qwen2": llama.Qwen2Config,
    "qwen3": llama.Qwen3Config,
    "smollm3": llama.SmolLM3Config,
    "t5": t5.T5Config,
    "bart": bart.BartConfig,
    "marian": marian.MarianConfig,
}
MODELS: dict[tuple[str, str], type] = {
    ("bert", "base"): bert.BertModel,
    ("bert", "masked-lm"): bert.BertForMaskedLM,
    ("bert", "sequence-classification"): bert.BertForSequenceClassification,
    ("bert", "token-classification"): bert.BertForTokenClassification,
    ("bert", "question-answering"): bert.BertForQuestionAnswering,
    ("roberta", "base"): roberta.RobertaModel,
    ("roberta", "masked-lm"): roberta.RobertaForMaskedLM,
    ("roberta", "sequence-classification"): roberta.RobertaForSequenceClassification,
    ("roberta", "token-classification"): roberta.RobertaForTokenClassification,
    ("roberta", "question-answering"): roberta.RobertaForQuestionAnswering,
    ("xlm-roberta", "base"): roberta.XLMRobertaModel,
    ("xlm-roberta", "masked-lm"): roberta.XLMRobertaForMaskedLM,
    ("xlm-roberta", "sequence-classification"): roberta.XLMRobertaForSequenceClassification,
    ("xlm-roberta", "token-classification"): roberta.XLMRobertaForTokenClassification,
    ("xlm-roberta", "question-answering"): roberta.XLMRobertaForQuestionAnswering,
    ("distilbert", "base"): distilbert.DistilBertModel,
    ("distilbert", "masked-lm"): distilbert.DistilBertForMaskedLM,
    ("distilbert", "sequence-classification"): distilbert.DistilBertForSequenceClassification,
    ("distilbert", "token-classification"): distilbert.DistilBertForTokenClassification,
    ("distilbert", "question-answering"): distilbert.DistilBertForQuestionAnswering,
    ("mpnet", "base"): mpnet.MPNetModel,
    ("mpnet", "masked-lm"): mpnet.MPNetForMaskedLM,
    ("mpnet", "sequence-classification"): mpnet.MPNetForSequenceClassification,
    ("mpnet", "token-classification"): mpnet.MPNetForTokenClassification,
    ("mpnet", "question-answering"): mpnet.MPNetForQuestionAnswering,
    ("gpt2", "base"): gpt2.GPT2Model,
    ("gpt2", "causal-lm"): gpt2.GPT2LMHeadModel,
    ("gpt2", "sequence-classification"): gpt2.GPT2ForSequenceClassification,
    ("llama", "base"): llama.LlamaModel,
    ("llama", "causal-lm"): llama.LlamaForCausalLM,
    ("llama", "sequence-classification"): llama.LlamaForSequenceClassification,
    ("mistral", "base"): llama.MistralModel,
    ("mistral", "causal-lm"): llama.MistralForCausalLM,
    ("mistral", "sequence-classification"): llama.MistralForSequenceClassification,
    ("qwen2", "base"): llama.Qwen2Model,
    ("qwen2", "causal-lm"): llama.Qwen2ForCausalLM,
    ("qwen2", "sequence-classification"): llama.Qwen2ForSequenceClassification,
    ("qwen3", "base"): llama.Qwen3Model,
    ("qwen3", "causal-lm"): llama.Qwen3ForCausalLM,
    ("qwen3", "sequence-classification"): llama.Qwen3ForSequenceClassification,
    ("smollm3", "base"): llama.SmolLM3Model,
    ("smollm3", "causal-lm"): llama.SmolLM3ForCausalLM,
    ("smollm3", "sequence-classification"): llama.SmolLM3ForSequenceClassification,
    ("t5", "base"): t5.T5Model,
    ("t5", "seq2seq-lm"): t5.T5ForConditionalGeneration,
    ("bart", "base"): bart.BartModel,
    ("bart", "seq2seq-lm"): bart.BartForConditionalGeneration,
    ("bart", "sequence-classification"): bart.BartForSequenceClassification,
    ("bart", "question-answering"): bart.BartForQuestionAnswering,
    ("marian", "base"): marian.MarianModel,
    ("marian", "seq2seq-lm"): marian.MarianMTModel,
}


def _refuse_remote_code(kwargs: dict) -> None:
    if kwargs.pop("trust_remote_code", False):
        raise ValueError("trust_remote_code=True is refused: Cove never runs code from a "
                         "repository. Use a model family Cove implements.")


class AutoConfig:
    @staticmethod
    def for_model(model_type: str, **kwargs: Any) -> PretrainedConfig:
        return config_class(model_type)(**kwargs)

    @staticmethod
    def from_pretrained(name_or_path: str | os.PathLike, **kwargs: Any) -> PretrainedConfig:
        _refuse_remote_code(kwargs)
        hub = {k: kwargs.pop(k) for k in list(kwargs) if k in HUB_KWARGS}
        if (gguf_file := kwargs.pop("gguf_file", None)) is not None:
            from cove.models.gguf import load_gguf

            name_or_path, hub = load_gguf(name_or_path, gguf_file, weights=False, **hub), {}
        data = read_config_dict(resolve_file(name_or_path, CONFIG_NAME, required=True, **hub))
        return config_class(data.get("model_type", "")).from_dict(data, **kwargs)


def config_class(model_type: str) -> type[PretrainedConfig]:
    try:
        return CONFIGS[model_type]
    except KeyError:
        raise ValueError(
            f"Unrecognised model_type {model_type!r}: Cove supports {', '.join(sorted(CONFIGS))}."
        ) from None


class _AutoModel:
    task = "base"

    @classmethod
    def model_class(cls, config: PretrainedConfig) -> type:
        try:
            return MODELS[(config.model_type, cls.task)]
        except KeyError:
            raise ValueError(
                f"{cls.__name__} does not support model_type {config.model_type!r}."
            ) from None

    @classmethod
    def from_config(cls, config: PretrainedConfig, **kwargs: Any):
        return cls.model_class(config)(config, **kwargs)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any):
        _refuse_remote_code(kwargs)
        if (gguf_file := kwargs.pop("gguf_file", None)) is not None:  # converted once, cached
            from cove.models.gguf import load_gguf

            hub = {k: kwargs.pop(k) for k in list(kwargs) if k in HUB_KWARGS}
            dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
            if dtype == "auto":  # kept quantised: the class builds it from the file's blocks
                config = kwargs.pop("config", None) or AutoConfig.from_pretrained(
                    name_or_path, gguf_file=gguf_file, **hub)
                return cls.model_class(config).from_pretrained(
                    name_or_path, gguf_file=gguf_file, config=config, **hub, **kwargs)
            name_or_path = load_gguf(name_or_path, gguf_file, dtype=dtype, **hub)
        config = kwargs.pop("config", None)
        if config is None:
            hub = {k: kwargs[k] for k in kwargs if k in HUB_KWARGS}
            config_kwargs = {k: kwargs.pop(k) for k in list(kwargs)
                             if k not in HUB_KWARGS and k not in _LOAD_KWARGS}
            try:
                config = AutoConfig.from_pretrained(name_or_path, **hub, **config_kwargs)
            except OSError:  # no config.json (a folder's, or the Hub's EntryNotFoundError)
                adapted = _adapter_model(cls, name_or_path, kwargs, config_kwargs)
                if adapted is None:
                    raise
                return adapted
        return cls.model_class(config).from_pretrained(name_or_path, config=config, **kwargs)


ADAPTER_CONFIG_NAME = "adapter_config.json"


def _adapter_model(auto: type[_AutoModel], name_or_path: str | os.PathLike,
                   kwargs: dict[str, Any], config_kwargs: dict[str, Any]) -> Any:
    """A PEFT adapter (adapter_config.json, no config.json), as transformers loads it: the base
    model its config names, with the adapter (a cove.peft PeftModel). None for no adapter."""
    hub = {k: kwargs.pop(k) for k in list(kwargs) if k in HUB_KWARGS}
    try:
        path = resolve_file(name_or_path, ADAPTER_CONFIG_NAME, **hub)
    except OSError:
        path = None  # the caller raises its own error (about config.json)
    if path is None:
        return None
    base_name = read_config_dict(path).get("base_model_name_or_path")
    if not base_name:
        raise ValueError(f"{path} does not name its base model (base_model_name_or_path): load "
                         "the base model, then PeftModel.from_pretrained(base, "
                         f"{str(name_or_path)!r}).")
    # revision and subfolder are the adapter's; the cache, token and endpoint serve both.
    shared = {k: v for k, v in hub.items() if k not in ("revision", "subfolder")}
    loaded = auto.from_pretrained(base_name, **shared, **config_kwargs, **kwargs)
    base, info = loaded if isinstance(loaded, tuple) else (loaded, None)
    from cove.peft import PeftModel  # adapters sit above models: imported for an adapter only

    adapted = PeftModel.from_pretrained(base, name_or_path, **hub)
    return adapted if info is None else (adapted, info)


_LOAD_KWARGS = {"dtype", "torch_dtype", "device", "device_map", "output_loading_info",
                "ignore_mismatched_sizes", "use_safetensors", "quantization_config"}


class AutoModel(_AutoModel):
    task = "base"


class AutoModelForCausalLM(_AutoModel):
    task = "causal-lm"


class AutoModelForMaskedLM(_AutoModel):
    task = "masked-lm"


class AutoModelForSequenceClassification(_AutoModel):
    task = "sequence-classification"


class AutoModelForTokenClassification(_AutoModel):
    task = "token-classification"


class AutoModelForQuestionAnswering(_AutoModel):
    task = "question-answering"


class AutoModelForSeq2SeqLM(_AutoModel):
    task = "seq2seq-lm"
