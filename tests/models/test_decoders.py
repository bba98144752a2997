"""Parity with transformers (the test oracle) for the decoder families, both ways.

Tiny random GPT-2, Llama (also with scaled rotary embeddings), Mistral (a sliding window that
cuts), Qwen2 (q/k/v biases, a sliding layer), Qwen3 (q/k norms, tied embeddings) and SmolLM3 (a
NoPE layer without rotary embeddings that is also the sliding one, tied embeddings): logits,
hidden states, attention weights and losses equal in float32 on a left-padded batch; decoding
token by token through the KV cache equals a full forward; Cove's checkpoints load in
transformers; sequence-classification heads; tied embeddings share storage.
"""

from __future__ import annotations

import json

import pytest
import torch

import cove.models as cm
from cove.models.cache import KVCache

transformers = pytest.importorskip("transformers")

ATOL = 1e-4
LLAMA_LIKE = {"vocab_size": 99, "hidden_size": 32, "intermediate_size": 37,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "max_position_embeddings": 64, "pad_token_id": 0}
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}
CASES: dict[str, tuple[str, dict]] = {  # name -> (model_type, config)
    "gpt2": ("gpt2", {"vocab_size": 99, "n_embd": 32, "n_layer": 2, "n_head": 4,
                      "n_positions": 64, "pad_token_id": 0}),
    "llama": ("llama", LLAMA_LIKE),
    "llama3-rope": ("llama", {**LLAMA_LIKE, "rope_parameters": LLAMA3_ROPE}),
    "mistral": ("mistral", {**LLAMA_LIKE, "sliding_window": 4}),
    "qwen2": ("qwen2", {**LLAMA_LIKE, "use_sliding_window": True, "sliding_window": 4,
                        "max_window_layers": 1}),
    "qwen3": ("qwen3", {**LLAMA_LIKE, "head_dim": 16, "tie_word_embeddings": True}),
    # layer 1 is NoPE (every 2nd layer) and, with use_sliding_window, the windowed one
    "smollm3": ("smollm3", {**LLAMA_LIKE, "no_rope_layer_interval": 2,
                            "use_sliding_window": True, "sliding_window": 4}),
}
ROPES = {  # rope_parameters variants, on Llama
    "linear": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0},
    "yarn": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
             "original_max_position_embeddings": 16},
}
PROMPT, STEPS = 12, 8


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (norms too); tied parameters come once and stay tied."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()


def hf_model(model_type: str, config: dict, auto: str = "AutoModelForCausalLM", **extra):
    cfg = transformers.AutoConfig.for_model(model_type, **config, **extra)
    # eager: transformers' SDPA path returns no attention weights
    return randomize(getattr(transformers, auto).from_config(cfg, attn_implementation="eager"))


def batch(length: int = PROMPT, seed: int = 1) -> dict[str, torch.Tensor]:
    """Three rows left-padded to 12, 7 and 3 real tokens, with mask-derived position ids."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(3, length, dtype=torch.long)
    mask[1, :5] = 0
    mask[2, :9] = 0
    ids = torch.randint(3, 99, (3, length), generator=gen).masked_fill(mask == 0, 0)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions(mask)}


def positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)


def real_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """Largest difference at the real (unpadded) query positions; none may be NaN."""
    assert a.shape == b.shape and a.dtype == b.dtype
    assert not a.isnan().any()
    if a.dim() == 4:  # attention weights [batch, heads, q, kv]: the real query rows
        a, b = a.transpose(1, 2), b.transpose(1, 2)
    return (a[mask.bool()] - b[mask.bool()]).abs().max().item()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> folder of a random transformers causal LM, saved by transformers."""
    out = {}
    for name, (model_type, config) in CASES.items():
        folder = tmp_path_factory.mktemp(name)
        hf_model(model_type, config).save_pretrained(folder)
        out[name] = folder
    return out


