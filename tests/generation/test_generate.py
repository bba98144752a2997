"""generate() on the fake causal LM: strategies, lengths, stops, batching, outputs, streaming."""

from __future__ import annotations

import threading

import pytest
import torch

from cove.generation import (
    GenerateBeamDecoderOnlyOutput,
    GenerateDecoderOnlyOutput,
    GenerationConfig,
    LogitsProcessor,
    StoppingCriteria,
    TextIteratorStreamer,
    TextStreamer,
)
from tests.generation.conftest import BigramLM, FakeCausalLM, make_model


def encode(tokenizer, texts):
    return tokenizer(texts, return_tensors="pt", padding=True, padding_side="left")


def manual_greedy(model, ids: torch.Tensor, steps: int) -> torch.Tensor:
    """The reference: run the whole sequence through the model each step, no cache."""
    for _ in range(steps):
        logits = model(input_ids=ids).logits[:, -1]
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids


# -- greedy and the cache ------------------------------------------------------------------
def test_greedy_matches_a_plain_loop(model, tokenizer):
    ids = encode(tokenizer, "the stop")["input_ids"]
    out = model.generate(ids, max_new_tokens=16)
    assert out.shape == (1, ids.shape[1] + 16)
    assert out.tolist() == manual_greedy(model, ids, 16).tolist()
    assert model.generate(ids, max_new_tokens=16, use_cache=False).tolist() == out.tolist()


def test_one_forward_per_token_with_one_preallocated_cache(model, tokenizer, monkeypatch):
    made = []
    original = FakeCausalLM.new_cache

    def spy(self, batch_size, max_length, dtype=None, device=None):
        cache = original(self, batch_size, max_length, dtype, device)
        made.append((batch_size, max_length))
        return cache

    monkeypatch.setattr(FakeCausalLM, "new_cache", spy)
    inputs = encode(tokenizer, ["the stop", "a"])
    model.forward_calls = 0
    out = model.generate(**inputs, max_new_tokens=10, eos_token_id=None,
                         return_dict_in_generate=True)
    assert made == [(2, inputs["input_ids"].shape[1] + 10)]
    assert model.forward_calls == 10  # the prompt, then 9 single tokens (the last is not fed)
    assert out.past_key_values.length == inputs["input_ids"].shape[1] + 9
    assert out.cache is out.past_key_values


def test_model_generation_config_defaults_and_call_overrides(model, tokenizer):
    ids = encode(tokenizer, "a")["input_ids"]
    with pytest.warns(UserWarning, match="max_length"):
        out = model.generate(ids)  # global default: 20 new tokens
    assert out.shape[1] == ids.shape[1] + 20
    assert model.generate(ids, generation_config=GenerationConfig(max_length=4)).shape[1] == 4
    model.generation_config.max_new_tokens = 5
    assert model.generate(ids).shape[1] == ids.shape[1] + 5
    assert model.generate(ids, max_new_tokens=3).shape[1] == ids.shape[1] + 3
    # A config passed to generate is completed by the model's: max_new_tokens still wins.
    assert model.generate(ids, generation_config=GenerationConfig(max_length=4)).shape[1] == \
        ids.shape[1] + 5
    assert model.generate(ids, max_length=6, max_new_tokens=None).shape[1] == 6
    with pytest.raises(ValueError, match="max_length"):
        model.generate(ids, max_length=1, max_new_tokens=None)


def test_input_aliases_and_bos_start(model, tokenizer):
    ids = encode(tokenizer, "the")["input_ids"]
    a = model.generate(ids, max_new_tokens=4)
    assert model.generate(inputs=ids, max_new_tokens=4).tolist() == a.tolist()
    assert model.generate(input_ids=ids, max_new_tokens=4).tolist() == a.tolist()
    out = model.generate(max_new_tokens=3, bos_token_id=5)
    assert out.shape == (1, 4) and out[0, 0] == 5
    with pytest.raises(ValueError, match="bos_token_id"):
        model.generate(max_new_tokens=3)


def test_inputs_embeds_returns_only_new_tokens(model, tokenizer):
    ids = encode(tokenizer, "the stop")["input_ids"]
    expected = model.generate(ids, max_new_tokens=6)[:, ids.shape[1]:]
    embeds = model.embed(ids)
    out = model.generate(inputs_embeds=embeds, max_new_tokens=6)
    assert out.tolist() == expected.tolist()


