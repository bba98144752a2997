"""Llama-family decoding steps through cove.kernels' Decoder (cove.models.decoding) against
the module forward they replace: generate's per-step logits (float32: within 1e-5 of the
logits' magnitude; bfloat16: equal) and tokens on left-padded batches of 1 and 8 rows and
an unpadded bfloat16 batch, grouped-query attention, Qwen2's biases, Qwen3's q/k norms, SmolLM3's NoPE layers, scaled
rotary embeddings, the weight-only int8/int4 layers and beam search; the cases that keep the
module forward; and the kernels' refusal of bad input.
"""

from __future__ import annotations

import os

import pytest
import torch

import cove.models as cm
from cove import kernels
from cove.models import decoding
from cove.models.decoding import FastDecoder, StaticKVCache, fast_decoder
from cove.models.weight_only import Int4WeightOnlyConfig, Int8WeightOnlyConfig, TorchAoConfig

pytestmark = pytest.mark.skipif(os.environ.get("COVE_KERNELS") == "0",
                                reason="COVE_KERNELS=0 turns the kernels off")

BASE = {"vocab_size": 99, "hidden_size": 64, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
        "pad_token_id": 0}
CASES = {  # name -> (config class, values)
    "llama": (cm.LlamaConfig, BASE),
    "llama-mha-tied": (cm.LlamaConfig, {**BASE, "num_key_value_heads": 4,
                                        "tie_word_embeddings": True}),
    "llama3-rope": (cm.LlamaConfig, {**BASE, "rope_parameters": {
        "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 16}}),
    "yarn": (cm.LlamaConfig, {**BASE, "rope_parameters": {
        "rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
        "original_max_position_embeddings": 16}}),
    "partial-rotary-bias": (cm.LlamaConfig, {**BASE, "attention_bias": True, "mlp_bias": True,
                                             "rope_parameters": {"rope_type": "default",
                                                                 "partial_rotary_factor": 0.5}}),
    "qwen2": (cm.Qwen2Config, BASE),
    "qwen3": (cm.Qwen3Config, {**BASE, "head_dim": 32, "tie_word_embeddings": True}),
    "smollm3": (cm.SmolLM3Config, {**BASE, "no_rope_layer_interval": 2}),
    # widths that are not multiples of the kernels' 16 lanes or 8-row blocks: their tails
    "odd-widths": (cm.LlamaConfig, {**BASE, "hidden_size": 80, "intermediate_size": 41}),
}


def model_of(name: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    config_class, values = CASES[name]
    model = cm.AutoModelForCausalLM.from_config(config_class(**values))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.to(dtype).eval()


def prompts(rows: int, length: int = 9, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows left-padded by 0, 1, 2, ... tokens (a row of 8 keeps one real token)."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(rows, length, dtype=torch.long)
    for r in range(rows):
        mask[r, :min(r, length - 1)] = 0
    ids = torch.randint(3, 99, (rows, length), generator=gen).masked_fill(mask == 0, 0)
    return ids, mask


def both(model, monkeypatch, ids, mask, **kwargs):
    """generate's output through the kernel steps, then through the module forward."""
    args = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0,
                return_dict_in_generate=True, output_logits=True, **kwargs)
    fast = model.generate(ids, **args)
    assert isinstance(fast.past_key_values, StaticKVCache)  # the kernel steps ran
    with monkeypatch.context() as m:
        m.setattr(model, "fast_decoder", lambda *a: None)
        plain = model.generate(ids, **args)
    assert not isinstance(plain.past_key_values, StaticKVCache)
    return fast, plain


def assert_logits_close(fast, plain, rel: float) -> None:
    assert len(fast.logits) == len(plain.logits)
    for a, b in zip(fast.logits, plain.logits, strict=True):
        err = (a - b).abs().max().item()
        assert err <= rel * max(b.abs().max().item(), 1.0), err


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("rows", [1, 8])
def test_steps_match_the_module_forward(name, rows, monkeypatch):
    model = model_of(name)
    fast, plain = both(model, monkeypatch, *prompts(rows))
    assert_logits_close(fast, plain, 1e-5)
    assert torch.equal(fast.sequences, plain.sequences)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("rows", [1, 8])
def test_bfloat16_steps_equal_the_module_forward(name, rows, monkeypatch):
    """A bfloat16 model's kernel steps round where its module forward does: the same logits
    bit for bit (so the same greedy answers as transformers, which the module's are)."""
    model = model_of(name, torch.bfloat16)
    with torch.no_grad():
        assert isinstance(plan(model), FastDecoder)
    fast, plain = both(model, monkeypatch, *prompts(rows))
    assert fast.past_key_values.storage.dtype == torch.bfloat16
    assert_logits_close(fast, plain, 0.0)
    assert torch.equal(fast.sequences, plain.sequences)


def test_bfloat16_unpadded_rows_attend_alone_as_the_batch_does(monkeypatch):
    """Without a padding mask the kernels' bfloat16 step attends row by row (the serving
    engine's rows sit at lengths of their own); at one length that equals the module's
    batched attention bit for bit."""
    model = model_of("llama", torch.bfloat16)
    ids, _ = prompts(8)
    fast, plain = both(model, monkeypatch, ids.clamp(min=3), torch.ones_like(ids))
    assert_logits_close(fast, plain, 0.0)
    assert torch.equal(fast.sequences, plain.sequences)


@pytest.mark.parametrize("quant", [Int8WeightOnlyConfig(), Int4WeightOnlyConfig(group_size=32)],
                         ids=["int8", "int4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_weight_only_layers(quant, dtype, monkeypatch):
    from cove.models.weight_only import quantize_model

    model = model_of("llama", dtype)
    quantize_model(model, TorchAoConfig(quant))
    fast, plain = both(model, monkeypatch, *prompts(2))
    # the same kernels per layer; float32 between them, or bfloat16 rounded as the module does
    assert_logits_close(fast, plain, 1e-5 if dtype == torch.float32 else 0.0)
    assert torch.equal(fast.sequences, plain.sequences)


def test_beam_search_reorders_the_static_cache(monkeypatch):
    model = model_of("llama")
    fast, plain = both(model, monkeypatch, *prompts(2), num_beams=3, num_return_sequences=2,
                       output_scores=True)
    assert torch.equal(fast.sequences, plain.sequences)
    torch.testing.assert_close(fast.sequences_scores, plain.sequences_scores, rtol=1e-5,
                               atol=1e-5)


def test_sampling_and_a_returned_cache(monkeypatch):
    model = model_of("qwen3")
    ids, mask = prompts(2)
    seeded = [model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=True,
                             generator=torch.Generator().manual_seed(3), pad_token_id=0)
              for _ in range(2)]
    assert torch.equal(*seeded)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False,
                         pad_token_id=0, return_dict_in_generate=True)
    cache = out.past_key_values
    assert cache.length == ids.shape[1] + 4  # the last token is chosen, not fed
    keys = cache.keys[0][:, :, :cache.length]
    # the cache holds what a forward over the same tokens computes (positions from the mask)
    real = torch.cat([mask, torch.ones(2, 4, dtype=torch.long)], 1)
    with torch.no_grad():
        full = model.model(out.sequences[:, :-1], attention_mask=real, use_cache=True,
                           position_ids=(real.cumsum(-1) - 1).clamp(min=0))
    ref = full.past_key_values.keys[0][:, :, :cache.length]
    assert (keys - ref).abs().permute(0, 2, 1, 3)[real.bool()].max() < 1e-5


# -- when the module forward stays ------------------------------------------------------------
def plan(model, rows: int = 1, length: int = 12, **kwargs):
    positions = torch.arange(length)[None].expand(rows, -1)
    return fast_decoder(model, positions, {"logits_to_keep": 1, **kwargs})


def test_when_the_module_forward_stays():
    model = model_of("llama")
    with torch.no_grad():
        assert isinstance(plan(model), FastDecoder)
        assert plan(model, rows=9) is None  # more rows than the kernels take
        assert plan(model, output_attentions=True) is None
        assert plan(model, output_hidden_states=True) is None
        handle = model.model.layers[1].mlp.register_forward_hook(lambda *a: None)
        assert plan(model) is None  # a hook would not run
        handle.remove()
        proj = model.model.layers[0].self_attn.q_proj
        proj.forward = lambda x: torch.nn.functional.linear(x, proj.weight) * 2  # an adapter
        assert plan(model) is None
        del proj.forward
        assert isinstance(plan(model), FastDecoder)
        assert plan(model.half()) is None
    assert plan(model_of("llama")) is None  # gradients on


def test_sliding_window_and_dynamic_rope_limits():
    values = {**BASE, "sliding_window": 16}
    mistral = cm.AutoModelForCausalLM.from_config(cm.MistralConfig(**values)).eval()
    dynamic = cm.AutoModelForCausalLM.from_config(cm.LlamaConfig(**{**BASE, "rope_parameters": {
        "rope_type": "dynamic", "factor": 2.0}})).eval()
    with torch.no_grad():
        assert isinstance(plan(mistral, length=16), FastDecoder)  # the window never cuts
        assert plan(mistral, length=17) is None
        assert isinstance(plan(dynamic, length=64), FastDecoder)
        assert plan(dynamic, length=65) is None  # the frequencies would change


def test_serving_steps_take_llama_family_models(caplog):
    """The serving engine's steps (any number of rows, 8 a call; no gradients by design)."""
    import logging

    gpt2 = cm.AutoModelForCausalLM.from_config(cm.GPT2Config(
        vocab_size=99, n_embd=32, n_layer=1, n_head=2, n_positions=32)).eval()
    assert isinstance(decoding.slot_steps(model_of("llama"), 64), decoding.KernelSteps)
    with caplog.at_level(logging.DEBUG, logger="cove.models"):
        assert decoding.slot_steps(gpt2, 32) is None
    assert "GPT2LMHeadModel is not a Llama-family model" in caplog.text


def test_kernels_off_keeps_the_module_forward(monkeypatch):
    model = model_of("llama")
    monkeypatch.setattr(kernels, "_loaded", None)
    with torch.no_grad():
        assert plan(model) is None
    out = model.generate(*prompts(1)[:1], max_new_tokens=3, do_sample=False,
                         return_dict_in_generate=True)
    assert not isinstance(out.past_key_values, StaticKVCache)


# -- the kernel's checks ------------------------------------------------------------------------
def test_bad_input_is_refused():
    model = model_of("llama")
    with torch.no_grad():
        dec = plan(model, rows=2, length=4)
        steps, block = dec.steps, dec.cache.storage
        x = torch.randn(2, 64)
        two = torch.tensor([0, 1])
        zero = torch.tensor([0, 0])

        def step(x=x, block=block, slots=two, lengths=zero, positions=zero, mask=None):
            return steps.decoder.step(x, block, slots, lengths, positions, steps.cos,
                                      steps.sin, mask)

        step()
        with pytest.raises(RuntimeError, match="past the rotary table"):
            step(positions=torch.tensor([0, 4]))
        with pytest.raises(RuntimeError, match="the cache holds 4 positions; position 4"):
            step(lengths=torch.tensor([1, 4]))
        with pytest.raises(RuntimeError, match="slot 2 is not in the cache's 2"):
            step(slots=torch.tensor([0, 2]))
        with pytest.raises(RuntimeError, match="rows 0 and 1 both write slot 1"):
            step(slots=torch.tensor([1, 1]))
        with pytest.raises(RuntimeError, match=r"slots and lengths must be int64 \[2\]"):
            step(lengths=torch.tensor([0]))
        with pytest.raises(RuntimeError, match="the cache must be"):
            step(block=block[:, :, :, :1])
        with pytest.raises(RuntimeError, match=r"x must be \[1..8 rows, 64\]"):
            step(x=torch.randn(2, 63))
        with pytest.raises(RuntimeError, match=r"attention mask must be \[2, > 1\]"):
            step(lengths=torch.tensor([0, 1]), mask=torch.ones(2, 1))
        ext = kernels.load()
        with pytest.raises(RuntimeError, match="q_proj is 64 x 32, expected 64 x 64"):
            steps.decoder.add_layer(*[torch.ones(64)] * 2, None, None, True,
                                    ext.Linear(0, torch.randn(64, 32)),
                                    *[ext.Linear(0, torch.randn(64, 64))] * 6)
        with pytest.raises(RuntimeError, match="weight kind 0..3"):
            ext.Linear(7, torch.randn(4, 4))
