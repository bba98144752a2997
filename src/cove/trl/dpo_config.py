"""DPOConfig: TRL's Direct Preference Optimization fields and defaults on Cove's
TrainingArguments."""

from __future__ import annotations

from dataclasses import dataclass, field

from cove.trl.base import BaseConfig

# the per-pair losses the DPOTrainer computes (trl's names)
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "robust")


@dataclass
class DPOConfig(BaseConfig):
    """Configuration of the DPOTrainer (trl.DPOConfig's fields and defaults).

    Model: `model_init_kwargs` (from_pretrained's keyword arguments when the model is given by id
    or path), `disable_dropout` (in the model and the reference).
    Data: `dataset_num_proc`; `max_length` (prompt + completion tokens kept per sequence, None:
    no truncation); `truncation_mode` ("keep_start" keeps the first max_length tokens and drops
    pairs whose prompt alone fills them; "keep_end" keeps the last ones);
    `pad_to_multiple_of`; `precompute_ref_log_probs` (the reference's log-probs of every pair are
    computed once before training and kept as dataset columns: no reference forward while
    training, and no reference model kept); `precompute_ref_batch_size` (default: the train or
    eval batch size).
    Loss: `loss_type` (one of "sigmoid", "hinge", "ipo", "robust", or a list of them summed with
    `loss_weights`, default weights 1); `beta` (the KL strength; IPO's tau); `label_smoothing`
    (robust DPO's probability that a label is flipped, in [0, 0.5)).
    Defaults that differ from TrainingArguments: learning_rate 1e-6, logging_steps 10,
    gradient_checkpointing True, bf16 where the machine has it.
    """

    learning_rate: float = 1e-6
    disable_dropout: bool = True
    dataset_num_proc: int | None = None
    max_length: int | None = 1024
    truncation_mode: str = "keep_start"
    pad_to_multiple_of: int | None = None
    precompute_ref_log_probs: bool = False
    precompute_ref_batch_size: int | None = None
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid"])
    loss_weights: list[float] | None = None
    label_smoothing: float = 0.0
    beta: float = 0.1

    def __post_init__(self) -> None:
        if isinstance(self.loss_type, str):
            self.loss_type = [self.loss_type]
        unknown = [t for t in self.loss_type if t not in LOSS_TYPES]
        if unknown or not self.loss_type:
            raise ValueError(f"loss_type {unknown or self.loss_type!r} is not supported: "
                             f"choose from {', '.join(LOSS_TYPES)}")
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError(f"loss_weights has {len(self.loss_weights)} weights for "
                             f"{len(self.loss_type)} loss types: give one per loss type")
        if "robust" in self.loss_type and not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"the robust loss needs 0 <= label_smoothing < 0.5, got "
                             f"{self.label_smoothing}")
        if self.truncation_mode not in ("keep_start", "keep_end"):
            raise ValueError(f"truncation_mode must be 'keep_start' or 'keep_end', got "
                             f"{self.truncation_mode!r}")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"max_length must be positive or None, got {self.max_length}")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be positive or None, got "
                             f"{self.pad_to_multiple_of}")
        super().__post_init__()