# -- batches with left padding ---------------------------------------------------------------
def test_left_padded_batch_gives_each_prompt_its_own_tokens(model, tokenizer):
    prompts = ["the stop at", "a", "on the last", "st"]
    inputs = encode(tokenizer, prompts)
    width = inputs["input_ids"].shape[1]
    batched = model.generate(**inputs, max_new_tokens=12)
    for row, prompt in zip(batched, prompts, strict=True):
        alone = model.generate(**encode(tokenizer, prompt), max_new_tokens=12)[0]
        n = alone.shape[0]
        assert row[width - (n - 12):].tolist() == alone.tolist()


def test_attention_mask_inferred_from_padding(model, tokenizer):
    inputs = encode(tokenizer, ["the stop at", "a"])
    with_mask = model.generate(**inputs, max_new_tokens=6)
    without = model.generate(inputs["input_ids"], max_new_tokens=6)
    assert without.tolist() == with_mask.tolist()


# -- sampling --------------------------------------------------------------------------------
def test_sampling_is_reproducible_with_a_seed_or_a_generator(model, tokenizer):
    inputs = encode(tokenizer, ["the stop", "a"])
    kwargs = dict(max_new_tokens=15, do_sample=True, top_k=0, temperature=1.5)
    torch.manual_seed(1)
    a = model.generate(**inputs, **kwargs)
    torch.manual_seed(1)
    b = model.generate(**inputs, **kwargs)
    assert a.tolist() == b.tolist()
    torch.manual_seed(2)
    c = model.generate(**inputs, **kwargs)
    assert c.tolist() != a.tolist()
    g1 = model.generate(**inputs, generator=torch.Generator().manual_seed(7), **kwargs)
    torch.manual_seed(123)
    g2 = model.generate(**inputs, generator=torch.Generator().manual_seed(7), **kwargs)
    assert g1.tolist() == g2.tolist()
    assert ((a >= 0) & (a < model.config.vocab_size)).all()


def test_sampling_respects_top_k_one_and_tiny_top_p(model, tokenizer):
    inputs = encode(tokenizer, ["the stop", "a"])
    greedy = model.generate(**inputs, max_new_tokens=10)
    for kwargs in ({"top_k": 1}, {"top_p": 1e-6, "top_k": 0}, {"min_p": 1.0, "top_k": 0},
                   {"temperature": 1e-4, "top_k": 0}):
        out = model.generate(**inputs, max_new_tokens=10, do_sample=True, **kwargs)
        assert out.tolist() == greedy.tolist(), kwargs


def test_num_return_sequences_with_sampling(model, tokenizer):
    inputs = encode(tokenizer, ["the stop", "a"])
    torch.manual_seed(0)
    out = model.generate(**inputs, max_new_tokens=8, do_sample=True, num_return_sequences=3,
                         top_k=0, temperature=2.0)
    assert out.shape[0] == 6
    prompt = inputs["input_ids"].repeat_interleave(3, dim=0)
    assert out[:, :prompt.shape[1]].tolist() == prompt.tolist()
    assert len({tuple(r) for r in out[:3].tolist()}) > 1
    with pytest.raises(ValueError, match="num_return_sequences"):
        model.generate(**inputs, max_new_tokens=4, num_return_sequences=2)  # greedy


# -- repetition penalty and lengths ------------------------------------------------------------
def test_repetition_penalty_changes_repeats(model, tokenizer):
    ids = encode(tokenizer, "a")["input_ids"]
    plain = model.generate(ids, max_new_tokens=30)[0, 1:].tolist()
    penalised = model.generate(ids, max_new_tokens=30, repetition_penalty=100.0)[0, 1:].tolist()
    assert len(set(plain)) < len(plain)  # the fake model does repeat itself
    assert len(set(penalised)) > len(set(plain))


