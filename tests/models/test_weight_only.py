"""Weight-only int8 / int4 inference (cove.models.weight_only) and GGUF files kept quantised.

Tolerances, stated once:
- A layer's output against the float product with the same (dequantised) weight: within the
  bfloat16 activations' rounding, 2% of the output's largest magnitude.
- A layer's dequantised weight against the float weight it was quantised from: int8 within
  half a step (max|row| / 254) plus the bfloat16 scale's rounding; int4 within half a step
  of its group ((max - min) / 30) plus the same.
- A GGUF tensor kept quantised against the same tensor dequantised to float32 (Cove's float
  path): 0.8% of the row's largest magnitude (Q4_0/Q4_1/Q4_K map exactly onto int4 groups
  but for the bfloat16 scales; the other types are requantised to int8 rows).
- Greedy tokens of a tiny model, quantised against float32: >= 95% top-1 agreement per step
  over a fixed prompt set (the issue's criterion).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cove.models as cm
from cove.models import gguf as cg
from cove.models.weight_only import (
    Int4WeightOnlyConfig,
    Int4WeightOnlyLinear,
    Int8Embedding,
    Int8WeightOnlyConfig,
    Int8WeightOnlyLinear,
    TorchAoConfig,
    int4_group_size,
    quantize_int8_rows,
    quantize_model,
)
from tests.models.test_gguf import (
    QUANTISED,
    REPO,
    SMOLLM2,
    SMOLLM2_NAME,
    need_data,
    random_blocks,
    write_llama,
)

TINY = dict(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            tie_word_embeddings=False, initializer_range=0.05)


def weight(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 0.05


# -- the layers ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["int8", "int4-32", "int4-64", "int4-128"])
def test_layer_matches_float(kind):
    w, bias = weight(208, 256), torch.randn(208) * 0.1
    if kind == "int8":
        layer = Int8WeightOnlyLinear.from_weight(w, bias)
        step = w.abs().amax(dim=1, keepdim=True) / 127
    else:
        group = int(kind.split("-")[1])
        layer = Int4WeightOnlyLinear.from_weight(w, bias, group)
        grouped = w.view(208, -1, group)
        step = ((grouped.amax(2) - grouped.amin(2)) / 15).repeat_interleave(group, dim=1)
    dq = layer.dequantize()
    assert dq.shape == w.shape
    assert ((dq - w).abs() <= step / 2 + w.abs().amax() * 2**-8).all()
    x = torch.randn(3, 5, 256)
    out = layer(x)
    assert out.shape == (3, 5, 208) and out.dtype == torch.float32
    expected = F.linear(x, dq, bias)
    assert (out - expected).abs().max() <= 0.02 * expected.abs().max()
    with pytest.raises(AttributeError, match="keeps its weight quantised"):
        layer.weight  # noqa: B018
    layer.half()  # codes and scales keep their dtypes
    assert layer.qweight.dtype in (torch.int8, torch.uint8)


@pytest.mark.parametrize("kind", ["int8", "int4-32"])
def test_prompt_rows_are_the_dequantised_weights_product(kind):
    """A prompt's rows (more than decoding's 8) go through the float32 weight a slice of rows
    at a time: each output column is the float32 product with the dequantised weight, up to
    the GEMM's summation order (4160 outputs of 256 inputs: two slices). With AVX512-VNNI
    the layers take integer products on x quantised twice over in blocks of 32 (what one
    int8 pass misses, quantised again: each input off by at most ~2^-16 of its block's
    largest, here ~4e-5; times 256 weights of ~0.1, a 5e-4 bound; exact bounds in
    tests/models/test_prefill_kernels.py)."""
    from cove import kernels

    if not kernels.available():
        pytest.skip("cove.kernels is not built: prompts run through torch's kernels")
    tol = 5e-4 if kernels.load().has_int4_gemm() else 1e-5
    w, bias = weight(4160, 256, seed=1), torch.randn(4160) * 0.1
    layer = (Int8WeightOnlyLinear.from_weight(w, bias) if kind == "int8"
             else Int4WeightOnlyLinear.from_weight(w, bias, 32))
    x = torch.randn(2, 40, 256)
    out = layer(x)
    expected = F.linear(x, layer.dequantize(), bias)
    assert out.dtype == torch.float32 and out.shape == (2, 40, 4160)
    torch.testing.assert_close(out, expected, rtol=tol, atol=tol)
    # bfloat16 activations are computed in float32 too, then cast back
    out16 = layer(x.bfloat16())
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.float(), F.linear(x.bfloat16().float(), layer.dequantize(),
                                                       bias), rtol=8e-3, atol=8e-3)


def test_int4_group_fallback():
    assert int4_group_size(576, 128) == 64  # SmolLM2's width: 4.5 x 128
    assert int4_group_size(96, 128) == 32
    assert int4_group_size(100, 32) is None
    assert int4_group_size(128, 128, out_features=200) is None  # packing needs 16 | outputs


def test_int8_embedding_is_the_head_rows():
    w = weight(64, 32)
    head = Int8WeightOnlyLinear.from_weight(w)
    embed = Int8Embedding(head.qweight, head.scale.float())
    ids = torch.tensor([[3, 5, 63]])
    torch.testing.assert_close(embed(ids), head.dequantize()[ids], rtol=0, atol=1e-6)


# -- the configuration --------------------------------------------------------------------
def test_config_forms():
    config = TorchAoConfig(Int4WeightOnlyConfig(group_size=64))
    data = config.to_dict()
    assert data == {"quant_method": "torchao",
                    "quant_type": {"default": {"_type": "Int4WeightOnlyConfig", "_version": 2,
                                               "_data": {"group_size": 64}}},
                    "modules_to_not_convert": None, "include_input_output_embeddings": False,
                    "untie_embedding_weights": False}
    assert TorchAoConfig.from_dict(json.loads(json.dumps(data))) == config
    assert TorchAoConfig("int4_weight_only", group_size=64) == config  # transformers 4.x
    assert TorchAoConfig("int8_weight_only").quant_type == Int8WeightOnlyConfig()
    with pytest.raises(ValueError, match="group_size=100"):
        Int4WeightOnlyConfig(group_size=100)
    with pytest.raises(ValueError, match="Cove runs"):
        TorchAoConfig("int8_dynamic_activation_int8_weight")
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        TorchAoConfig(Int8WeightOnlyConfig(), compute_dtype="float32")


# -- a tiny model through from_pretrained -------------------------------------------------
PROMPTS = [[5, 17, 101, 9], [200, 3, 3, 48, 77, 12], [1, 2, 3], [250, 128, 64, 32, 16]]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny Llama with real margins between its top tokens: a random model's logits are
    near-ties (there int4's noise flips about half of them, int8's a few), where a trained
    model's are not. Its head maps each token's embedding to a fixed permutation's next
    token; the layers are random (initializer_range 0.05) and perturb the residual stream."""
    torch.manual_seed(0)
    model = cm.LlamaForCausalLM(cm.LlamaConfig(**TINY))
    with torch.no_grad():
        embeddings = model.model.embed_tokens.weight.normal_(0, 1)
        order = torch.randperm(TINY["vocab_size"], generator=torch.Generator().manual_seed(1))
        model.lm_head.weight.copy_(embeddings[torch.argsort(order)] * 0.1)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    return folder


