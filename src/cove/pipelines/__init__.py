"""cove.pipeline: transformers' task pipelines on Cove's models and tokenizers.

    from cove import pipeline

    classifier = pipeline("sentiment-analysis", model="alice/tiny-bert", batch_size=32)
    classifier(["I love this!", "Not for me."])   # [{"label": ..., "score": ...}, ...]

Tasks, aliases, default models and output formats follow transformers 5; summarization,
translation(_xx_to_yy) and text2text-generation, which 5.x dropped, follow 4.x. Inputs may be
one item, a list, or any iterable (results are then yielded as they come).
"""

from __future__ import annotations

import os
import re
from typing import Any

from cove.pipelines.base import Pipeline, as_device
from cove.pipelines.feature_extraction import FeatureExtractionPipeline
from cove.pipelines.fill_mask import FillMaskPipeline
from cove.pipelines.question_answering import QuestionAnsweringPipeline
from cove.pipelines.sentence_embeddings import SentenceEmbeddingsPipeline
from cove.pipelines.text2text_generation import (
    SummarizationPipeline,
    Text2TextGenerationPipeline,
    TranslationPipeline,
)
from cove.pipelines.text_classification import TextClassificationPipeline
from cove.pipelines.text_generation import TextGenerationPipeline
from cove.pipelines.token_classification import TokenClassificationPipeline
from cove.pipelines.zero_shot_classification import ZeroShotClassificationPipeline

# task -> (pipeline class, model head as cove.models.auto names it, default model id)
SUPPORTED_TASKS: dict[str, tuple[type[Pipeline], str, str]] = {
    "text-classification": (TextClassificationPipeline, "sequence-classification",
                            "distilbert/distilbert-base-uncased-finetuned-sst-2-english"),
    "token-classification": (TokenClassificationPipeline, "token-classification",
                             "dbmdz/bert-large-cased-finetuned-conll03-english"),
    # transformers 5 dropped question-answering: its 4.x default model.
    "question-answering": (QuestionAnsweringPipeline, "question-answering",
                           "distilbert/distilbert-base-cased-distilled-squad"),
    "fill-mask": (FillMaskPipeline, "masked-lm", "distilbert/distilroberta-base"),
    # BART (bart-large-mnli): Cove loads BartForSequenceClassification.
    "zero-shot-classification": (ZeroShotClassificationPipeline, "sequence-classification",
                                 "facebook/bart-large-mnli"),
    "text-generation": (TextGenerationPipeline, "causal-lm", "HuggingFaceTB/SmolLM3-3B"),
    # transformers 5 dropped these three: their 4.x default models. "translation" is
    # "translation_xx_to_yy" (defaults per language pair in TRANSLATION_DEFAULTS).
    "summarization": (SummarizationPipeline, "seq2seq-lm", "sshleifer/distilbart-cnn-12-6"),
    "translation": (TranslationPipeline, "seq2seq-lm", "google-t5/t5-base"),
    "text2text-generation": (Text2TextGenerationPipeline, "seq2seq-lm", "google-t5/t5-base"),
    "feature-extraction": (FeatureExtractionPipeline, "base",
                           "distilbert/distilbert-base-cased"),
    # Not a transformers task: the Hub's tag for sentence-transformers models (see
    # sentence_embeddings.py); the model sentence-transformers' documentation starts with.
    "sentence-similarity": (SentenceEmbeddingsPipeline, "base",
                            "sentence-transformers/all-MiniLM-L6-v2"),
}
TASK_ALIASES = {"sentiment-analysis": "text-classification", "ner": "token-classification",
                "sentence-embeddings": "sentence-similarity"}
