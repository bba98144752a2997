"""The continuous-batching engine on tiny random Llama (grouped-query attention, a pad token),
GPT-2 and SmolLM3 (a sliding window, cut at each row's own position): batched, staggered and chunked runs give exactly Cove's solo greedy `generate`;
seeded sampling does not depend on the batch; cancellation, stop strings and stop tokens,
the queue bound and the slot bound."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cove.models import AutoModelForCausalLM
from cove.server.serving import Engine, QueueFullError, SamplingParams
from cove.tokenizers import AutoTokenizer
from tests.pipelines.test_text_generation import build_decoders

PROMPTS = ["the quick brown fox", "hello", "once upon a time there was a tiny model that",
           "what is the capital of france? it is", "a b c d e f g h i j k l m n o p",
           "the cat sat", "one two three four five six seven"]
GREEDY = SamplingParams(temperature=0, max_tokens=12)


@pytest.fixture(scope="module")
def decoders(tmp_path_factory) -> dict[str, tuple]:
    folders = build_decoders(tmp_path_factory.mktemp("serving"),
                             kinds=("llama", "gpt2", "smollm3"))
    return {k: (AutoModelForCausalLM.from_pretrained(str(f)), AutoTokenizer.from_pretrained(str(f)))
            for k, f in folders.items()}


def solo(model, ids: list[int], n: int) -> list[int]:
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)
    return out[0, len(ids):].tolist()


def run_all(engine: Engine, requests) -> None:
    for _ in range(1000):
        if all(r.finished for r in requests):
            return
        engine.step()
    raise AssertionError("the requests did not finish")


@pytest.mark.parametrize("kind", ["llama", "gpt2", "smollm3"])  # smollm3: a 4-token window
def test_batched_and_staggered_match_solo_greedy(decoders, kind):
    model, tok = decoders[kind]
    ids = [tok.encode(p) for p in PROMPTS]
    expected = [solo(model, i, GREEDY.max_tokens) for i in ids]
    engine = Engine(model, tok, max_batch_size=4, max_cached_tokens=4 * 64)
    together = [engine.submit(i, GREEDY) for i in ids]  # 4 run, 3 wait for a slot
    run_all(engine, together)
    assert [r.output_ids for r in together] == expected
    assert {r.finish_reason for r in together} <= {"length", "stop"}
    # staggered: new requests join while the others decode, in other slots and orders
    staggered = []
    for i in reversed(range(len(ids))):
        staggered.append(engine.submit(ids[i], GREEDY))
        engine.step()
        engine.step()
    run_all(engine, staggered)
    assert [r.output_ids for r in reversed(staggered)] == expected
    text = tok.decode(expected[0], skip_special_tokens=True)
    assert together[0].text == text or together[0].finish_reason == "stop"


def test_chunked_prefill_matches(decoders):
    model, tok = decoders["llama"]
    long = tok.encode(" ".join(PROMPTS[:4]))
    expected = solo(model, long, 10)
    engine = Engine(model, tok, max_batch_size=3, max_cached_tokens=3 * 128, prefill_chunk=5)
    short = engine.submit(tok.encode(PROMPTS[1]), SamplingParams(temperature=0, max_tokens=30))
    engine.step()
    engine.step()
    r = engine.submit(long, SamplingParams(temperature=0, max_tokens=10))
    engine.step()
    # the short one keeps decoding while the long prompt prefills 5 tokens a step
    assert 0 < r._prefilled <= 5 and not r.output_ids and len(short.output_ids) == 4
    run_all(engine, [r, short])
    assert r.output_ids == expected
    assert short.output_ids == solo(model, tok.encode(PROMPTS[1]), 30)


def test_seeded_sampling_ignores_the_batch(decoders):
    model, tok = decoders["llama"]
    params = SamplingParams(temperature=0.9, top_p=0.95, top_k=50, max_tokens=15, seed=7)
    ids = tok.encode(PROMPTS[2])
    alone = Engine(model, tok, max_batch_size=4, max_cached_tokens=4 * 64).generate(ids, params)
    engine = Engine(model, tok, max_batch_size=4, max_cached_tokens=4 * 64)
    others = [engine.submit(PROMPTS[i], SamplingParams(temperature=1.0, max_tokens=20, seed=i))
              for i in (0, 3)]
    engine.step()
    busy = engine.submit(ids, params)
    run_all(engine, [*others, busy])
    assert busy.output_ids == alone.output_ids
    other_seed = Engine(model, tok, max_batch_size=1, max_cached_tokens=64).generate(
        ids, SamplingParams(temperature=0.9, top_p=0.95, top_k=50, max_tokens=15, seed=8))
    assert other_seed.output_ids != alone.output_ids


def test_cancel_frees_the_slot(decoders):
    model, tok = decoders["gpt2"]
    engine = Engine(model, tok, max_batch_size=1, max_cached_tokens=64)
    first = engine.submit(PROMPTS[0], SamplingParams(temperature=0, max_tokens=40))
    second = engine.submit(PROMPTS[1], GREEDY)
    engine.step()
    engine.step()
    assert first.slot == 0 and second.slot is None and engine.num_waiting == 1
    first.cancel()
    assert first.finish_reason == "cancelled" and len(list(first)) == 3
    engine.step()
    assert second.slot == 0 and second.output_ids
    run_all(engine, [second])
    assert second.output_ids == solo(model, tok.encode(PROMPTS[1]), GREEDY.max_tokens)
    # a cancelled waiting request never takes a slot
    a = engine.submit(PROMPTS[0], GREEDY)
    b = engine.submit(PROMPTS[1], GREEDY)
    engine.step()
    b.cancel()
    run_all(engine, [a])
    assert not b.output_ids and engine.num_waiting == 0 and engine.num_running == 0


def test_stop_strings_and_stop_tokens(decoders):
    model, tok = decoders["llama"]
    engine = Engine(model, tok, max_batch_size=2, max_cached_tokens=2 * 64)
    ids = tok.encode(PROMPTS[0])
    free = engine.generate(ids, SamplingParams(temperature=0, max_tokens=20))
    full = tok.decode(free.output_ids, skip_special_tokens=True)
    assert free.text == full and free.finish_reason in ("length", "stop")
    # a stop string from the middle of the text: the text ends before it
    stop = full[len(full) // 2:len(full) // 2 + 3]
    r = engine.submit(ids, SamplingParams(temperature=0, max_tokens=20, stop=["\x00", stop]))
    run_all(engine, [r])
    assert r.finish_reason == "stop" and r.text == full[:full.find(stop)]
    assert "".join(d.text for d in r) == r.text
    assert len(r.output_ids) < 20
    # a stop token id: kept in output_ids, not in the text
    k = 4
    r = engine.generate(ids, SamplingParams(temperature=0, max_tokens=20,
                                            stop_token_ids=[free.output_ids[k]]))
    first = free.output_ids.index(free.output_ids[k])
    assert r.output_ids == free.output_ids[:first + 1] and r.finish_reason == "stop"
    assert r.text == tok.decode(free.output_ids[:first], skip_special_tokens=True)
    # max_tokens
    r = engine.generate(ids, SamplingParams(temperature=0, max_tokens=3))
    assert r.finish_reason == "length" and r.output_ids == free.output_ids[:3]


def test_eos_ends_a_request(decoders):
    model, tok = decoders["gpt2"]
    ids = tok.encode(PROMPTS[3])
    free = solo(model, ids, 8)
    engine = Engine(model, tok, max_batch_size=1, max_cached_tokens=64)
    engine.eos_token_ids = {free[2]}  # as if the model's EOS
    r = engine.generate(ids, SamplingParams(temperature=0, max_tokens=8))
    assert r.output_ids == free[:free.index(free[2]) + 1] and r.finish_reason == "stop"


def test_queue_bound_and_slot_bound(decoders):
    model, tok = decoders["gpt2"]
    engine = Engine(model, tok, max_batch_size=1, max_cached_tokens=32, max_waiting=2)
    assert engine.slot_length == 32
    with pytest.raises(ValueError, match="exceed a slot's 32 positions"):
        engine.submit(list(range(30)), SamplingParams(max_tokens=3))
    with pytest.raises(ValueError, match="exceed"):
        engine.submit(list(range(32)), SamplingParams(max_tokens=None))
    r = engine.submit(list(range(30)), SamplingParams(max_tokens=None, temperature=0))
    assert r._max_tokens == 2
    engine.submit([1, 2], GREEDY)
    with pytest.raises(QueueFullError):
        engine.submit([1, 2], GREEDY)
    engine.step()  # one moves into the slot: room in the queue again
    engine.submit([1, 2], GREEDY)
    with pytest.raises(ValueError, match="empty"):
        engine.submit([], GREEDY)


def test_background_loop_and_async_stream(decoders):
    model, tok = decoders["llama"]
    engine = Engine(model, tok, max_batch_size=2, max_cached_tokens=2 * 64)
    expected = [solo(model, tok.encode(p), GREEDY.max_tokens) for p in PROMPTS[:3]]
    engine.start()
    try:
        threaded = [engine.submit(p, GREEDY) for p in PROMPTS[:3]]
        streamed = [[d.token_id for d in r] for r in threaded]
        assert streamed == expected

        async def consume():
            r = engine.submit(PROMPTS[0], GREEDY)
            return [d.token_id async for d in r]

        assert asyncio.run(consume()) == expected[0]
    finally:
        engine.stop()


def test_package_imports_no_torch():
    code = ("import sys, cove.server.app, cove.server.serving; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True,
                   cwd=Path(__file__).resolve().parents[3])


def test_penalties_and_logprobs(decoders):
    """repetition_penalty gives generate's tokens; presence/frequency penalties and logprobs
    follow their definitions on the model's own scores, whatever shares the batch."""
    model, tok = decoders["llama"]
    ids = [tok.encode(p) for p in PROMPTS[4:7]]  # prompts whose greedy tokens repeat
    engine = Engine(model, tok, max_batch_size=4, max_cached_tokens=4 * 64)
    rep = SamplingParams(temperature=0, max_tokens=10, repetition_penalty=1.7)
    pen = SamplingParams(temperature=0, max_tokens=10, presence_penalty=1.5,
                         frequency_penalty=0.75, logprobs=3)
    requests = [engine.submit(ids[0], rep), engine.submit(ids[1], pen),
                engine.submit(ids[2], GREEDY)]
    run_all(engine, requests)
    expected = model.generate(torch.tensor([ids[0]]), max_new_tokens=10, do_sample=False,
                              repetition_penalty=1.7)[0, len(ids[0]):].tolist()
    assert requests[0].output_ids == expected[:len(requests[0].output_ids)]
    assert requests[0].output_ids != solo(model, ids[0], 10)  # the penalty did something
    assert requests[2].output_ids == solo(model, ids[2], 12)[:len(requests[2].output_ids)]

    # presence/frequency by hand: full forwards, the penalty on each token seen so far
    r, seq, out = requests[1], list(ids[1]), []
    assert len(r.logprobs) == len(r.output_ids)
    for step, token in enumerate(r.output_ids):
        with torch.no_grad():
            logits = model(torch.tensor([seq])).logits[0, -1].float()
        logprobs = logits.log_softmax(-1)
        scores = logits.clone()
        for t in set(out):
            scores[t] -= 1.5 + 0.75 * out.count(t)
        assert token == int(scores.argmax()), step
        lp = r.logprobs[step]
        assert lp.token_id == token and abs(lp.logprob - float(logprobs[token])) < 1e-4
        assert [t for t, _ in lp.top] == logprobs.topk(3).indices.tolist()
        seq.append(token)
        out.append(token)
    with pytest.raises(ValueError, match="repetition_penalty"):
        SamplingParams(repetition_penalty=0)


def test_the_cache_keeps_to_its_byte_bound(decoders):
    model, tok = decoders["llama"]
    per_token = Engine(model, tok, max_batch_size=1, max_cached_tokens=2).cache.nbytes // 2
    engine = Engine(model, tok, max_batch_size=4, max_cache_bytes=per_token * 4 * 50)
    assert engine.slot_length == 50 and engine.cache.nbytes <= per_token * 4 * 50
    assert Engine(model, tok, max_batch_size=2).slot_length == min(
        4096, model.config.max_position_embeddings)  # the default 2 GiB: the context caps it
    with pytest.raises(ValueError, match="fewer than 2 positions"):
        Engine(model, tok, max_batch_size=4, max_cache_bytes=per_token * 4)
