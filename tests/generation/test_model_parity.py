"""generate() on Cove's decoder models against transformers' generate on the same checkpoint.

Tiny random Llama, Mistral (sliding window), Qwen2 (q/k/v biases), Qwen3 (q/k norms), SmolLM3
(a NoPE layer with a sliding window) and GPT-2 checkpoints saved by transformers (weights scaled
up so next-token distributions are peaked: float32 noise between the two implementations cannot
flip a choice). Greedy decoding gives the same 32 tokens alone and in a left-padded batch, beam
search the same sequences and scores; sampling is reproducible and stays in the vocabulary.
"""

from __future__ import annotations

import pytest
import torch

import cove.models as cm
from cove.generation import GenerationMixin

transformers = pytest.importorskip("transformers")

VOCAB = 211
LLAMA = {"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
         "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
FAMILIES = {  # name -> (model_type, config)
    "llama": ("llama", LLAMA),
    # a sliding window shorter than the prompts: the cache is read through the window
    "mistral-window": ("mistral", {**LLAMA, "sliding_window": 4}),
    "qwen2": ("qwen2", LLAMA),  # q/k/v biases
    "qwen3": ("qwen3", {**LLAMA, "head_dim": 24}),  # q/k norms, head_dim != hidden / heads
    # layer 1 without rotary embeddings (NoPE) and windowed; untied like GPT-2 below
    "smollm3": ("smollm3", {**LLAMA, "no_rope_layer_interval": 2, "use_sliding_window": True,
                            "sliding_window": 4, "tie_word_embeddings": False}),
    "gpt2": ("gpt2", {"vocab_size": VOCAB, "n_embd": 64, "n_layer": 2, "n_head": 4,
                      "n_positions": 128, "bos_token_id": 1, "eos_token_id": 2,
                      "pad_token_id": 0,
                      "tie_word_embeddings": False}),  # tied, random GPT-2 only repeats
}
NEW = 32


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # norms near 1, biases small
                base = 1.0 if "weight" in name and "ln" in name or "norm" in name else 0.0
                p.copy_(base + torch.randn(p.shape, generator=gen) * 0.1)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * p.shape[-1] ** -0.5)
        head = model.get_output_embeddings().weight
        head.mul_(4.0)
    return model.eval()


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pair(request, tmp_path_factory):
    family = request.param
    model_type, values = FAMILIES[family]
    config = transformers.AutoConfig.for_model(model_type, **values)
    hf = randomize(transformers.AutoModelForCausalLM.from_config(config), seed=3)
    folder = tmp_path_factory.mktemp(family)
    hf.save_pretrained(folder)
    ours = cm.AutoModelForCausalLM.from_pretrained(folder)
    assert isinstance(ours, GenerationMixin)
    return hf, ours.eval()


def prompts() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    lengths = [9, 4, 1, 6]
    width = max(lengths)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, width - n:] = torch.randint(3, VOCAB, (n,), generator=gen)
        mask[row, width - n:] = 1
    return {"input_ids": ids, "attention_mask": mask}


def test_loaded_generation_config(pair):
    hf, ours = pair
    assert ours.generation_config.eos_token_id == hf.generation_config.eos_token_id
    assert ours.generation_config.pad_token_id == hf.generation_config.pad_token_id


def test_greedy_single_prompt(pair):
    hf, ours = pair
    ids = prompts()["input_ids"][:1]
    expected = hf.generate(ids, max_new_tokens=NEW, do_sample=False)
    got = ours.generate(ids, max_new_tokens=NEW, do_sample=False)
    assert got.tolist() == expected.tolist()
    assert got.shape[1] == ids.shape[1] + NEW or (got[0, -1] == 2)


def test_greedy_left_padded_batch(pair):
    hf, ours = pair
    inputs = prompts()
    expected = hf.generate(**inputs, max_new_tokens=NEW, do_sample=False)
    got = ours.generate(**inputs, max_new_tokens=NEW, do_sample=False)
    assert got.tolist() == expected.tolist()
    # And each row is what its prompt gives alone.
    width = inputs["input_ids"].shape[1]
    for row in range(inputs["input_ids"].shape[0]):
        n = int(inputs["attention_mask"][row].sum())
        alone = ours.generate(inputs["input_ids"][row:row + 1, width - n:],
                              max_new_tokens=NEW, do_sample=False)
        assert got[row, width - n:width - n + alone.shape[1]].tolist() == alone[0].tolist()


def test_greedy_scores_match(pair):
    hf, ours = pair
    inputs = prompts()
    kwargs = dict(max_new_tokens=8, do_sample=False, return_dict_in_generate=True,
                  output_scores=True, output_logits=True)
    expected = hf.generate(**inputs, **kwargs)
    got = ours.generate(**inputs, **kwargs)
    assert got.sequences.tolist() == expected.sequences.tolist()
    for a, b in zip(got.logits, expected.logits, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_beam_search(pair):
    hf, ours = pair
    inputs = prompts()
    # End-of-sequence tokens the model does write, so that some hypotheses end early.
    greedy = hf.generate(**inputs, max_new_tokens=6, do_sample=False)
    width = inputs["input_ids"].shape[1]
    eos = sorted({greedy[0, width + 3].item(), greedy[1, width + 2].item(), 2})
    kwargs = dict(max_new_tokens=12, num_beams=3, num_return_sequences=2, do_sample=False,
                  eos_token_id=eos, return_dict_in_generate=True, output_scores=True)
    expected = hf.generate(**inputs, **kwargs)
    got = ours.generate(**inputs, **kwargs)
    assert got.sequences.tolist() == expected.sequences.tolist()
    assert (got.beam_indices == -1).any()  # some hypotheses ended early
    torch.testing.assert_close(got.sequences_scores, expected.sequences_scores,
                               atol=1e-4, rtol=1e-4)
    assert got.beam_indices.tolist() == expected.beam_indices.tolist()
    plain = ours.generate(prompts()["input_ids"][:1], max_new_tokens=NEW, num_beams=3,
                          do_sample=False)
    assert plain.tolist() == hf.generate(prompts()["input_ids"][:1], max_new_tokens=NEW,
                                         num_beams=3, do_sample=False).tolist()


def test_sampling_is_reproducible_and_valid(pair):
    hf, ours = pair
    inputs = prompts()
    kwargs = dict(max_new_tokens=NEW, do_sample=True, temperature=0.8, top_k=40, top_p=0.95,
                  num_return_sequences=2)
    torch.manual_seed(11)
    a = ours.generate(**inputs, **kwargs)
    torch.manual_seed(11)
    b = ours.generate(**inputs, **kwargs)
    assert a.tolist() == b.tolist()
    assert a.shape[0] == 8 and ((a >= 0) & (a < VOCAB)).all()
    c = ours.generate(**inputs, generator=torch.Generator().manual_seed(5), **kwargs)
    d = ours.generate(**inputs, generator=torch.Generator().manual_seed(5), **kwargs)
    assert c.tolist() == d.tolist()


def test_saved_model_keeps_its_generation_config(pair, tmp_path):
    hf, ours = pair
    ours.generation_config.max_new_tokens = 5
    try:
        ours.save_pretrained(tmp_path)
        theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
        assert theirs.generation_config.max_new_tokens == 5
        again = cm.AutoModelForCausalLM.from_pretrained(tmp_path)
        assert again.generation_config.max_new_tokens == 5
        ids = prompts()["input_ids"][:1]
        assert again.generate(ids).tolist() == theirs.generate(ids).tolist()
        assert again.generate(ids).shape[1] == ids.shape[1] + 5
    finally:
        ours.generation_config.max_new_tokens = None