def top1_agreement(model, reference, new: int = 12) -> float:
    """Per step, whether the model's top-1 token is the reference's, along the reference's
    greedy continuation of each prompt (teacher forcing: one flip does not count twice)."""
    same = total = 0
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = reference.generate(torch.tensor([prompt]), max_new_tokens=new,
                                     do_sample=False)
            ours = model(ids).logits[0, len(prompt) - 1:-1].argmax(-1)
            same += int((ours == ids[0, len(prompt):]).sum())
            total += new
    return same / total


@pytest.mark.parametrize("quant", [Int8WeightOnlyConfig(), Int4WeightOnlyConfig(group_size=32)],
                         ids=["int8", "int4"])
def test_tiny_model_greedy_agrees(tiny_folder, quant):
    reference = cm.AutoModelForCausalLM.from_pretrained(tiny_folder, dtype="float32")
    model = cm.AutoModelForCausalLM.from_pretrained(
        tiny_folder, dtype="float32", quantization_config=TorchAoConfig(quant))
    layer = Int8WeightOnlyLinear if quant.bits == 8 else Int4WeightOnlyLinear
    assert isinstance(model.model.layers[0].mlp.down_proj, layer)
    assert isinstance(model.lm_head, Int8WeightOnlyLinear)  # int8 also for int4 layers
    assert isinstance(model.model.embed_tokens, torch.nn.Embedding)  # lookups stay float
    assert model.is_quantized and model.quantization_config.quant_type == quant
    assert top1_agreement(model, reference) >= 0.95
    kept = cm.AutoModelForCausalLM.from_pretrained(
        tiny_folder, quantization_config=TorchAoConfig(quant, modules_to_not_convert=["lm_head"],
                                                       include_input_output_embeddings=True))
    assert type(kept.lm_head) is torch.nn.Linear
    assert isinstance(kept.model.embed_tokens, Int8Embedding)


