"""The decoding logic against transformers' generate, on the same network.

A tiny random transformers Llama is wrapped behind Cove's forward interface (no cache: the
whole sequence each step) and both `generate`s run without a cache, so both see bit-identical
logits and every difference comes from the decoding logic: greedy, sampling (same seed, same
draws), beam search and beam sampling, penalties, lengths, eos lists, stop strings, scores.
"""

from __future__ import annotations

import pytest
import torch

from cove.generation import GenerationMixin
from cove.models.modeling import PreTrainedModel
from cove.models.outputs import ModelOutput
from tests.generation.conftest import FakeConfig, make_tokenizer

transformers = pytest.importorskip("transformers")

VOCAB = 277  # the tiny tokenizer's size
EOS, PAD = 275, 276


class Wrapped(GenerationMixin, PreTrainedModel):
    config_class = FakeConfig

    def __init__(self, hf_model) -> None:
        super().__init__(FakeConfig(vocab_size=VOCAB, eos_token_id=EOS, pad_token_id=PAD))
        self.hf = hf_model

    def forward(self, input_ids=None, attention_mask=None, position_ids=None,
                past_key_values=None, use_cache=False, inputs_embeds=None, labels=None,
                output_hidden_states=None, output_attentions=None, return_dict=None,
                logits_to_keep: int = 0):
        assert past_key_values is None
        out = self.hf(input_ids=input_ids, attention_mask=attention_mask,
                      position_ids=position_ids, use_cache=False, logits_to_keep=logits_to_keep)
        return ModelOutput(logits=out.logits)


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=1, eos_token_id=EOS, pad_token_id=PAD)
    hf = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # sharper distributions than the default init gives
        hf.lm_head.weight.mul_(40)
    return hf, Wrapped(hf).eval()


@pytest.fixture(scope="module")
def batch():
    tok = make_tokenizer()
    return tok(["the stop at", "a", "on the last stopper"], return_tensors="pt", padding=True,
               padding_side="left")


def run_both(pair, inputs, **kwargs):
    hf, ours = pair
    seed = kwargs.pop("seed", 0)
    torch.manual_seed(seed)
    expected = hf.generate(**inputs, use_cache=False, **kwargs)
    torch.manual_seed(seed)
    got = ours.generate(**inputs, use_cache=False, **kwargs)
    return expected, got


CASES = {
    "greedy": dict(max_new_tokens=12),
    "greedy-eos-list": dict(max_new_tokens=12, eos_token_id=[EOS, 174, 145]),
    "greedy-min-new": dict(max_new_tokens=12, eos_token_id=[174, 145], min_new_tokens=6),
    "repetition": dict(max_new_tokens=12, repetition_penalty=1.3),
    "sample": dict(max_new_tokens=12, do_sample=True, top_k=0, seed=3),
    "sample-warpers": dict(max_new_tokens=12, do_sample=True, temperature=0.7, top_k=20,
                           top_p=0.8, seed=4),
    "sample-min-p": dict(max_new_tokens=12, do_sample=True, min_p=0.1, seed=5),
    "sample-n": dict(max_new_tokens=10, do_sample=True, num_return_sequences=3, seed=6,
                     eos_token_id=[174, 145]),
    "beam": dict(max_new_tokens=10, num_beams=3),
    "beam-eos": dict(max_new_tokens=10, num_beams=3, num_return_sequences=2,
                     eos_token_id=[174, 145, EOS]),
    "beam-lp-early": dict(max_new_tokens=10, num_beams=4, num_return_sequences=4,
                          length_penalty=-0.5, early_stopping=True, eos_token_id=[174, 145]),
    "beam-never": dict(max_new_tokens=10, num_beams=3, length_penalty=2.0,
                       early_stopping="never", eos_token_id=[174, 145]),
    "beam-sample": dict(max_new_tokens=10, num_beams=3, do_sample=True, seed=7,
                        eos_token_id=[174, 145]),
    "beam-repetition": dict(max_new_tokens=10, num_beams=2, repetition_penalty=1.5,
                            eos_token_id=[174]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_tokens(pair, batch, case):
    expected, got = run_both(pair, batch, **CASES[case])
    assert got.tolist() == expected.tolist()


@pytest.mark.parametrize("case", ["greedy", "sample-n", "beam-eos"])
def test_same_scores(pair, batch, case):
    kwargs = dict(CASES[case], return_dict_in_generate=True, output_scores=True,
                  output_logits=True)
    expected, got = run_both(pair, batch, **kwargs)
    assert got.sequences.tolist() == expected.sequences.tolist()
    assert len(got.scores) == len(expected.scores)
    for a, b in zip(got.scores, expected.scores, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for a, b in zip(got.logits, expected.logits, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    hf, ours = pair
    beam = expected.get("beam_indices")
    if beam is not None:
        assert got.beam_indices.tolist() == beam.tolist()
        torch.testing.assert_close(got.sequences_scores, expected.sequences_scores)
    for normalize in (False, True):
        want = hf.compute_transition_scores(expected.sequences, expected.scores, beam,
                                            normalize_logits=normalize)
        have = ours.compute_transition_scores(got.sequences, got.scores, got.get("beam_indices"),
                                              normalize_logits=normalize)
        torch.testing.assert_close(have, want)


def test_stop_strings_cut_like_transformers(pair):
    hf, ours = pair
    tok = make_tokenizer()
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer,
                                                  eos_token="<eos>", pad_token="<pad>")
    inputs = tok(["the stop at", "a"], return_tensors="pt", padding=True, padding_side="left")
    full = ours.generate(**inputs, max_new_tokens=16, use_cache=False)
    text = tok.decode(full[0, inputs["input_ids"].shape[1]:])
    checked = 0
    for start in range(0, len(text) - 3, 3):
        stop = text[start:start + 3]
        if not stop.strip():
            continue
        expected = hf.generate(**inputs, max_new_tokens=16, use_cache=False, stop_strings=[stop],
                               tokenizer=hf_tok)
        got = ours.generate(**inputs, max_new_tokens=16, use_cache=False, stop_strings=[stop],
                            tokenizer=tok)
        assert got.tolist() == expected.tolist(), stop
        checked += 1
    assert checked >= 3