@pytest.mark.parametrize("name", list(CASES))
def test_transformers_checkpoint_same_outputs(name, saved):
    hf, info_hf = transformers.AutoModelForCausalLM.from_pretrained(
        saved[name], attn_implementation="eager", output_loading_info=True)
    ours, info = cm.AutoModelForCausalLM.from_pretrained(saved[name], output_loading_info=True)
    assert type(ours).__name__ == type(hf).__name__
    assert not info["missing_keys"] and not info["unexpected_keys"]
    inputs = batch()
    # A label counts where its previous position is real: padded positions' outputs are unused
    # (and transformers' own SDPA and eager paths disagree there).
    mask = inputs["attention_mask"]
    previous = torch.nn.functional.pad(mask, (1, 0))[:, :-1]
    labels = inputs["input_ids"].masked_fill((mask == 0) | (previous == 0), -100)
    kwargs = dict(inputs, labels=labels, output_hidden_states=True, output_attentions=True)
    with torch.no_grad():
        a, b = ours(**kwargs), hf(**kwargs)
    assert real_diff(a.logits, b.logits, mask) <= ATOL
    assert abs(a.loss.item() - b.loss.item()) <= ATOL
    assert len(a.hidden_states) == len(b.hidden_states) == len(a.attentions) + 1
    for x, y in zip(a.hidden_states, b.hidden_states, strict=True):
        assert real_diff(x, y, mask) <= ATOL
    for x, y in zip(a.attentions, b.attentions, strict=True):
        assert real_diff(x, y, mask) <= ATOL
    # SDPA (no weights asked for) agrees with the eager path
    with torch.no_grad():
        fast = ours(**inputs).logits
    assert real_diff(fast, a.logits, mask) <= ATOL


@pytest.mark.parametrize("name", list(CASES))
def test_incremental_decoding_matches_full_forward(name, saved):
    model = cm.AutoModelForCausalLM.from_pretrained(saved[name])
    inputs = batch(PROMPT + STEPS)
    ids, mask, pos = inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"]
    with torch.no_grad():
        full = model(**inputs).logits
        cache = model.new_cache(3, PROMPT + STEPS)
        out = model(ids[:, :PROMPT], attention_mask=mask[:, :PROMPT],
                    position_ids=pos[:, :PROMPT], past_key_values=cache, use_cache=True)
        assert out.past_key_values is cache and out.cache is cache
        worst = real_diff(out.logits, full[:, :PROMPT], mask[:, :PROMPT])
        for t in range(PROMPT, PROMPT + STEPS):
            out = model(ids[:, t:t + 1], attention_mask=mask[:, :t + 1],
                        position_ids=pos[:, t:t + 1], past_key_values=cache, use_cache=True,
                        logits_to_keep=1)
            assert out.logits.shape == (3, 1, 99)
            worst = max(worst, (out.logits[:, 0] - full[:, t]).abs().max().item())
        assert cache.length == PROMPT + STEPS
    assert worst <= ATOL


@pytest.mark.parametrize("name", ["gpt2", "mistral"])
def test_use_cache_allocates_exactly_and_continues(name, saved):
    """use_cache=True with no cache: one of the prompt's length; default position ids."""
    model = cm.AutoModelForCausalLM.from_pretrained(saved[name])
    ids = batch()["input_ids"][:1]
    with torch.no_grad():
        full = model(ids).logits
        out = model(ids[:, :-1], use_cache=True, logits_to_keep=1)
        assert isinstance(out.past_key_values, KVCache)
        assert out.past_key_values.max_length == PROMPT - 1
        assert out.logits.shape == (1, 1, 99)
        assert (out.logits[0, 0] - full[0, -2]).abs().max() <= ATOL
        with pytest.raises(ValueError, match="Allocate a larger cache"):
            model(ids[:, -1:], past_key_values=out.past_key_values)
        tuple_out = model(ids, return_dict=False)
        assert torch.equal(tuple_out[0], full)


@pytest.mark.parametrize("name", list(CASES))
def test_cove_checkpoint_loads_in_transformers(name, tmp_path):
    model_type, config = CASES[name]
    ours = randomize(cm.AutoModelForCausalLM.from_config(
        cm.AutoConfig.for_model(model_type, **config)), seed=3)
    ours.save_pretrained(tmp_path)
    saved_config = json.loads((tmp_path / "config.json").read_text())
    assert saved_config["architectures"] == [type(ours).__name__]
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert type(hf).__name__ == type(ours).__name__
    inputs = batch()
    with torch.no_grad():
        assert real_diff(ours(**inputs).logits, hf(**inputs).logits,
                         inputs["attention_mask"]) <= ATOL


