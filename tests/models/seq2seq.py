"""Shared by the encoder-decoder parity tests (T5, BART, Marian)."""

from __future__ import annotations

import torch


def compare_forward(hf, cove, ids: torch.Tensor, mask: torch.Tensor,
                    labels: torch.Tensor) -> None:
    """transformers' and Cove's encoder states, logits and loss agree to 1e-5."""
    with torch.no_grad():
        a = hf(input_ids=ids, attention_mask=mask, labels=labels)
        b = cove(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(b.encoder_last_hidden_state, a.encoder_last_hidden_state,
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(b.logits, a.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(b.loss, a.loss, rtol=0, atol=1e-5)


def compare_gradients(hf, cove, ids: torch.Tensor, mask: torch.Tensor,
                      labels: torch.Tensor) -> None:
    """Both models in training mode, Cove's with gradient checkpointing: the same gradients."""
    hf.train()
    cove.train().gradient_checkpointing_enable()
    hf(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    cove(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    grads = dict(hf.named_parameters())
    for name, param in cove.named_parameters():
        torch.testing.assert_close(param.grad, grads[name].grad, rtol=1e-4, atol=1e-5,
                                   msg=name)
