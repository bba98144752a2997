"""GRPOConfig: the settings of Group Relative Policy Optimization (trl.GRPOConfig's names and
defaults, without the vLLM, tool-calling and multimodal fields)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cove.trl.base import BaseConfig

LOSS_TYPES = ("dapo", "grpo", "bnpo", "dr_grpo", "cispo", "sapo", "luspo")
SCALE_REWARDS = ("group", "batch", "none")


@dataclass
class GRPOConfig(BaseConfig):
    """The arguments of `GRPOTrainer`: TrainingArguments plus

    Generation: `num_generations` completions are sampled per prompt (the global batch,
    `per_device_train_batch_size * processes * steps_per_generation`, counts completions and
    must be divisible by it); `max_completion_length` new tokens at most; `temperature`,
    `top_p`, `top_k` (0: off), `min_p`, `repetition_penalty`, and `generation_kwargs` (more
    GenerationConfig fields). `generation_batch_size` or `steps_per_generation` (default:
    `gradient_accumulation_steps`) sets how many optimizer micro-steps one generation feeds.
    `chat_template_kwargs` go to the chat template of conversational prompts.

    Loss: `loss_type` one of "dapo" (default: token sum over the active tokens of the whole
    accumulated batch), "grpo" (mean per sequence, then over sequences), "bnpo" (over the
    active tokens of the micro-batch), "dr_grpo" (over batch * max_completion_length),
    "cispo", "sapo", "luspo". `epsilon`/`epsilon_high` clip the ratio to [1-eps, 1+eps_high];
    `delta` caps the unclipped ratio (two-sided GRPO); `importance_sampling_level` "token" or
    "sequence" (GSPO). `num_iterations` updates per generation (with the old log-probs).
    `beta` > 0 adds the k3 KL estimate to a reference model (frozen copy, or the base with the
    adapter disabled), times the importance ratio when `use_bias_correction_kl` (default, as
    trl 1.16: the unbiased reverse-KL gradient). `scale_rewards`: "group" (default; True), "batch" or "none" (False).
    `reward_weights` weigh the reward functions (default 1 each). `mask_truncated_completions`
    drops completions that hit the length limit from the loss. `disable_dropout` turns dropout
    off in the model (and reference).
    """

    learning_rate: float = 1e-6
    remove_unused_columns: bool | None = False
    disable_dropout: bool = False
    num_generations: int = 8
    max_completion_length: int = 512
    shuffle_dataset: bool = True
    generation_batch_size: int | None = None
    steps_per_generation: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float | None = None
    repetition_penalty: float = 1.0
    generation_kwargs: dict[str, Any] | str | None = None
    chat_template_kwargs: dict[str, Any] | str | None = None
    beta: float = 0.0
    use_bias_correction_kl: bool = True
    num_iterations: int = 1
    epsilon: float = 0.2
    epsilon_high: float | None = None
    delta: float | None = None
    sapo_temperature_neg: float = 1.05
    sapo_temperature_pos: float = 1.0
    importance_sampling_level: str = "token"
    reward_weights: list[float] | None = None
    scale_rewards: str | bool = "group"
    loss_type: str = "dapo"
    mask_truncated_completions: bool = False

    def __post_init__(self) -> None:
        for name in ("generation_kwargs", "chat_template_kwargs"):
            value = getattr(self, name)
            if isinstance(value, str):  # from a command line: a JSON object
                try:
                    setattr(self, name, json.loads(value))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{name} must be a dict or a JSON object, got {value!r}: "
                                     f"{e}") from None
        super().__post_init__()
        self.scale_rewards = {True: "group", False: "none"}.get(self.scale_rewards,
                                                                self.scale_rewards)
        if self.scale_rewards not in SCALE_REWARDS:
            raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS} (or True/False), "
                             f"got {self.scale_rewards!r}")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        if self.importance_sampling_level not in ("token", "sequence"):
            raise ValueError("importance_sampling_level must be 'token' or 'sequence', got "
                             f"{self.importance_sampling_level!r}")
        if self.num_generations < 2:
            raise ValueError("GRPO needs at least 2 generations per prompt (num_generations) to "
                             f"compare them, got {self.num_generations}")
        if self.num_iterations < 1:
            raise ValueError(f"num_iterations must be at least 1, got {self.num_iterations}")
        global_batch = self.per_device_train_batch_size * self.world_size
        if self.generation_batch_size is not None and self.steps_per_generation is not None:
            raise ValueError("set generation_batch_size or steps_per_generation, not both")
        if self.generation_batch_size is not None:
            if self.generation_batch_size % global_batch:
                raise ValueError(f"generation_batch_size ({self.generation_batch_size}) must be "
                                 f"divisible by the global batch size ({global_batch})")
            self.steps_per_generation = self.generation_batch_size // global_batch
        else:
            if self.steps_per_generation is None:
                self.steps_per_generation = self.gradient_accumulation_steps
            self.generation_batch_size = global_batch * self.steps_per_generation
        if self.generation_batch_size % self.num_generations:
            raise ValueError(
                f"the generation batch ({self.generation_batch_size} completions: "
                f"per_device_train_batch_size {self.per_device_train_batch_size} x "
                f"{self.world_size} processes x steps_per_generation "
                f"{self.steps_per_generation}) must be divisible by num_generations "
                f"({self.num_generations}): each prompt's completions are compared as one group")
