"""LoRA training through Cove's fused ops (merged-weight LoRA GEMM, chunked LM-head loss,
lean RMSNorm and MLP): the same loss and adapter gradients as peft + transformers, and as the
unfused composition of the same layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import peft
from cove.peft import LoraConfig, get_peft_model
from cove.peft.lora import Linear as LoraLinear
from tests.peft.conftest import assert_close, batch, load, randomize_adapter


def adapter_grads(model: nn.Module, inputs: dict) -> tuple[float, dict[str, torch.Tensor]]:
    model.train()
    loss = model(**inputs).loss
    loss.backward()
    return loss.item(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("options", [
    dict(target_modules="all-linear"),
    dict(target_modules="all-linear", use_rslora=True, lora_dropout=0.0, r=4, lora_alpha=3),
    dict(target_modules=["q_proj", "down_proj", "lm_head"]),  # a LoRA'd LM head
    dict(target_modules=["k_proj", "up_proj"], modules_to_save=["lm_head"]),
])
def test_training_gradients_equal_peft(folders, options):
    inputs = batch("llama")
    inputs["labels"] = inputs["input_ids"].clone()
    inputs["labels"][0, :2] = -100
    results = {}
    for library, get, config in (("ref", peft.get_peft_model, peft.LoraConfig),
                                 ("cove", get_peft_model, LoraConfig)):
        torch.manual_seed(0)
        model = get(load(folders, "llama", library), config(task_type="CAUSAL_LM", **options))
        results[library] = adapter_grads(randomize_adapter(model, seed=3), inputs)
    (ref_loss, ref_grads), (loss, grads) = results["ref"], results["cove"]
    assert abs(loss - ref_loss) <= 1e-5
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        assert_close(grad, ref_grads[name])


def test_lora_linear_with_two_active_adapters_matches_the_unfused_sum():
    torch.manual_seed(0)
    layer = LoraLinear(nn.Linear(12, 8), "one", r=4, lora_alpha=8)
    layer.update_layer("two", 2, 3.0, 0.0, True, False, False)
    layer.set_adapter(["one", "two"])
    for p in (layer.lora_B["one"].weight, layer.lora_B["two"].weight):
        nn.init.normal_(p)
    x = torch.randn(2, 5, 12, requires_grad=True)
    ours = layer(x)
    plain = layer.base_layer(x) + sum(
        layer.lora_B[n](layer.lora_A[n](x)) * layer.scaling[n] for n in ("one", "two"))
    assert_close(ours, plain)
    params = [x, *(p for p in layer.parameters() if p.requires_grad)]
    g = torch.randn_like(plain)
    for o, p in zip(torch.autograd.grad((ours * g).sum(), params),
                    torch.autograd.grad((plain * g).sum(), params), strict=True):
        assert_close(o, p)
    with torch.no_grad():  # inference keeps the unfused path: the same values
        assert_close(layer(x), plain)
