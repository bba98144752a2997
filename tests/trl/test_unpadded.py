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
from cove.trl.utils import packs_sequences, unpad_rows
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


# prompts long enough for each pair to go through the model once (dpo_trainer._MIN_SHARED)
LONG = {**PREFERENCE, "prompt": [" ".join([p] * (90 // len(p) + 1))
                                  for p in PREFERENCE["prompt"]]}


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("data", [PREFERENCE, LONG], ids=["short", "shared-prompt"])
def test_dpo_unpadded_equals_padded(tiny, tmp_path, monkeypatch, kind, data):
    trainer = DPOTrainer(str(tiny[kind]), args=_args(DPOConfig, tmp_path),
                         train_dataset=Dataset.from_dict(data))
    shared = []
    real = dpo_module._pair_layout
    monkeypatch.setattr(dpo_module, "_pair_layout",
                        lambda *a: (out := real(*a)) and shared.append(out[2].blocks) or out)
    _compare(trainer, dpo_module, monkeypatch)
    prompts = [b[0] for b in shared[0][0]]

    assert all(p >= dpo_module._MIN_SHARED for p in prompts) if data is LONG \
        else prompts == [0] * 4


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
