"""device_map: the planner on given memory budgets, and real forwards through the hook path.

This machine may have no GPU: the planner is a pure function tested with made-up budgets,
and the hooks are exercised with every block mapped to the CPU (then compared with the
unhooked model); `move` is checked on the meta device.
"""

from __future__ import annotations

from collections import namedtuple

import pytest
import torch
import transformers

from cove.models import AutoModelForCausalLM, AutoModelForSequenceClassification
from cove.models.outputs import BaseModelOutput
from cove.models.placement import (
    available_budgets,
    block_sizes,
    blocks,
    check_device,
    dispatch,
    move,
    place,
    plan,
)

MiB = 2**20
SIZES = [("embed", 40 * MiB), ("layers.0", 30 * MiB), ("layers.1", 30 * MiB),
         ("layers.2", 30 * MiB), ("norm", 1 * MiB), ("head", 0)]
TIED = {"head": "embed"}


def test_plan_whole_model_on_the_first_gpu_when_it_fits():
    budgets = [("cuda:0", 200 * MiB), ("cuda:1", 200 * MiB), ("cpu", None)]
    assert set(plan(SIZES, budgets, TIED).values()) == {"cuda:0"}


def test_plan_spreads_in_order_over_gpus_then_cpu():
    budgets = [("cuda:0", 75 * MiB), ("cuda:1", 50 * MiB), ("cpu", None)]
    assert plan(SIZES, budgets, TIED) == {
        "embed": "cuda:0", "layers.0": "cuda:0",   # 70 of 75
        "layers.1": "cuda:1",                      # 30 of 50: layers.2 does not fit after it
        "layers.2": "cpu", "norm": "cpu",          # never back to an earlier device
        "head": "cuda:0",                          # tied to the embeddings
    }


def test_plan_cpu_only_and_too_small():
    assert set(plan(SIZES, [("cpu", None)], TIED).values()) == {"cpu"}
    with pytest.raises(ValueError, match="does not fit.*'layers.2'"):
        plan(SIZES, [("cuda:0", 80 * MiB), ("cpu", 40 * MiB)], TIED)


def test_available_budgets_end_with_the_cpu():
    budgets = available_budgets()
    assert budgets[-1] == ("cpu", None)
    assert len(budgets) == 1 + (torch.cuda.device_count() if torch.cuda.is_available() else 0)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3,
                                      num_attention_heads=4, num_key_value_heads=2,
                                      intermediate_size=40, tie_word_embeddings=True)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("llama") / "tiny"
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=37, num_labels=3)
    folder = tmp_path_factory.mktemp("bert") / "tiny"
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    return str(folder)


def test_blocks_and_sizes(tiny_llama):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    assert [n for n, _ in blocks(model)] == [
        "model.embed_tokens", "model.layers.0", "model.layers.1", "model.layers.2",
        "model.norm", "model.rotary_emb", "lm_head"]
    sizes, tied = block_sizes(model)
    assert tied == {"lm_head": "model.embed_tokens"}
    assert dict(sizes)["lm_head"] == 0
    total = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    assert sum(s for _, s in sizes) == total


def test_forward_through_the_hooks(tiny_llama):
    ids = torch.tensor([[1, 5, 9, 3, 7], [2, 4, 6, 8, 10]])
    plain = AutoModelForCausalLM.from_pretrained(tiny_llama)
    hooked = AutoModelForCausalLM.from_pretrained(tiny_llama)
    place(hooked, {name: "cpu" for name, _ in blocks(hooked)})
    assert all(hooked.get_submodule(n)._forward_pre_hooks for n, _ in blocks(hooked))
    with torch.no_grad():
        want, got = plain(ids).logits, hooked(ids).logits
    assert torch.equal(got, want)


def test_bert_forward_through_the_hooks(tiny_bert):
    batch = {"input_ids": torch.tensor([[2, 5, 9, 3, 0], [2, 4, 6, 8, 3]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])}
    plain = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    hooked = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    mapping = {name: "cpu" for name, _ in blocks(hooked)}
    assert "bert.encoder.layer.1" in mapping and "classifier" in mapping
    place(hooked, mapping)
    with torch.no_grad():
        assert torch.equal(hooked(**batch).logits, plain(**batch).logits)


