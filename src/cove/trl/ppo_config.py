"""PPOConfig: the settings of PPO with a reward model (the older TRL PPOConfig's names and
defaults; trl 1.16 has no PPO)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from cove.trl.base import BaseConfig


@dataclass
class PPOConfig(BaseConfig):
    """The arguments of `PPOTrainer`: TrainingArguments plus

    Rollouts: `response_length` new tokens at most, sampled at `temperature`; a response ends
    at `stop_token_id` (or the EOS with `stop_token="eos"`; else at the length limit);
    `missing_eos_penalty` is subtracted from the score of a response without EOS.
    `total_episodes` (default: epochs x dataset size) responses in all.

    Batches: each rollout batch holds `per_device_train_batch_size x
    gradient_accumulation_steps x num_mini_batches` prompts per process; each of its
    `num_ppo_epochs` passes takes `num_mini_batches` optimizer steps (mini-batches of
    `per_device_train_batch_size x gradient_accumulation_steps`).

    Objective: per-token reward -kl_coef x KL(policy || reference) (`kl_estimator` "k1":
    log p - log r; "k3": (r/p - 1) - log(r/p)), plus the reward model's score at the last
    response token (`whiten_rewards` whitens them first); advantages and returns by GAE
    (`gamma`, `lam`), advantages whitened; loss = clipped policy loss (`cliprange`) +
    `vf_coef` x clipped value loss (`cliprange_value`).
    """

    num_ppo_epochs: int = 4
    num_mini_batches: int = 1
    whiten_rewards: bool = False
    kl_coef: float = 0.05
    kl_estimator: str = "k1"
    cliprange: float = 0.2
    vf_coef: float = 0.1
    cliprange_value: float = 0.2
    gamma: float = 1.0
    lam: float = 0.95
    response_length: int = 53
    stop_token: str | None = None
    stop_token_id: int | None = None
    temperature: float = 0.7
    missing_eos_penalty: float | None = None
    total_episodes: int | None = None
    local_rollout_forward_batch_size: int = 64
    # the older TRL's PPOConfig kept TrainingArguments' default here, not TRL's later one
    gradient_checkpointing: bool | None = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kl_estimator not in ("k1", "k3"):
            raise ValueError(f"kl_estimator must be 'k1' or 'k3', got {self.kl_estimator!r}")
        if self.stop_token not in (None, "eos"):
            raise ValueError(f"stop_token must be None or 'eos', got {self.stop_token!r}")
        if self.num_mini_batches < 1 or self.num_ppo_epochs < 1:
            raise ValueError("num_mini_batches and num_ppo_epochs must be at least 1")
        if self.response_length < 1:
            raise ValueError(f"response_length must be at least 1, got {self.response_length}")

    @property
    def local_mini_batch_size(self) -> int:
        """Prompts of one optimizer step on this process."""
        return self.per_device_train_batch_size * self.gradient_accumulation_steps

    @property
    def local_batch_size(self) -> int:
        """Prompts of one rollout batch on this process."""
        return self.local_mini_batch_size * self.num_mini_batches

    @property
    def batch_size(self) -> int:
        """Prompts of one rollout batch on all processes."""
        return self.local_batch_size * self.world_size

    def num_total_batches(self, dataset_size: int) -> int:
        """Rollout batches of the run."""
        episodes = self.total_episodes
        if episodes is None:
            episodes = int(self.num_train_epochs * dataset_size)
        return max(math.ceil(episodes / self.batch_size), 1)
