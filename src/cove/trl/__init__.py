"""cove.trl: SFT, reward modeling, DPO, PPO and GRPO trainers with TRL's names, dataset formats
and losses, on Cove's Trainer, cove.peft and generate.

    from cove.trl import SFTConfig, SFTTrainer

    trainer = SFTTrainer(model="my-org/base", train_dataset=dataset,
                         args=SFTConfig("out", max_length=512))
    trainer.train()

Importing this package imports nothing heavy: the names below load their module on first use.
"""

# ruff: noqa: F401  (the TYPE_CHECKING imports at the end are re-exports)
from __future__ import annotations

from typing import TYPE_CHECKING

from cove._lazy import lazy_exports

# module -> the public names it defines
_EXPORTS = {
    "cove.trl.data_utils": (
        "is_conversational", "apply_chat_template", "maybe_apply_chat_template",
        "extract_prompt", "maybe_extract_prompt", "unpair_preference_dataset",
        "maybe_unpair_preference_dataset", "is_conversational_from_value",
        "maybe_convert_to_chatml"),
    "cove.trl.base": ("create_reference_model",),
    "cove.trl.packing": ("pack_dataset",),
    "cove.trl.sft_config": ("SFTConfig",),
    "cove.trl.sft_trainer": ("SFTTrainer",),
    "cove.trl.reward_config": ("RewardConfig",),
    "cove.trl.reward_trainer": ("RewardTrainer",),
    "cove.trl.dpo_config": ("DPOConfig",),
    "cove.trl.dpo_trainer": ("DPOTrainer",),
    "cove.trl.grpo_config": ("GRPOConfig",),
    "cove.trl.grpo_trainer": ("GRPOTrainer",),
    "cove.trl.ppo_config": ("PPOConfig",),
    "cove.trl.ppo_trainer": ("PPOTrainer",),
    "cove.trl.value_head": ("AutoModelForCausalLMWithValueHead",),
    "cove.trl.scripts": ("ScriptArguments", "ModelConfig", "get_peft_config",
                         "get_quantization_config"),
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS, reference="trl")

if TYPE_CHECKING:  # what IDEs and type checkers see; at run time the names resolve lazily
    from cove.trl.base import create_reference_model
    from cove.trl.data_utils import (
        apply_chat_template,
        extract_prompt,
        is_conversational,
        is_conversational_from_value,
        maybe_apply_chat_template,
        maybe_convert_to_chatml,
        maybe_extract_prompt,
        maybe_unpair_preference_dataset,
        unpair_preference_dataset,
    )
    from cove.trl.dpo_config import DPOConfig
    from cove.trl.dpo_trainer import DPOTrainer
    from cove.trl.grpo_config import GRPOConfig
    from cove.trl.grpo_trainer import GRPOTrainer
    from cove.trl.packing import pack_dataset
    from cove.trl.ppo_config import PPOConfig
    from cove.trl.ppo_trainer import PPOTrainer
    from cove.trl.reward_config import RewardConfig
    from cove.trl.reward_trainer import RewardTrainer
    from cove.trl.scripts import (
        ModelConfig,
        ScriptArguments,
        get_peft_config,
        get_quantization_config,
    )
    from cove.trl.sft_config import SFTConfig
    from cove.trl.sft_trainer import SFTTrainer
    from cove.trl.value_head import AutoModelForCausalLMWithValueHead