def test_from_pretrained_device_map(tiny_llama, tiny_bert):
    auto = AutoModelForCausalLM.from_pretrained(tiny_llama, device_map="auto")
    if not torch.cuda.is_available():
        assert set(auto.hf_device_map.values()) == {"cpu"}
        assert not auto.model.layers[0]._forward_pre_hooks  # one device: no hooks
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_bert,
        device_map={"bert.embeddings": "cpu", "bert.encoder": "cpu", "bert.pooler": "cpu",
                    "classifier": torch.device("cpu")})
    assert model.hf_device_map["classifier"] == "cpu"
    with pytest.raises(ValueError, match="does not place .* weights, e.g. classifier.weight"):
        AutoModelForSequenceClassification.from_pretrained(
            tiny_bert, device_map={"bert": "cpu"})
    with pytest.raises(ValueError, match="'bert.decoder', which is not a module"):
        AutoModelForSequenceClassification.from_pretrained(
            tiny_bert, device_map={"bert.decoder": "cpu", "": "cpu"})
    with pytest.raises(ValueError, match="device_map must be 'auto', a device or a dict"):
        dispatch(model, "balanced-ish")
    with pytest.raises(ValueError, match="not both"):
        AutoModelForCausalLM.from_pretrained(tiny_llama, device="cpu", device_map="auto")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the errors of a machine without GPU")
def test_missing_gpu_is_a_clear_error(tiny_llama):
    with pytest.raises(ValueError, match="no CUDA GPU"):
        check_device(torch.device("cuda", 1))
    with pytest.raises(ValueError, match="'cuda:0' asked for, but this machine has no CUDA"):
        AutoModelForCausalLM.from_pretrained(tiny_llama, device_map={"": 0})


def test_move_nested_values():
    x = torch.ones(2)
    out = move((x, {"a": [x, 3]}, BaseModelOutput(last_hidden_state=x), "text"),
               torch.device("meta"))
    assert out[0].is_meta and out[1]["a"][0].is_meta and out[1]["a"][1] == 3
    assert isinstance(out[2], BaseModelOutput) and out[2].last_hidden_state.is_meta
    assert out[3] == "text"


def test_cache_follows_each_layer_device():
    """generate allocates the KV cache on the inputs' device; with a device_map, a layer on
    another device must get its keys and values there (they used to stay on the first device,
    and attention then mixed devices). The meta device stands in for a second GPU."""
    from cove.models.cache import KVCache

    cache = KVCache(2, batch_size=2, num_kv_heads=1, head_dim=4, max_length=6)
    k = torch.ones(2, 1, 3, 4, device="meta")
    keys, values = cache.update(1, k, k)
    assert keys.is_meta and values.is_meta and keys.shape == (2, 1, 3, 4)
    x = torch.arange(24.0).reshape(2, 1, 3, 4)
    keys, _ = cache.update(0, x, x)
    assert keys.device.type == "cpu" and torch.equal(keys, x)
    cache.reorder(torch.tensor([1, 0]))  # beam search: each layer's rows, on its own device
    assert cache.keys[1].is_meta and torch.equal(cache.keys[0][:, :, :3], x.flip(0))


def test_pipeline_device_keeps_a_dispatched_model_in_place(tiny_bert):
    """A model spread by device_map is not moved whole by a pipeline's device= (its hooks
    would then send inputs to devices its weights left), as transformers. The meta device
    stands in for a second GPU."""
    from cove.pipelines import TextClassificationPipeline

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    dispatch(model, {"bert": "meta", "classifier": "cpu"})
    pipe = TextClassificationPipeline(model, None, device="cpu")  # (no tokenizer needed here)
    assert model.bert.pooler.dense.weight.is_meta and model.classifier.weight.device.type == "cpu"
    assert pipe.device.type == "cpu"


def test_move_keeps_named_tuples():
    """A block may return a named tuple (torch.return_types, ...): it stays one, fields
    moved."""
    pair = torch.ones(3).max(0)  # torch.return_types.max(values, indices)
    out = move(pair, torch.device("meta"))
    assert type(out) is type(pair) and out.values.is_meta and out.indices.is_meta
    Named = namedtuple("Named", "hidden extra")
    out = move(Named(torch.ones(2), 3), torch.device("meta"))
    assert type(out) is Named and out.hidden.is_meta and out.extra == 3