def test_eos_list_stops_each_row_and_pads_it(model, tokenizer):
    inputs = encode(tokenizer, ["the stop", "a", "on"])
    width = inputs["input_ids"].shape[1]
    free = model.generate(**inputs, max_new_tokens=20)
    # Two tokens of the first row's continuation end it (whichever comes first).
    first, second = free[0, width + 3].item(), free[0, width + 6].item()
    out = model.generate(**inputs, max_new_tokens=20, eos_token_id=[second, first],
                         pad_token_id=tokenizer.pad_token_id)
    stop = next(i for i in range(width, free.shape[1]) if free[0, i] in (first, second))
    assert out[0, :stop + 1].tolist() == free[0, :stop + 1].tolist()
    assert (out[0, stop + 1:] == tokenizer.pad_token_id).all()
    for row in range(3):  # every row ends at its first eos, or runs to the end
        ends = [i for i in range(width, out.shape[1]) if out[row, i] in (first, second)]
        if ends:
            assert (out[row, ends[0] + 1:] == tokenizer.pad_token_id).all()
            assert out[row, :ends[0] + 1].tolist() == free[row, :ends[0] + 1].tolist()
    # When every row has ended, generation stops: the output is no longer than needed.
    assert out.shape[1] < free.shape[1] or not all(
        any(out[r, i] in (first, second) for i in range(width, out.shape[1])) for r in range(3))


def test_min_new_tokens_suppresses_eos(model, tokenizer):
    ids = encode(tokenizer, "the stop")["input_ids"]
    width = ids.shape[1]
    free = model.generate(ids, max_new_tokens=20)[0, width:].tolist()
    first = next(i for i, t in enumerate(free) if t != free[0])  # eos = a later token
    eos = free[first]
    early = model.generate(ids, max_new_tokens=20, eos_token_id=eos)
    assert early.shape[1] == width + first + 1
    later = model.generate(ids, max_new_tokens=20, eos_token_id=eos, min_new_tokens=first + 3)
    assert eos not in later[0, width:width + first + 2].tolist()
    assert later.shape[1] >= width + first + 3
    same = model.generate(ids, max_new_tokens=20, eos_token_id=eos,
                          min_length=width + first + 3)
    assert same.tolist() == later.tolist()


# -- stop strings ------------------------------------------------------------------------------
def first_stop(tokenizer, ids: list[int], start: int, stop: str) -> int:
    """The index of the first token after `start` at which the text contains `stop`."""
    for i in range(start, len(ids)):
        if stop in tokenizer.decode(ids[:i + 1]):
            return i
    raise AssertionError(f"{stop!r} never appears")


@pytest.mark.parametrize("offset,size", [(0, 3), (2, 4), (5, 2), (7, 5), (1, 1)])
def test_stop_strings_cut_exactly_after_the_completing_token(model, tokenizer, offset, size):
    ids = encode(tokenizer, "the stop")["input_ids"]
    width = ids.shape[1]
    free = model.generate(ids, max_new_tokens=24)[0].tolist()
    text = tokenizer.decode(free[width:])
    stop = text[offset:offset + size]
    end = first_stop(tokenizer, free, width, stop)
    out = model.generate(ids, max_new_tokens=24, stop_strings=stop, tokenizer=tokenizer)
    assert out[0].tolist() == free[:end + 1]
    assert stop in tokenizer.decode(out[0, width:])
    # A list, and a stop string that never appears, change nothing else.
    out = model.generate(ids, max_new_tokens=24, stop_strings=["zzzz", stop],
                         tokenizer=tokenizer)
    assert out[0].tolist() == free[:end + 1]


def test_stop_strings_in_a_batch_pad_the_finished_rows(model, tokenizer):
    inputs = encode(tokenizer, ["the stop", "a"])
    width = inputs["input_ids"].shape[1]
    free = model.generate(**inputs, max_new_tokens=20)
    stop = tokenizer.decode(free[0, width + 2:width + 4])
    out = model.generate(**inputs, max_new_tokens=20, stop_strings=[stop], tokenizer=tokenizer)
    end = first_stop(tokenizer, free[0].tolist(), width, stop)
    assert out[0, :end + 1].tolist() == free[0, :end + 1].tolist()
    assert (out[0, end + 1:] == tokenizer.pad_token_id).all()


