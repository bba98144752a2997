"""SFTConfig: TRL 1.16's supervised fine-tuning arguments (trl.SFTConfig's fields and defaults)."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from typing import Any

from cove.trl.base import BaseConfig

_TRUNCATION_MODES = ("keep_start", "keep_end")
_PACKING_STRATEGIES = ("bfd", "bfd_split", "wrapped")
_LOSS_TYPES = ("nll", "dft")


@dataclass
class SFTConfig(BaseConfig):
    """Arguments of SFTTrainer: TrainingArguments with TRL's defaults (learning rate 2e-5, a
    log every 10 steps, gradient checkpointing) and the data and loss fields of trl.SFTConfig.

    Data: `dataset_text_field` (the text column of language-modeling data), `dataset_kwargs`
    (`{"skip_prepare_dataset": True}`: the dataset is already tokenized), `dataset_num_proc`,
    `eos_token` (defaults to the tokenizer's), `max_length` (examples are cut to it; with
    packing, the row length), `truncation_mode` ("keep_start"; "keep_end" is deprecated),
    `shuffle_dataset`, `packing` with `packing_strategy` ("bfd", "bfd_split" or "wrapped"),
    `padding_free` (one flattened row per batch), `pad_to_multiple_of`, `eval_packing` (None:
    as `packing`), `chat_template_path` (a .jinja/.j2 file that replaces the chat template).
    Loss: `completion_only_loss` (None: on the completion for prompt-completion data),
    `assistant_only_loss` (only the assistant turns, which the chat template marks with
    {% generation %}), `loss_type` ("nll", or "dft": each token's NLL weighted by its
    probability).
    """

    learning_rate: float = 2e-5
    trust_remote_code: bool = False
    router_aux_loss_coef: float | None = None
    chat_template_path: str | None = None
    dataset_text_field: str = "text"
    dataset_kwargs: dict[str, Any] | str | None = None
    dataset_num_proc: int | None = None
    eos_token: str | None = None
    max_length: int | None = 1024
    truncation_mode: str = "keep_start"
    shuffle_dataset: bool = False
    packing: bool = False
    packing_strategy: str = "bfd"
    padding_free: bool = False
    pad_to_multiple_of: int | str | None = "auto"
    eval_packing: bool | None = None
    completion_only_loss: bool | None = None
    assistant_only_loss: bool = False
    loss_type: str = "nll"
    activation_offloading: bool = False
    pad_token: str | None = None

    def __post_init__(self) -> None:
        # TRL fields whose features Cove does not have: refused by name rather than ignored
        if self.trust_remote_code:
            raise ValueError("trust_remote_code=True: Cove does not run code from model "
                             "repositories; its own model classes load the checkpoint")
        if self.router_aux_loss_coef is not None:
            raise ValueError("router_aux_loss_coef is set, but Cove has no Mixture-of-Experts "
                             "models that return router logits: leave it unset")
        if self.activation_offloading:
            raise ValueError("activation_offloading=True: Cove does not implement activation "
                             "offloading; use gradient_checkpointing to save memory instead")
        super().__post_init__()
        if isinstance(self.dataset_kwargs, str):  # from a command line: a JSON object
            try:
                self.dataset_kwargs = json.loads(self.dataset_kwargs)
            except json.JSONDecodeError as e:
                raise ValueError(f"dataset_kwargs must be a dict or a JSON object, got "
                                 f"{self.dataset_kwargs!r}: {e}") from None
        unknown = set(self.dataset_kwargs or {}) - {"skip_prepare_dataset"}
        if unknown:
            raise ValueError(f"dataset_kwargs takes only 'skip_prepare_dataset', got "
                             f"{sorted(unknown)}")
        if isinstance(self.pad_to_multiple_of, str) and self.pad_to_multiple_of != "auto":
            value = self.pad_to_multiple_of.lower()
            self.pad_to_multiple_of = None if value in ("none", "null") else int(value)
        if self.pad_to_multiple_of == "auto":  # only Neuron devices pad (to 128): none here
            self.pad_to_multiple_of = None
        if self.loss_type == "chunked_nll":
            warnings.warn("loss_type='chunked_nll' is deprecated: use 'nll' (the default), which "
                          "computes the loss the same way", FutureWarning, stacklevel=3)
            self.loss_type = "nll"
        if self.loss_type not in _LOSS_TYPES:
            raise ValueError(f"loss_type {self.loss_type!r}: expected one of "
                             f"{', '.join(_LOSS_TYPES)}")
        if self.packing_strategy == "bfd-requeue":
            warnings.warn("packing_strategy 'bfd-requeue' is renamed 'bfd_split'", FutureWarning,
                          stacklevel=3)
            self.packing_strategy = "bfd_split"
        if self.packing_strategy not in _PACKING_STRATEGIES:
            raise ValueError(f"packing_strategy {self.packing_strategy!r}: expected one of "
                             f"{', '.join(_PACKING_STRATEGIES)}")
        if self.truncation_mode not in _TRUNCATION_MODES:
            raise ValueError(f"truncation_mode {self.truncation_mode!r}: expected one of "
                             f"{', '.join(_TRUNCATION_MODES)}")
        if self.truncation_mode == "keep_end":
            warnings.warn("truncation_mode='keep_end' is deprecated: use 'keep_start'",
                          FutureWarning, stacklevel=3)
        if self.pad_token is not None:
            warnings.warn("pad_token is deprecated: set tokenizer.pad_token and pass the "
                          "tokenizer as processing_class", FutureWarning, stacklevel=3)
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length must be positive or None, got {self.max_length}")