@pytest.mark.parametrize("name", ["gpt2", "llama", "mistral", "qwen2", "qwen3", "smollm3"])
def test_sequence_classification_matches(name, tmp_path):
    model_type, config = CASES[name]
    hf = hf_model(model_type, config, "AutoModelForSequenceClassification", num_labels=3)
    hf.save_pretrained(tmp_path)
    ours, info = cm.AutoModelForSequenceClassification.from_pretrained(
        tmp_path, output_loading_info=True)
    assert type(ours).__name__ == type(hf).__name__
    assert not info["missing_keys"] and not info["unexpected_keys"]
    inputs = dict(batch(), labels=torch.tensor([0, 2, 1]))
    with torch.no_grad():
        a, b = ours(**inputs), hf(**inputs)
    assert a.logits.shape == (3, 3)
    assert (a.logits - b.logits).abs().max() <= ATOL
    assert abs(a.loss.item() - b.loss.item()) <= ATOL


@pytest.mark.parametrize("rope", list(ROPES))
def test_rope_scaling_variants(rope, tmp_path):
    # max_position_embeddings below the sequence, so "dynamic" stretches its base
    config = {**LLAMA_LIKE, "max_position_embeddings": 8, "rope_parameters": ROPES[rope]}
    hf_model("llama", config).save_pretrained(tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    ours = cm.AutoModelForCausalLM.from_pretrained(tmp_path)
    inputs = batch()
    with torch.no_grad():
        assert real_diff(ours(**inputs).logits, hf(**inputs).logits,
                         inputs["attention_mask"]) <= ATOL


def test_transformers_4_rope_spelling(saved, tmp_path):
    """rope_theta + rope_scaling (4.x configs) mean what rope_parameters means."""
    folder = tmp_path / "old"
    folder.mkdir()
    data = json.loads((saved["llama"] / "config.json").read_text())
    data.pop("rope_parameters")
    data.update(rope_theta=5000.0, rope_scaling={"type": "linear", "factor": 2.0})
    (folder / "config.json").write_text(json.dumps(data))
    (folder / "model.safetensors").write_bytes((saved["llama"] / "model.safetensors").read_bytes())
    ours = cm.AutoModelForCausalLM.from_pretrained(folder)
    params = ours.config.rope_parameters
    assert params["rope_type"] == "linear" and params["rope_theta"] == 5000.0
    assert "rope_scaling" not in ours.config.to_dict()
    hf = transformers.AutoModelForCausalLM.from_pretrained(folder)
    inputs = batch()
    with torch.no_grad():
        assert real_diff(ours(**inputs).logits, hf(**inputs).logits,
                         inputs["attention_mask"]) <= ATOL


def test_sliding_window_matters(saved):
    """The window of 4 must change the outputs of a 12-token sequence, or the test proves
    nothing."""
    model = cm.AutoModelForCausalLM.from_pretrained(saved["mistral"])
    unwindowed = cm.MistralForCausalLM(cm.MistralConfig(**{**LLAMA_LIKE,
                                                           "sliding_window": None}))
    unwindowed.load_state_dict(model.state_dict())
    ids = batch()["input_ids"][:1]
    with torch.no_grad():
        a, b = model(ids).logits, unwindowed.eval()(ids).logits
    assert (a[0, :4] - b[0, :4]).abs().max() <= ATOL
    assert (a[0, 4:] - b[0, 4:]).abs().max() > 1e-2


@pytest.mark.parametrize("name,tied", [("gpt2", True), ("qwen3", True), ("smollm3", True),
                                       ("llama", False)])
def test_tied_embeddings_share_storage(name, tied, saved, tmp_path):
    model = cm.AutoModelForCausalLM.from_pretrained(saved[name])
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert (embed.data_ptr() == head.data_ptr()) is tied
    model.save_pretrained(tmp_path)
    from safetensors import safe_open

    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        assert ("lm_head.weight" in f.keys()) is not tied
    fresh = cm.AutoModelForCausalLM.from_config(model.config)
    assert (fresh.get_input_embeddings().weight is fresh.get_output_embeddings().weight) is tied


def test_gpt2_base_checkpoint_with_legacy_buffers(tmp_path):
    """The original GPT-2 layout: no "transformer." prefix, causal-mask buffers per layer."""
    from safetensors.torch import load_file, save_file

    base = hf_model("gpt2", CASES["gpt2"][1], "AutoModel")
    base.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    assert "wte.weight" in state
    state["h.0.attn.bias"] = torch.ones(1, 1, 64, 64).tril()
    state["h.0.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    ours, info = cm.GPT2LMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids = batch()["input_ids"][:1]
    with torch.no_grad():
        hidden = base(ids).last_hidden_state
        assert (ours(ids).logits - hidden @ base.wte.weight.T).abs().max() <= ATOL


def test_configs_match_transformers_defaults():
    for model_type in ("gpt2", "llama", "mistral", "qwen2", "qwen3", "smollm3"):
        ours = cm.AutoConfig.for_model(model_type).to_dict()
        theirs = json.loads(transformers.AutoConfig.for_model(model_type).to_json_string(
            use_diff=False))
        for key, value in ours.items():
            if key in theirs and key not in ("transformers_version", "dtype"):
                assert theirs[key] == value, (model_type, key)
        missing = {k for k in theirs if k not in ours} - {
            "_name_or_path", "chunk_size_feed_forward", "is_encoder_decoder",
            "transformers_version", "output_attentions", "output_hidden_states", "return_dict"}
        assert not missing, (model_type, missing)


@pytest.mark.parametrize("values", [
    {},  # 36 layers: every 4th is NoPE, no window
    {"num_hidden_layers": 6, "no_rope_layer_interval": 3, "use_sliding_window": True,
     "sliding_window": 8},
    {"num_hidden_layers": 3, "use_sliding_window": True},  # no window size: no sliding layer
    {"num_hidden_layers": 3, "sliding_window": 8},  # a size but use_sliding_window off
    {"num_hidden_layers": 3, "no_rope_layers": [0, 1, 0, 1], "rope_theta": 5e6},
    # the shape of SmolLM3-3B's config.json (transformers 4.x spelling, a stray
    # max_window_layers that SmolLM3 ignores)
    {"num_hidden_layers": 8, "max_window_layers": 2, "rope_scaling": None, "rope_theta": 5e6,
     "use_sliding_window": False, "sliding_window": None, "pretraining_tp": 2},
    {"num_hidden_layers": 2, "layer_types": ["sliding_attention", "full_attention"],
     "sliding_window": 3, "rope_parameters": {"rope_type": "linear", "factor": 2.0}},
])
def test_smollm3_layer_plan_matches_transformers(values):
    """Which layers are NoPE, which slide, and the rotary base, as transformers derives them."""
    ours = cm.AutoConfig.for_model("smollm3", **values)
    theirs = transformers.AutoConfig.for_model("smollm3", **values)
    for key in ("no_rope_layers", "layer_types", "sliding_window", "rope_parameters"):
        assert getattr(ours, key) == getattr(theirs, key), key
    flags = [bool(f) for f in theirs.no_rope_layers[:theirs.num_hidden_layers]]
    assert ours.rotary_layers() == flags
    assert cm.AutoConfig.for_model("llama").rotary_layers() == [True] * 32


def test_smollm3_short_no_rope_layers_refused():
    with pytest.raises(ValueError, match="no_rope_layers has 2 entries but the model has 3"):
        cm.SmolLM3Config(num_hidden_layers=3, no_rope_layers=[1, 0])


def test_nope_layer_matters(saved):
    """Rotary embeddings on the NoPE layer too must change the outputs, or the parity tests
    prove nothing about it."""
    model = cm.AutoModelForCausalLM.from_pretrained(saved["smollm3"])
    assert model.config.rotary_layers() == [True, False]
    config = cm.SmolLM3Config(**{**CASES["smollm3"][1], "no_rope_layers": [1, 1]})
    all_rope = cm.SmolLM3ForCausalLM(config)
    all_rope.load_state_dict(model.state_dict())
    ids = batch()["input_ids"][:1]
    with torch.no_grad():
        assert (model(ids).logits - all_rope.eval()(ids).logits).abs().max() > 1e-2


def test_new_cache_shape():
    model = cm.Qwen3ForCausalLM(cm.Qwen3Config(**LLAMA_LIKE, head_dim=16))
    cache = model.new_cache(2, 10)
    assert len(cache.keys) == 2 and cache.keys[0].shape == (2, 2, 10, 16)
    gpt2 = cm.GPT2LMHeadModel(cm.GPT2Config(**CASES["gpt2"][1]))
    assert gpt2.new_cache(1, 5, dtype=torch.bfloat16).keys[1].shape == (1, 4, 5, 8)
