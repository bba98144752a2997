"""cove.models.pages: a model's weights moved onto transparent huge pages before decoding
steps stream them. The move must change nothing but where the bytes live: the same tensor
objects, tied and viewing tensors still sharing, the same outputs, a checkpoint that saves and
loads as before."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from cove.models import pages
from cove.models.weight_only import Int4WeightOnlyConfig, TorchAoConfig, quantize_model
from tests.models.test_kernels import tiny_llama

pytestmark = pytest.mark.skipif(pages._thp_mode() not in ("always", "madvise"),
                                reason="no transparent huge pages on this machine")


def huge_page_eligible(address: int) -> bool:
    """Whether the mapping holding `address` may be backed by huge pages (smaps' THPeligible,
    set by madvise(MADV_HUGEPAGE) on it)."""
    text = open("/proc/self/smaps").read()
    for block in re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", text):
        lo, hi = (int(v, 16) for v in block.split()[0].split("-"))
        if lo <= address < hi:
            return bool(re.search(r"THPeligible:\s+1", block))
    raise AssertionError(f"{address:#x} is in no mapping")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weights_move_and_nothing_else_changes(dtype, tmp_path):
    model = tiny_llama(dtype)
    ids = torch.tensor([[5, 17, 101, 9]])
    with torch.no_grad():
        before = model(ids).logits
    params = dict(model.named_parameters())
    moved = pages.place_on_huge_pages(model)
    assert moved >= sum(p.numel() * p.element_size() for p in params.values())
    assert dict(model.named_parameters()) == params  # the same objects
    assert model.lm_head.weight is model.model.embed_tokens.weight
    for p in params.values():
        assert huge_page_eligible(p.data_ptr())
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)
    assert pages.place_on_huge_pages(model) == 0  # once
    model.save_pretrained(tmp_path)  # safetensors: no tensors sharing memory
    again = type(model).from_pretrained(tmp_path, dtype=dtype).eval()
    with torch.no_grad():
        assert torch.equal(again(ids).logits, before)
    # and still trainable in place
    model.train()
    model(ids, labels=ids).loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()


def test_views_of_one_storage_keep_sharing_it():
    module = nn.Module()
    whole = torch.arange(64, dtype=torch.float32)
    module.register_buffer("whole", whole)
    module.register_buffer("upper", whole[32:].view(4, 8))
    pages.place_on_huge_pages(module)
    assert module.upper.untyped_storage().data_ptr() == module.whole.untyped_storage().data_ptr()
    assert torch.equal(module.upper.flatten(), torch.arange(32, 64, dtype=torch.float32))
    module.whole[40] = -1.0
    assert module.upper[1, 0] == -1.0


def test_weight_only_int4_generates_the_same():
    model = tiny_llama(torch.float32)
    quantize_model(model, TorchAoConfig(Int4WeightOnlyConfig(group_size=32)))
    ids = torch.tensor([[5, 17, 101, 9]])
    with torch.no_grad():
        before = model(ids).logits
    assert pages.place_on_huge_pages(model) > 0
    with torch.no_grad():
        assert torch.equal(model(ids).logits, before)