def test_save_writes_float_weights(tiny_folder, tmp_path):
    """save_pretrained writes the dequantised weights (a float checkpoint, as for the
    bitsandbytes layers): reloaded in float, the logits are the quantised model's."""
    model = cm.AutoModelForCausalLM.from_pretrained(
        tiny_folder, quantization_config=TorchAoConfig(Int8WeightOnlyConfig()))
    model.save_pretrained(tmp_path)
    again = cm.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(again.lm_head) is torch.nn.Linear
    torch.testing.assert_close(again.lm_head.weight, model.lm_head.dequantize())
    ids = torch.tensor([PROMPTS[0]])
    with torch.no_grad():
        ours, reloaded = model(ids).logits, again(ids).logits
    assert (ours - reloaded).abs().max() <= 0.02 * reloaded.abs().max()


@pytest.fixture(scope="module")
def tied_folder(tmp_path_factory):
    """The tiny Llama with its head tied to the embedding (the head's rows are the
    embedding's, so the tiny model's margins hold)."""
    torch.manual_seed(0)
    model = cm.LlamaForCausalLM(cm.LlamaConfig(**{**TINY, "tie_word_embeddings": True}))
    with torch.no_grad():
        model.model.embed_tokens.weight.normal_(0, 1)
    folder = tmp_path_factory.mktemp("tiny-llama-tied")
    model.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("quant", [Int8WeightOnlyConfig(), Int4WeightOnlyConfig(group_size=32)],
                         ids=["int8", "int4"])
def test_tied_head_and_embedding_share_int8_rows(tied_folder, tmp_path, quant):
    """A head tied to the embedding stays tied when quantised: one int8 table serves the
    lookups and the product (as transformers keeps a tied embedding quantised); the model
    runs, and save_pretrained writes that table once, under the embedding's name, which
    reloads in float as the same model."""
    from cove.models.checkpoint import read_weights

    reference = cm.AutoModelForCausalLM.from_pretrained(tied_folder)
    model = cm.AutoModelForCausalLM.from_pretrained(
        tied_folder, quantization_config=TorchAoConfig(quant))
    head, embed = model.lm_head, model.model.embed_tokens
    assert isinstance(head, Int8WeightOnlyLinear) and isinstance(embed, Int8Embedding)
    assert embed.qweight is head.qweight and embed.dtype == torch.float32
    assert torch.equal(embed.scale, head.scale.float())
    # The rows are those the float embedding quantises to, a scale per row.
    q, scale = quantize_int8_rows(reference.model.embed_tokens.weight)
    assert torch.equal(embed.qweight, q)
    ids = torch.tensor([PROMPTS[1]])
    torch.testing.assert_close(embed(ids), embed.dequantize()[ids], rtol=0, atol=0)
    assert top1_agreement(model, reference) >= 0.95
    model.save_pretrained(tmp_path)
    assert set(read_weights([tmp_path / "model.safetensors"])) == set(
        reference.state_dict()) - {"lm_head.weight"}
    again = cm.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert again.lm_head.weight is again.model.embed_tokens.weight
    torch.testing.assert_close(again.lm_head.weight, head.dequantize())
    with torch.no_grad():
        ours, reloaded = model(ids).logits, again(ids).logits
    assert (ours - reloaded).abs().max() <= 0.02 * reloaded.abs().max()


