"""A LoRA model through Cove's Trainer: only the adapter trains, and what the Trainer saves is
an adapter folder that PeftModel.from_pretrained loads back to the trained outputs."""

from __future__ import annotations

import os

import torch

from cove import Trainer, TrainingArguments
from cove.peft import LoraConfig, PeftModel, TaskType, get_peft_model
from tests.peft.conftest import assert_close, load, logits


def _examples(n: int) -> list[dict]:
    gen = torch.Generator().manual_seed(3)
    rows = torch.randint(5, 60, (n, 8), generator=gen)
    return [{"input_ids": r.tolist(), "labels": r.tolist()} for r in rows]


def test_lora_training_with_the_trainer(folders, tmp_path):
    base = load(folders, "llama", "cove")
    frozen = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = get_peft_model(base, LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=8,
                                            target_modules=["q_proj", "v_proj"]))
    args = TrainingArguments(str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=6,
                             learning_rate=1e-2, logging_steps=1, save_steps=3,
                             report_to="none", disable_tqdm=True, use_cpu=True)
    trainer = Trainer(model, args, train_dataset=_examples(8))
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 6 and losses[-1] < losses[0]

    after = {n.replace(".base_layer", ""): p for n, p in base.named_parameters()
             if "lora_" not in n}
    assert after.keys() == frozen.keys()
    assert all(torch.equal(after[n], frozen[n]) for n in frozen)  # the base stayed frozen
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)

    trainer.save_model()
    out = tmp_path / "out"
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(out))
    assert not (out / "model.safetensors").exists()  # the adapter, not the whole model
    assert (out / "checkpoint-6" / "adapter_model.safetensors").exists()
    again = PeftModel.from_pretrained(load(folders, "llama", "cove"), str(out))
    assert_close(logits(again.eval(), "llama"), logits(model.eval(), "llama"))
