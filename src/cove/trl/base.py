"""What every cove.trl trainer shares: the config defaults TRL changes, and making the model,
tokenizer, adapter and reference model a trainer starts from."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Any

from cove.trainer.training_args import TrainingArguments, _bf16_supported

logger = logging.getLogger("cove.trl")


@dataclass
class BaseConfig(TrainingArguments):
    """TrainingArguments with the defaults every TRL config sets: a log every 10 steps, gradient
    checkpointing on, and bf16 when the machine trains in bf16.

    `bf16=None` (the default) means bf16 unless fp16 is asked for, on a GPU with bf16 support or
    with `use_cpu=True`; on a machine without one it means fp32 (TRL would raise there).
    `model_init_kwargs`: the keyword arguments of `from_pretrained` when the trainer is given a
    model id or path rather than a model; `dtype` defaults to float32.
    """

    logging_steps: float = 10
    gradient_checkpointing: bool | None = True
    bf16: bool | None = None  # type: ignore[assignment]
    model_init_kwargs: dict[str, Any] | str | None = None

    def __post_init__(self) -> None:
        if self.bf16 is None:
            self.bf16 = not self.fp16 and (self.use_cpu or _bf16_supported())
        if isinstance(self.model_init_kwargs, str):  # from a command line: a JSON object
            import json

            try:
                self.model_init_kwargs = json.loads(self.model_init_kwargs)
            except json.JSONDecodeError as e:
                raise ValueError(f"model_init_kwargs must be a dict or a JSON object, got "
                                 f"{self.model_init_kwargs!r}: {e}") from None
        if self.model_init_kwargs is not None and not isinstance(self.model_init_kwargs, dict):
            raise ValueError(f"model_init_kwargs must be a dict, got {self.model_init_kwargs!r}")
        super().__post_init__()


_DTYPES = ("bfloat16", "float16", "float32")


def load_model(model: Any, args: BaseConfig, auto_class: Any = None,
               **extra_kwargs: Any) -> Any:
    """`model` itself, or, given an id or path, the model `from_pretrained` loads with
    `args.model_init_kwargs` (dtype "float32" unless they name one; "auto" takes the
    checkpoint's). `auto_class` defaults to AutoModelForCausalLM."""
    if not isinstance(model, str):
        if args.model_init_kwargs:
            logger.warning("model_init_kwargs are given but the model is already made: they "
                           "are ignored")
        return model
    import torch

    if auto_class is None:
        from cove.models.auto import AutoModelForCausalLM as auto_class
    kwargs = dict(args.model_init_kwargs or {})
    for key, value in extra_kwargs.items():
        if key in kwargs:
            raise ValueError(f"{key} is set both as a trainer argument and in "
                             "model_init_kwargs: set it in one place")
        kwargs[key] = value
    dtype = kwargs.pop("dtype", kwargs.pop("torch_dtype", "float32"))
    if isinstance(dtype, str) and dtype in _DTYPES:
        dtype = getattr(torch, dtype)
    elif not (dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype)):
        raise ValueError(f"model_init_kwargs has dtype {dtype!r}: expected 'auto', a torch "
                         f"dtype or one of {', '.join(_DTYPES)}")
    if dtype is not None:
        kwargs["dtype"] = dtype
    return auto_class.from_pretrained(model, **kwargs)


def load_processing_class(model: Any, processing_class: Any = None) -> Any:
    """`processing_class`, or the tokenizer saved with `model`; a tokenizer without a padding
    token pads with its end-of-sequence token (TRL's trainers do the same)."""
    if processing_class is None:
        from cove.tokenizers.auto import AutoTokenizer

        name = getattr(getattr(model, "config", None), "_name_or_path", None) \
            or getattr(model, "name_or_path", None)
        if not name:
            raise ValueError("pass processing_class: the model was not loaded from a folder or "
                             "a repository, so there is no tokenizer to load with it")
        processing_class = AutoTokenizer.from_pretrained(name)
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    if getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None):
        tokenizer.pad_token = tokenizer.eos_token
    return processing_class


def is_peft_model(model: Any) -> bool:
    from cove.peft.peft_model import PeftModel

    return isinstance(model, PeftModel)


def apply_peft(model: Any, peft_config: Any, args: BaseConfig) -> Any:
    """`model` with a new adapter from `peft_config` (None: `model` as it is). A quantised base
    is prepared for adapter training first (float parts in float32, checkpointing as `args`
    says)."""
    if peft_config is None:
        return model
    from cove.peft import get_peft_model

    if is_peft_model(model):
        raise ValueError("the model already has an adapter and peft_config asks for another: "
                         "pass the base model, or the PeftModel without peft_config")
    if getattr(model, "is_quantized", False):
        from cove.models.quantization import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=bool(args.gradient_checkpointing),
            gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs)
    return get_peft_model(model, peft_config)


def create_reference_model(model: Any) -> Any:
    """A frozen copy of `model` in eval mode: the reference a policy is kept close to."""
    if is_peft_model(model):
        raise ValueError("a model with an adapter needs no reference copy: its base with the "
                         "adapter disabled is the reference")
    reference = copy.deepcopy(model)
    for parameter in reference.parameters():
        parameter.requires_grad_(False)
    return reference.eval()