def test_stop_strings_need_a_tokenizer(model, tokenizer):
    with pytest.raises(ValueError, match="tokenizer"):
        model.generate(encode(tokenizer, "a")["input_ids"], max_new_tokens=3,
                       stop_strings=["x"])


# -- outputs -----------------------------------------------------------------------------------
def test_dict_output_scores_logits_and_transition_scores(model, tokenizer):
    inputs = encode(tokenizer, ["the stop", "a"])
    out = model.generate(**inputs, max_new_tokens=6, do_sample=True, temperature=0.5, top_k=0,
                         return_dict_in_generate=True, output_scores=True, output_logits=True)
    assert isinstance(out, GenerateDecoderOnlyOutput)
    assert len(out.scores) == len(out.logits) == 6
    assert out.scores[0].shape == (2, model.config.vocab_size)
    torch.testing.assert_close(out.scores[0], out.logits[0] / 0.5)
    logprobs = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
    assert logprobs.shape == (2, 6)
    new = out.sequences[:, -6:]
    expected = torch.stack([s.log_softmax(-1).gather(1, new[:, i:i + 1])[:, 0]
                            for i, s in enumerate(out.scores)], dim=1)
    torch.testing.assert_close(logprobs, expected)
    assert (logprobs <= 0).all()
    plain = model.generate(**inputs, max_new_tokens=6, return_dict_in_generate=True)
    assert plain.scores is None and plain.logits is None
    assert "scores" not in plain


def test_custom_processor_and_criteria(model, tokenizer):
    class Ban(LogitsProcessor):
        def __init__(self, token):
            self.token = token

        def __call__(self, input_ids, scores):
            scores = scores.clone()
            scores[:, self.token] = -float("inf")
            return scores

    class AfterThree(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), input_ids.shape[1] >= width + 3)

    ids = encode(tokenizer, "the stop")["input_ids"]
    width = ids.shape[1]
    free = model.generate(ids, max_new_tokens=8)
    banned = free[0, width].item()
    out = model.generate(ids, max_new_tokens=8, logits_processor=[Ban(banned)],
                         stopping_criteria=[AfterThree()])
    assert out.shape[1] == width + 3
    assert out[0, width].item() != banned


def test_unsupported_and_unknown_arguments_are_refused(model, tokenizer):
    ids = encode(tokenizer, "a")["input_ids"]
    with pytest.raises(NotImplementedError, match="encoder_repetition_penalty"):
        model.generate(ids, max_new_tokens=3, encoder_repetition_penalty=1.5)
    with pytest.raises(ValueError, match="not used by the model"):
        model.generate(ids, max_new_tokens=3, temprature=0.5)


# -- beam search ------------------------------------------------------------------------------
def bigram(rows: dict[int, dict[int, float]], vocab: int = 6) -> BigramLM:
    table = torch.full((vocab, vocab), -30.0)
    for src, row in rows.items():
        for dst, p in row.items():
            table[src, dst] = torch.tensor(p).log()
    return BigramLM(table).eval()


def test_beam_search_finds_what_greedy_misses():
    # 0 = eos. From 1: greedy takes 2 (0.6), but 3 (0.4) leads to a near-certain eos.
    model = bigram({1: {2: 0.6, 3: 0.4}, 2: {4: 0.6, 5: 0.4}, 3: {0: 0.99, 4: 0.01},
                    4: {0: 1.0}, 5: {0: 1.0}})
    ids = torch.tensor([[1]])
    greedy = model.generate(ids, max_new_tokens=4, eos_token_id=0, pad_token_id=0)
    assert greedy.tolist() == [[1, 2, 4, 0]]
    # Without length penalty: the most likely whole sequences, best first.
    out = model.generate(ids, max_new_tokens=4, eos_token_id=0, pad_token_id=0, num_beams=2,
                         num_return_sequences=2, return_dict_in_generate=True,
                         output_scores=True, length_penalty=0.0)
    assert isinstance(out, GenerateBeamDecoderOnlyOutput)
    assert out.sequences.tolist() == [[1, 3, 0, 0], [1, 2, 4, 0]]
    expected = torch.tensor([0.4 * 0.99, 0.6 * 0.6]).log()
    torch.testing.assert_close(out.sequences_scores, expected)
    assert out.beam_indices.tolist() == [[0, 1, -1], [0, 0, 0]]
    scores = model.compute_transition_scores(out.sequences, out.scores, out.beam_indices)
    torch.testing.assert_close(scores.sum(1), out.sequences_scores)
    # Scores are divided by length ** length_penalty: a large one favours longer sequences.
    long = model.generate(ids, max_new_tokens=4, eos_token_id=0, pad_token_id=0, num_beams=2,
                          length_penalty=5.0)
    assert long.tolist() == [[1, 2, 4, 0]]


