"""GenerationConfig (files both ways with transformers), logits processors and stop strings
against transformers' implementations."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cove.generation as cg
from cove.generation.stopping_criteria import StopStringCriteria
from tests.generation.conftest import make_tokenizer

transformers = pytest.importorskip("transformers")
GPT2_DATA = Path(__file__).resolve().parents[1] / ".data" / "gpt2"


# -- GenerationConfig -------------------------------------------------------------------------
def test_import_does_not_pull_in_transformers():
    code = ("import sys; from cove.generation import GenerationMixin, GenerationConfig; "
            "assert 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_config_fields_and_unknown_keys_round_trip(tmp_path):
    config = cg.GenerationConfig(max_new_tokens=12, do_sample=True, top_p=0.9,
                                 eos_token_id=[2, 7], stop_strings=["\n\n"], my_extra={"a": 1})
    config.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "generation_config.json").read_text())
    assert data["max_new_tokens"] == 12 and data["eos_token_id"] == [2, 7]
    assert data["my_extra"] == {"a": 1}
    assert "temperature" not in data  # only what differs from the defaults
    again = cg.GenerationConfig.from_pretrained(tmp_path)
    assert again == config and again.my_extra == {"a": 1}
    assert cg.GenerationConfig.from_pretrained(tmp_path, top_p=0.5).top_p == 0.5
    # transformers reads Cove's file, and Cove reads transformers'.
    theirs = transformers.GenerationConfig.from_pretrained(tmp_path)
    assert (theirs.max_new_tokens, theirs.top_p, theirs.eos_token_id) == (12, 0.9, [2, 7])
    theirs.num_beams = 3
    theirs.save_pretrained(tmp_path / "t")
    ours = cg.GenerationConfig.from_pretrained(tmp_path / "t")
    assert (ours.num_beams, ours.do_sample, ours.stop_strings) == (3, True, ["\n\n"])


def test_config_from_model_config_and_validation():
    from cove.models.configuration import PretrainedConfig

    model_config = PretrainedConfig(bos_token_id=1, eos_token_id=[2, 3], pad_token_id=0,
                                    hidden_size=8)
    config = cg.GenerationConfig.from_model_config(model_config)
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (1, [2, 3], 0)
    assert not hasattr(config, "hidden_size")
    assert config.max_length is None and config.do_sample is None
    with pytest.raises(ValueError, match="early_stopping"):
        cg.GenerationConfig(early_stopping="sometimes")
    with pytest.raises(ValueError, match="max_new_tokens"):
        cg.GenerationConfig(max_new_tokens=0)
    with pytest.raises(ValueError, match="num_return_sequences"):
        cg.GenerationConfig(num_beams=2, num_return_sequences=3)
    assert cg.GenerationConfig().update(top_k=3, foo=1) == {"foo": 1}


# -- logits processors ------------------------------------------------------------------------
def make_scores(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(4, 50, generator=gen) * 3
    scores[1, :10] = scores[1, 10]  # ties
    ids = torch.randint(0, 60, (4, 9), generator=gen)  # some ids beyond the vocabulary
    return ids, scores


PROCESSORS = [
    ("TemperatureLogitsWarper", (0.7,), {}),
    ("TopKLogitsWarper", (5,), {}),
    ("TopKLogitsWarper", (3,), {"min_tokens_to_keep": 6}),
    ("TopPLogitsWarper", (0.8,), {}),
    ("TopPLogitsWarper", (0.05,), {"min_tokens_to_keep": 3}),
    ("MinPLogitsWarper", (0.2,), {}),
    ("MinPLogitsWarper", (0.9,), {"min_tokens_to_keep": 2}),
    ("RepetitionPenaltyLogitsProcessor", (1.3,), {}),
    ("RepetitionPenaltyLogitsProcessor", (0.7,), {"prompt_ignore_length": 4}),
    ("RepetitionPenaltyLogitsProcessor", (1.5,),
     {"prompt_ignore_length": torch.tensor([0, 3, 9, 1])}),
    ("MinLengthLogitsProcessor", (12, [3, 4]), {}),
    ("MinLengthLogitsProcessor", (5, 3), {}),
    ("MinNewTokensLengthLogitsProcessor", (4, 8, [3, 4]), {}),
    ("MinNewTokensLengthLogitsProcessor", (4, 2, 3), {}),
    ("SuppressTokensLogitsProcessor", ([1, 5, 49],), {}),
    ("SuppressTokensAtBeginLogitsProcessor", ([1, 5], 9), {}),
    ("ForcedEOSTokenLogitsProcessor", (10, [2, 3]), {}),
    ("InfNanRemoveLogitsProcessor", (), {}),
    ("LogitNormalization", (), {}),
]


@pytest.mark.parametrize("name,args,kwargs", PROCESSORS,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(PROCESSORS)])
def test_processor_matches_transformers(name, args, kwargs):
    ids, scores = make_scores()
    if name == "InfNanRemoveLogitsProcessor":
        scores[0, 0], scores[2, 3], scores[3, 7] = float("nan"), float("inf"), -float("inf")
    ours = getattr(cg, name)(*args, **kwargs)
    theirs = getattr(transformers, name)(*args, **kwargs)
    ids = ids.clamp(max=49) if "Repetition" not in name else ids
    expected = theirs(ids, scores.clone())
    got = ours(ids, scores.clone())
    torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)


def test_processor_list_and_functional_forms():
    ids, scores = make_scores(1)
    chain = cg.LogitsProcessorList([cg.TemperatureLogitsWarper(0.5), cg.TopKLogitsWarper(4)])
    out = chain(ids, scores)
    kept = torch.isfinite(out).sum(-1).tolist()
    assert kept[0] == kept[2] == kept[3] == 4 and kept[1] >= 4  # row 1 has ties
    torch.testing.assert_close(cg.top_k_filter(cg.apply_temperature(scores, 0.5), 4), out)
    torch.testing.assert_close(cg.top_p_filter(scores, 0.8),
                               cg.TopPLogitsWarper(0.8)(ids, scores))
    torch.testing.assert_close(cg.min_p_filter(scores, 0.3),
                               cg.MinPLogitsWarper(0.3)(ids, scores))
    torch.testing.assert_close(cg.repetition_penalty(ids, scores, 1.2),
                               cg.RepetitionPenaltyLogitsProcessor(1.2)(ids, scores))
    with pytest.raises(ValueError):
        cg.TemperatureLogitsWarper(0.0)
    with pytest.raises(ValueError):
        cg.TopKLogitsWarper(0)


# -- stop strings against transformers' StopStringCriteria -------------------------------------
def check_stop_strings(ours_tok, theirs_tok, stops: list[str], rows: list[list[int]]) -> int:
    ours = StopStringCriteria(ours_tok, stops)
    theirs = transformers.StopStringCriteria(theirs_tok, stops)
    width = max(len(r) for r in rows)
    matched = 0
    for length in range(1, width + 1):
        batch = torch.tensor([r[:length] for r in rows if len(r) >= length])
        expected = theirs(batch, None).tolist()
        assert ours(batch, None).tolist() == expected, (stops, batch.tolist())
        matched += sum(expected)
    return matched


def test_stop_strings_match_transformers_on_the_tiny_byte_level_vocab():
    tok = make_tokenizer()
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer)
    texts = ["las topper at the stop", "s to pped on", "the st opera stopstop", "stst op"]
    rows = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    gen = torch.Generator().manual_seed(0)
    rows += torch.randint(0, len(tok) - 2, (6, 14), generator=gen).tolist()
    assert check_stop_strings(tok, hf_tok, ["stop", "top", "p o", "s"], rows) > 5
    assert check_stop_strings(tok, hf_tok, ["opera st"], rows) >= 0


@pytest.mark.skipif(not (GPT2_DATA / "vocab.json").is_file(), reason="tests/.data/gpt2 missing")
def test_stop_strings_match_transformers_on_gpt2():
    from cove.tokenizers import GPT2TokenizerFast

    ours_tok = GPT2TokenizerFast(vocab_file=str(GPT2_DATA / "vocab.json"),
                                 merges_file=str(GPT2_DATA / "merges.txt"))
    # (transformers 5 ignores vocab_file=: give it the same backend instead)
    theirs_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=ours_tok.backend_tokenizer)
    texts = ["The capital of France is Paris.\n\nQuestion: what", "Hello world!!! <|endoftext|>",
             "naïve café — 東京 stops here", "User: hi\nAssistant: hello\nUser:"]
    rows = [ours_tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    gen = torch.Generator().manual_seed(0)
    rows += torch.randint(0, 50257, (4, 12), generator=gen).tolist()
    stops = ["\n\n", "Paris", "!!", "京", "é", "User:", "s h"]
    assert check_stop_strings(ours_tok, theirs_tok, stops, rows) > 5
