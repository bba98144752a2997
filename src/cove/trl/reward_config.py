"""RewardConfig: TRL's reward-modeling fields and defaults on Cove's TrainingArguments."""

from __future__ import annotations

from dataclasses import dataclass

from cove.trl.base import BaseConfig


@dataclass
class RewardConfig(BaseConfig):
    """Configuration of the RewardTrainer (trl.RewardConfig's fields and defaults).

    `model_init_kwargs`: keyword arguments of AutoModelForSequenceClassification.from_pretrained
    when the model is given by id or path (num_labels is always 1).
    `disable_dropout`: turn the model's dropout off. `dataset_num_proc`: processes for the
    dataset's tokenization. `eos_token`: the end-of-sequence token appended to standard
    (non-conversational) texts; default the tokenizer's. `max_length`: pairs whose chosen or
    rejected sequence is longer (in tokens) are dropped; None keeps all.
    `pad_to_multiple_of`: pad each batch to a multiple of this length.
    `center_rewards_coefficient`: adds coefficient * mean((r_chosen + r_rejected)^2) to the loss,
    pulling rewards towards zero mean (Eisenstein et al. 2023, eq. 2; 0.01 is usual).
    Defaults that differ from TrainingArguments: learning_rate 1e-4, logging_steps 10,
    gradient_checkpointing True, bf16 where the machine has it.
    """

    learning_rate: float = 1e-4
    disable_dropout: bool = True
    dataset_num_proc: int | None = None
    eos_token: str | None = None
    max_length: int | None = 1024
    pad_to_multiple_of: int | None = None
    center_rewards_coefficient: float | None = None

    def __post_init__(self) -> None:
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length must be positive or None, got {self.max_length}")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be positive or None, got "
                             f"{self.pad_to_multiple_of}")
        super().__post_init__()