def test_untied_embedding_weights_keep_float_lookups(tied_folder):
    """untie_embedding_weights=True: the head gets its own int8 copy, the embedding stays in
    float (or its own int8 rows with include_input_output_embeddings)."""
    reference = cm.AutoModelForCausalLM.from_pretrained(tied_folder)
    embeddings = reference.model.embed_tokens.weight
    model = cm.AutoModelForCausalLM.from_pretrained(
        tied_folder, quantization_config=TorchAoConfig(Int8WeightOnlyConfig(),
                                                       untie_embedding_weights=True))
    assert isinstance(model.lm_head, Int8WeightOnlyLinear)
    assert torch.equal(model.model.embed_tokens.weight, embeddings)  # float, untouched
    both = cm.AutoModelForCausalLM.from_pretrained(
        tied_folder, quantization_config=TorchAoConfig(
            Int8WeightOnlyConfig(), untie_embedding_weights=True,
            include_input_output_embeddings=True))
    assert isinstance(both.model.embed_tokens, Int8Embedding)
    assert both.model.embed_tokens.qweight is not both.lm_head.qweight
    assert torch.equal(both.model.embed_tokens.qweight, both.lm_head.qweight)
    # In memory, not through from_pretrained: the same sharing.
    fresh = cm.LlamaForCausalLM(cm.LlamaConfig(**{**TINY, "tie_word_embeddings": True}))
    quantize_model(fresh, TorchAoConfig(Int4WeightOnlyConfig(group_size=32)))
    assert fresh.model.embed_tokens.qweight is fresh.lm_head.qweight
    with torch.no_grad():
        fresh(torch.tensor([[1, 2, 3]]))


def test_bfloat16_load_quantises_from_the_checkpoint(tiny_folder):
    """dtype="bfloat16" with a weight-only config: the linears are quantised from the
    checkpoint's float32 weights (left uncast by the load), the rest is cast; the result is
    the float32 load's quantisation, the kept norms in bfloat16."""
    config = TorchAoConfig(Int4WeightOnlyConfig(group_size=32))
    ours = cm.AutoModelForCausalLM.from_pretrained(tiny_folder, dtype="bfloat16",
                                                   quantization_config=config)
    f32 = cm.AutoModelForCausalLM.from_pretrained(tiny_folder, dtype="float32",
                                                  quantization_config=config)
    assert ours.model.norm.weight.dtype == torch.bfloat16
    assert ours.model.embed_tokens.weight.dtype == torch.bfloat16  # untied: float lookups
    layer, expected = ours.model.layers[1].mlp.up_proj, f32.model.layers[1].mlp.up_proj
    assert torch.equal(layer.qweight, expected.qweight) and torch.equal(layer.zero,
                                                                        expected.zero)


# -- GGUF kept quantised ------------------------------------------------------------------
@pytest.mark.parametrize("qtype", [t for t in QUANTISED if t.name.startswith("Q4")],
                         ids=lambda t: t.name)
def test_q4_blocks_map_exactly_onto_int4_groups(qtype):
    rng = np.random.default_rng(int(qtype))
    raw = random_blocks(rng, qtype, 4, 256)
    block_bytes = raw.shape[1] // (256 // (256 if qtype.name == "Q4_K" else 32))
    codes, scale, zero = cg._int4_groups(qtype.name, raw.reshape(4, -1, block_bytes))
    assert codes.max() <= 15
    rebuilt = ((codes.astype(np.float32) - 8).reshape(4, -1, 32) * scale[..., None]
               + zero[..., None]).reshape(4, 256)
    expected = cg.dequantize(raw, int(qtype), (4, 256))
    np.testing.assert_allclose(rebuilt, expected, rtol=1e-5, atol=1e-6)


