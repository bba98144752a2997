"""Gradient checkpointing: blocks recomputed in the backward pass, same gradients."""

from __future__ import annotations

import pytest
import torch

from cove.models import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MPNetConfig,
    MPNetForMaskedLM,
)

IDS = torch.tensor([[1, 5, 9, 3, 7, 2], [4, 8, 6, 2, 0, 0]])
MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}

MODELS = {
    "bert": lambda: BertForSequenceClassification(BertConfig(
        vocab_size=16, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
        intermediate_size=24, num_labels=3, **NO_DROPOUT)),
    "mpnet": lambda: MPNetForMaskedLM(MPNetConfig(
        vocab_size=16, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=24, **NO_DROPOUT)),
    "llama": lambda: LlamaForCausalLM(LlamaConfig(
        vocab_size=16, hidden_size=16, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=24)),
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(
        vocab_size=16, n_embd=16, n_layer=3, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0)),
}


def _labels(name: str) -> torch.Tensor:
    return torch.tensor([0, 2]) if name == "bert" else IDS.masked_fill(MASK == 0, -100)


def _gradients(model, name: str) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = model(input_ids=IDS, attention_mask=MASK, labels=_labels(name)).loss
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()
                         if p.grad is not None}


@pytest.mark.parametrize("name", MODELS)
def test_same_gradients_with_blocks_recomputed(name):
    torch.manual_seed(0)
    model = MODELS[name]().train()
    loss, grads = _gradients(model, name)
    calls = []
    for block in model._blocks():
        block.register_forward_pre_hook(lambda *_: calls.append(1))  # (recomputation may stop
        # before the block's end, once it has what the backward needs)
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    checked_loss, checked_grads = _gradients(model, name)
    blocks = len(model._blocks())
    assert len(calls) == 2 * blocks  # each block ran again in the backward pass
    assert checked_loss == pytest.approx(loss, abs=1e-6)
    assert checked_grads.keys() == grads.keys()
    for key in grads:
        torch.testing.assert_close(checked_grads[key], grads[key], rtol=1e-5, atol=1e-6)

    calls.clear()
    with torch.no_grad():  # inference is unaffected
        model.eval()(input_ids=IDS, attention_mask=MASK)
    assert len(calls) == blocks
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing
