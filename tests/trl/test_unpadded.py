"""Padded batches through Cove's decoders as one row without the padding (DPOTrainer and
SFTTrainer do this by themselves): the same losses and gradients as the padded batch, and the
padded path for models that do not read packed position ids."""

from __future__ import annotations

import pytest
import torch

import cove.trl.dpo_trainer as dpo_module
import cove.trl.sft_trainer as sft_module
from cove.datasets import Dataset
from cove.trl import DPOConfig, DPOTrainer, SFTConfig, SFTTrainer
from cove.trl.reward_trainer import packs_sequences, unpad_rows
from tests.trl.conftest import PREFERENCE, PROMPT_COMPLETION


def _args(config, tmp_path):
    return config(str(tmp_path), report_to="none", bf16=False, max_steps=1,
                  per_device_train_batch_size=4, save_strategy="no", disable_tqdm=True)


def _loss_and_grads(trainer, batch):
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in trainer.model.parameters()
                           if p.grad is not None]


def _compare(trainer, module, monkeypatch):
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    assert packs_sequences(trainer.model)
    assert not bool(batch["attention_mask"].all())  # the rows are padded
    calls = []
    real = module.unpad_rows
    monkeypatch.setattr(module, "unpad_rows", lambda *a: calls.append(1) or real(*a))
    packed, packed_grads = _loss_and_grads(trainer, batch)
    assert calls
    monkeypatch.setattr(module, "packs_sequences", lambda model: False)
    padded, padded_grads = _loss_and_grads(trainer, batch)
    torch.testing.assert_close(packed, padded, atol=1e-6, rtol=1e-5)
    assert len(packed_grads) == len(padded_grads) > 0
    for a, b in zip(packed_grads, padded_grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_dpo_unpadded_equals_padded(tiny, tmp_path, monkeypatch, kind):
    trainer = DPOTrainer(str(tiny[kind]), args=_args(DPOConfig, tmp_path),
                         train_dataset=Dataset.from_dict(PREFERENCE))
    _compare(trainer, dpo_module, monkeypatch)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_sft_unpadded_equals_padded(tiny, tmp_path, monkeypatch, kind):
    trainer = SFTTrainer(str(tiny[kind]), args=_args(SFTConfig, tmp_path),
                         train_dataset=Dataset.from_dict(PROMPT_COMPLETION))
    _compare(trainer, sft_module, monkeypatch)


def test_unpad_rows():
    ids = torch.tensor([[5, 6, 7], [8, 9, 0]])
    flat, position_ids, keep = unpad_rows(ids, torch.tensor([[1, 1, 1], [1, 1, 0]]))
    assert flat.tolist() == [[5, 6, 7, 8, 9]] and position_ids.tolist() == [[0, 1, 2, 0, 1]]
    assert keep.tolist() == [[True] * 3, [True, True, False]]
    assert unpad_rows(ids, torch.tensor([[1, 1, 1], [0, 1, 1]])) is None  # left padding