def test_synthetic_gguf_kept_quantised(tmp_path, monkeypatch):
    """A Llama with a tensor of every type: each layer kept quantised is the float path's
    weight within the stated tolerance, and the logits follow."""
    monkeypatch.setenv("COVE_GGUF_CACHE", str(tmp_path / "cache"))
    write_llama(tmp_path / "llama.gguf")
    floats = cm.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="llama.gguf")
    model = cm.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="llama.gguf",
                                                    dtype="auto")
    assert model.is_quantized and model.dtype == torch.bfloat16
    attn0, attn1 = model.model.layers[0].self_attn, model.model.layers[1].self_attn
    assert isinstance(attn0.q_proj, Int4WeightOnlyLinear)  # Q4_K
    assert isinstance(attn0.k_proj, Int8WeightOnlyLinear)  # Q5_K
    assert type(attn1.q_proj) is torch.nn.Linear  # F16 stays float
    assert isinstance(model.lm_head, Int8WeightOnlyLinear)  # Q6_K, not tied
    expected = dict(floats.named_parameters())
    for name, module in model.named_modules():
        if hasattr(module, "dequantize"):
            w = expected[f"{name}.weight"].detach()
            err = (module.dequantize() - w).abs().amax(dim=1)
            assert (err <= 0.008 * w.abs().amax(dim=1)).all(), name
    ids = torch.tensor([[1, 50, 300, 7000, 12]])
    with torch.no_grad():
        ours, theirs = model(ids).logits.float(), floats(ids).logits
    assert (ours - theirs).abs().max() <= 0.05 * theirs.abs().max()
    with pytest.raises(ValueError, match="keeps its own quantisation"):
        cm.AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="llama.gguf", dtype="auto",
                                                quantization_config=TorchAoConfig("int8_weight_only"))


_SMOLLM2_RUN = """
import json, sys, torch
from cove.models import AutoConfig, AutoModelForCausalLM
from cove.tokenizers import AutoTokenizer
folder, name = sys.argv[1], sys.argv[2]
config = AutoConfig.from_pretrained(folder, gguf_file=name)
tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                    add_generation_prompt=True, return_tensors="pt",
                                    return_dict=True)["input_ids"]
import cove.models.gguf, cove.models.weight_only, cove.models.llama  # imports: not the model
def status(key):
    line = next(l for l in open("/proc/self/status") if l.startswith(key + ":"))
    return int(line.split()[1]) * 1024
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the peak (VmHWM) to the current size: the tokenizer's build is past
before = status("VmRSS")
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype="auto")
with torch.inference_mode():
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
peak = status("VmHWM")
kv = 2 * config.num_hidden_layers * config.num_key_value_heads * 64 * out.shape[1] * 2
print(json.dumps({"answer": tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True),
                  "peak": peak - before, "kv": kv,
                  "head": type(model.lm_head).__name__,
                  "q_proj": type(model.model.layers[0].self_attn.q_proj).__name__}))
"""


def test_smollm2_gguf_kept_quantised(tmp_path):
    """The real SmolLM2 (Q4_1 layers, Q8_0 embeddings) with dtype="auto": still answers the
    France question, and peaks at most 1.3x its GGUF file plus the KV cache (in a fresh
    process, from after its imports)."""
    need_data()
    env = {**os.environ, "PYTHONPATH": str(REPO), "COVE_GGUF_CACHE": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", _SMOLLM2_RUN, str(SMOLLM2.parent),
                             SMOLLM2_NAME], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["answer"].startswith("The capital of France is Paris")
    assert (got["q_proj"], got["head"]) == ("Int4WeightOnlyLinear", "Int8WeightOnlyLinear")
    assert got["peak"] <= 1.3 * SMOLLM2.stat().st_size + got["kv"], got