# Language pairs with a default translation model (transformers 4.x's).
TRANSLATION_DEFAULTS = {("en", "fr"), ("en", "de"), ("en", "ro")}
# Architecture name endings -> the task their head serves (to infer a missing task).
_ARCHITECTURE_TASKS = [
    ("ForSequenceClassification", "text-classification"),
    ("ForMaskedLM", "fill-mask"),
    ("ForTokenClassification", "token-classification"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForConditionalGeneration", "text2text-generation"),
    ("MTModel", "translation"),
    ("ForCausalLM", "text-generation"),
    ("LMHeadModel", "text-generation"),
    ("Model", "feature-extraction"),
]

__all__ = ["FeatureExtractionPipeline", "FillMaskPipeline", "Pipeline", "QuestionAnsweringPipeline",
           "SUPPORTED_TASKS", "SentenceEmbeddingsPipeline", "SummarizationPipeline",
           "Text2TextGenerationPipeline", "TextClassificationPipeline", "TextGenerationPipeline",
           "TokenClassificationPipeline", "TranslationPipeline", "ZeroShotClassificationPipeline",
           "pipeline"]


def _check_task(task: str) -> str:
    if not isinstance(task, str):
        raise ValueError(f"task must be a string, got {type(task).__name__}.")
    task = TASK_ALIASES.get(task, task)
    if task in SUPPORTED_TASKS or _languages(task) is not None:
        return task
    if task.startswith("translation"):
        raise ValueError(f"Invalid translation task {task!r}: use 'translation_XX_to_YY' "
                         "(e.g. 'translation_en_to_fr').")
    raise ValueError(f"Unknown task {task!r}. Available tasks: "
                     f"{', '.join(sorted([*SUPPORTED_TASKS, *TASK_ALIASES]))}, "
                     "translation_XX_to_YY.")


def _languages(task: str) -> tuple[str, str] | None:
    """(source, target) of a 'translation_xx_to_yy' task, else None."""
    match = re.fullmatch(r"translation_([^_]+)_to_([^_]+)", task)
    return (match[1], match[2]) if match else None


def _default_model(task: str, default: str) -> str:
    if task == "translation":
        raise ValueError("The task defaults can't be correctly selected: pass model=, or name "
                         "the languages, e.g. 'translation_en_to_fr'.")
    languages = _languages(task)
    if languages is not None and languages not in TRANSLATION_DEFAULTS:
        raise ValueError(f"There is no default model for translation from {languages[0]!r} to "
                         f"{languages[1]!r}: pass model= (defaults exist for "
                         f"{', '.join(f'{a}_to_{b}' for a, b in sorted(TRANSLATION_DEFAULTS))}).")
    return default


def _infer_task(architectures: list[str] | None, where: str) -> str:
    for name in architectures or []:
        for ending, task in _ARCHITECTURE_TASKS:
            if name.endswith(ending):
                return task
    raise ValueError(f"Cannot infer the task of {where}: pass task= (e.g. "
                     "'text-classification', 'fill-mask', 'feature-extraction').")


def pipeline(task: str | None = None, model: Any = None, tokenizer: Any = None,
             device: Any = None, dtype: Any = None, batch_size: int | None = None,
             revision: str | None = None, token: str | bool | None = None,
             device_map: Any = None, **task_kwargs: Any) -> Pipeline:
    """Build a task pipeline, as transformers.pipeline.

    `model` is a Hub repository id, a local folder, or a loaded Cove model (None: the
    task's default model); `tokenizer` likewise (None: the model's own). `device` is "cpu",
    "cuda", "cuda:1", an int or a torch.device; `dtype` a string or a torch dtype;
    `device_map` spreads the model over devices: "auto" (the GPUs' free memory in order,
    then the CPU), or {"module.name": device} (see cove.models.placement).
    Other keyword arguments are the task's (top_k, function_to_apply, targets, ...).
    `model_kwargs` (a dict) goes to the model's from_pretrained.
    """
    from cove.models import AutoConfig, PreTrainedModel
    from cove.models.auto import MODELS, _AutoModel
    from cove.models.modeling import as_dtype
    from cove.tokenizers import AutoTokenizer

    if task is None and model is None:
        raise ValueError("Impossible to instantiate a pipeline without either a task or a "
                         "model being specified.")
    hub: dict[str, Any] = {"revision": revision, "token": token}
    model_kwargs = dict(task_kwargs.pop("model_kwargs", None) or {})
    if "torch_dtype" in task_kwargs:  # transformers 4.x name
        torch_dtype = task_kwargs.pop("torch_dtype")
        dtype = torch_dtype if dtype is None else dtype
    if task_kwargs.pop("trust_remote_code", False):
        raise ValueError("trust_remote_code=True is refused: Cove never runs code from a "
                         "repository.")
    if device_map is not None:
        if device is not None:
            raise ValueError("Pass device= or device_map=, not both.")
        model_kwargs["device_map"] = device_map
    if device is not None:
        device = as_device(device)
    if dtype is not None:
        dtype = as_dtype(dtype)

    inner = _unwrapped(model)
    if task is None:
        if isinstance(inner, PreTrainedModel):
            task = _infer_task([type(inner).__name__], type(inner).__name__)
        else:
            config = AutoConfig.from_pretrained(model, **hub)
            task = _infer_task(config.architectures, repr(str(model)))
    task = _check_task(task)
    cls, head, default_model = SUPPORTED_TASKS[
        "translation" if _languages(task) is not None else task]
    if model is None:
        model = _default_model(task, default_model)

    source = None
    if isinstance(model, (str, os.PathLike)):
        name = source = str(model)
        config = AutoConfig.from_pretrained(name, **hub)
        architectures = config.architectures or []
        if head != "base" and architectures and not any(a.endswith(_endings(head))
                                                        for a in architectures):
            raise ValueError(f"The model {name!r} ({', '.join(architectures)}) has no "
                             f"{head} head: it cannot run the {task!r} task.")
        auto = type("_Auto", (_AutoModel,), {"task": head})
        try:
            load = {"dtype": dtype} if dtype is not None else {}
            loaded, info = auto.from_pretrained(name, config=config, output_loading_info=True,
                                                **hub, **load, **model_kwargs)
        except ValueError as e:
            raise ValueError(f"The model {name!r} cannot run the {task!r} task: {e}") from None
        if head != "base" and info["missing_keys"]:
            raise ValueError(f"The model {name!r} has no trained {head} head for the {task!r} "
                             f"task (missing weights: {', '.join(info['missing_keys'][:5])}).")
        model = loaded
        if tokenizer is None:
            tokenizer = name
    elif isinstance(inner, PreTrainedModel):
        expected = MODELS.get((inner.config.model_type, head))
        if head != "base" and (expected is None or not isinstance(inner, expected)):
            raise ValueError(f"A {type(inner).__name__} cannot run the {task!r} task: it needs "
                             f"a model with a {head} head.")
        if dtype is not None and dtype != "auto":
            model = model.to(dtype)
        if device_map is not None:
            from cove.models.placement import dispatch

            dispatch(inner, device_map)
        if tokenizer is None:
            tokenizer = getattr(inner, "name_or_path", None) or getattr(
                inner.config, "_name_or_path", None) or getattr(inner.config, "name_or_path", None)
            if not tokenizer:
                raise ValueError("Pass tokenizer= with a model object: Cove cannot tell which "
                                 "tokenizer goes with it.")
    else:
        raise ValueError(f"model must be a Hub repository id, a folder or a Cove model, got "
                         f"{type(model).__name__}.")

    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer), **hub)
    if task == "translation":  # the model's first translation_xx_to_yy parameters (as 4.x)
        params = getattr(_unwrapped(model).config, "task_specific_params", None) or {}
        task = next((key for key in params if key.startswith("translation")), task)
    if source is not None:  # what the task reads from the repository besides the model
        task_kwargs = {**cls._from_repository(source, hub), **task_kwargs}
    return cls(model, tokenizer, task=task, device=device, batch_size=batch_size,
               **task_kwargs)


def _unwrapped(model: Any) -> Any:
    """The model inside an adapter wrapper (a PeftModel's get_base_model()); else `model`.
    The pipeline runs the wrapper: its forward and generate apply the adapters."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) else model


def _endings(head: str) -> tuple[str, ...]:
    return {"sequence-classification": ("ForSequenceClassification",),
            "masked-lm": ("ForMaskedLM", "ForPreTraining"),
            "token-classification": ("ForTokenClassification",),
            "question-answering": ("ForQuestionAnswering",),
            "causal-lm": ("ForCausalLM", "LMHeadModel"),
            "seq2seq-lm": ("ForConditionalGeneration", "MTModel")}.get(head, ("Model",))