def test_beam_search_with_the_cache_matches_without(model, tokenizer):
    inputs = encode(tokenizer, ["the stop", "a"])
    kwargs = dict(max_new_tokens=10, num_beams=3, num_return_sequences=2,
                  eos_token_id=[tokenizer.eos_token_id, 263])
    cached = model.generate(**inputs, **kwargs)
    assert cached.tolist() == model.generate(**inputs, use_cache=False, **kwargs).tolist()
    assert cached.shape[0] == 4


def test_beam_search_refuses_streamers(model, tokenizer):
    with pytest.raises(ValueError, match="beam search"):
        model.generate(encode(tokenizer, "a")["input_ids"], max_new_tokens=3, num_beams=2,
                       streamer=TextStreamer(tokenizer))


# -- streaming ---------------------------------------------------------------------------------
def test_text_streamer_prints_the_decoded_text(model, tokenizer, capsys):
    ids = encode(tokenizer, "the stop")["input_ids"]
    out = model.generate(ids, max_new_tokens=30, streamer=TextStreamer(tokenizer))
    assert capsys.readouterr().out == tokenizer.decode(out[0]) + "\n"
    out = model.generate(ids, max_new_tokens=30,
                         streamer=TextStreamer(tokenizer, skip_prompt=True))
    assert capsys.readouterr().out == tokenizer.decode(out[0, ids.shape[1]:]) + "\n"


def test_text_iterator_streamer_yields_words_as_they_come(tokenizer):
    model = make_model(tokenizer, seed=3)
    ids = encode(tokenizer, "the stop")["input_ids"]
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=30,
                                    skip_special_tokens=True)
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault(
        "out", model.generate(ids, max_new_tokens=40, streamer=streamer)))
    thread.start()
    pieces = list(streamer)
    thread.join()
    text = tokenizer.decode(result["out"][0, ids.shape[1]:], skip_special_tokens=True)
    assert "".join(pieces) == text
    assert len([p for p in pieces if p]) > 1
    # Every piece but the last ends at a word boundary (or is plain letters and spaces).
    for piece in pieces[:-1]:
        assert piece == "" or piece.endswith(" ") or piece.replace(" ", "").isalpha()


def test_streamer_rules_for_unfinished_text(tokenizer):
    printed = []

    class Capture(TextStreamer):
        def on_finalized_text(self, text, stream_end=False):
            printed.append(text)

    streamer = Capture(tokenizer)
    ids = tokenizer("ab, cd. ef\ngh", add_special_tokens=False)["input_ids"]
    for i in ids:
        streamer.put(torch.tensor([i]))
    streamer.end()
    assert "".join(printed) == "ab, cd. ef\ngh"
    # Letters go out at once; "," waits until the space shows the word is finished.
    assert printed[:4] == ["a", "b", "", ", "]
    assert printed[-2:] == ["h", ""]  # end() has nothing left to flush


# -- generation_config.json with the model -----------------------------------------------------
def test_save_and_load_generation_config_with_the_model(model, tmp_path):
    model.generation_config = GenerationConfig(max_new_tokens=7, do_sample=True, top_p=0.9,
                                               eos_token_id=[1, 2], custom_key="kept")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "generation_config.json").is_file()
    loaded = FakeCausalLM.from_pretrained(tmp_path)
    config = loaded.generation_config
    assert (config.max_new_tokens, config.do_sample, config.top_p) == (7, True, 0.9)
    assert config.eos_token_id == [1, 2] and config.custom_key == "kept"
    (tmp_path / "generation_config.json").unlink()
    fallback = FakeCausalLM.from_pretrained(tmp_path).generation_config
    assert fallback.eos_token_id == model.config.eos_token_id
    assert fallback.max_new_tokens is None
