"""The engine's decoding steps through cove.kernels' Decoder (cove.models.decoding.slot_steps):
each running request in its own slot at its own length, 8 rows per kernel call. A step's
logits and cache writes are the module forward's of each request alone in its slot (float32
within 1e-5 of the logits' magnitude, also against all rows at once; bfloat16 bit for bit),
in consecutive and scattered slots, at lengths that differ, past 8 rows; requests of different lengths that join and leave mid-flight, more
than 8 at once and in slots that finished requests left, give Cove's solo greedy `generate`;
the models and settings that keep the module forward."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from cove import kernels
from cove.models import AutoModelForCausalLM, decoding
from cove.server.serving import Engine, SamplingParams
from cove.tokenizers import AutoTokenizer
from tests.pipelines.test_text_generation import build_decoders

pytestmark = pytest.mark.skipif(os.environ.get("COVE_KERNELS") == "0",
                                reason="COVE_KERNELS=0 turns the kernels off")

WORDS = "the quick brown fox jumps over a lazy dog while one two three four five six".split()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return build_decoders(tmp_path_factory.mktemp("engine-kernels"), kinds=("llama", "smollm3"))


@pytest.fixture(scope="module")
def llama(folders):
    """The tiny random Llama (grouped-query attention) in float32 and in bfloat16."""
    tok = AutoTokenizer.from_pretrained(str(folders["llama"]))
    return {dtype: (AutoModelForCausalLM.from_pretrained(str(folders["llama"]), dtype=dtype),
                    tok) for dtype in (torch.float32, torch.bfloat16)}


def prompt(tok, i: int) -> list[int]:
    """Prompt i: 2 to 15 words, so the requests' lengths differ."""
    return tok.encode(" ".join(WORDS[i % 5:i % 5 + 2 + (7 * i) % 14]))


def solo(model, ids: list[int], n: int) -> list[int]:
    return model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)[
        0, len(ids):].tolist()


def counted(engine: Engine) -> tuple[list[int], list[int]]:
    """From now on: the rows of each of the engine's decoding steps, and of each kernel call."""
    decodes: list[int] = []
    calls: list[int] = []
    steps, decode = engine._steps, engine._decode

    def step(ids, *args):
        calls.append(len(ids))
        return steps(ids, *args)

    def record(requests):
        decodes.append(len(requests))
        decode(requests)

    engine._steps, engine._decode = step, record
    return decodes, calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
def test_joining_and_leaving_requests_match_solo_greedy(llama, dtype):
    """11 requests of different prompt and output lengths in 10 slots: they join while others
    decode (one waits for a slot and takes the one a finished request left), more than 8
    decode at once (two kernel calls a step)."""
    model, tok = llama[dtype]
    engine = Engine(model, tok, max_batch_size=10, max_cached_tokens=10 * 48)
    assert isinstance(engine._steps, decoding.KernelSteps)
    decodes, calls = counted(engine)
    ids = [prompt(tok, i) for i in range(11)]
    news = [4 + (5 * i) % 13 for i in range(11)]
    expected = [solo(model, i, n) for i, n in zip(ids, news, strict=True)]
    requests = []
    for i in range(11):
        requests.append(engine.submit(ids[i], SamplingParams(temperature=0, max_tokens=news[i])))
        if i % 3 == 2:
            engine.step()
    for _ in range(200):
        if all(r.finished for r in requests):
            break
        engine.step()
    assert [r.output_ids for r in requests] == expected
    assert len({r.slot for r in requests}) < len(requests)  # finished requests' slots reused
    assert max(decodes) == 10 and max(calls) == kernels.MAX_ROWS  # two calls a step
    assert sum(calls) == sum(decodes)  # every decoding row went through the kernels


def running_mid_flight(engine: Engine, tok, count: int) -> list:
    """`count` requests decoding at different lengths, every other slot's request one that
    joined later in the slot a cancelled one left."""
    first = [engine.submit(prompt(tok, i), SamplingParams(temperature=0, max_tokens=30))
             for i in range(count)]
    engine.step()
    engine.step()
    for r in first[1::2]:
        r.cancel()
    later = [engine.submit(prompt(tok, 20 + i), SamplingParams(temperature=0, max_tokens=30))
             for i in range(count // 2)]
    engine.step()
    engine.step()
    running = [r for r in engine._slots if r is not None]
    assert running[1::2] == later and all(r.output_ids for r in running)
    assert len({r._cached for r in running}) > 2
    return running


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("order", ["slots", "scattered"])
@pytest.mark.parametrize("count", [3, 12])
def test_a_step_is_the_module_forward(llama, dtype, order, count):
    """The kernel step's logits and the keys/values it writes against the module forward of
    each request alone in its slot (what its solo `generate` computes; bfloat16 bit for bit:
    SDPA's bfloat16 result depends on the longest row of its batch, so the kernels attend
    row by row) and, float32, of all the rows at once (within 1e-5)."""
    model, tok = llama[dtype]
    engine = Engine(model, tok, max_batch_size=12, max_cached_tokens=12 * 64)
    running = running_mid_flight(engine, tok, count)
    if order == "scattered":  # rows in no slot order
        running = running[1::2] + running[::2]
    before = engine.cache.storage.clone()
    with torch.inference_mode():
        fast = engine._step_logits(running)
        written = engine.cache.storage.clone()
        engine._steps = None
        engine.cache.storage.copy_(before)
        whole = engine._step_logits(running)
        engine.cache.storage.copy_(before)
        alone = torch.cat([engine._step_logits([r]) for r in running])
    assert fast.dtype == alone.dtype == dtype and fast.shape == alone.shape
    if dtype == torch.bfloat16:
        assert torch.equal(fast, alone)
        assert torch.equal(written, engine.cache.storage)
    else:
        for reference in (alone, whole):
            assert (fast - reference).abs().max() <= 1e-5 * reference.abs().max()
        torch.testing.assert_close(written, engine.cache.storage, rtol=1e-5, atol=1e-6)
    assert not torch.equal(written, before)  # the step wrote its keys and values


def test_what_keeps_the_module_forward(folders, llama, caplog, monkeypatch):
    model, tok = llama[torch.float32]
    windowed = AutoModelForCausalLM.from_pretrained(str(folders["smollm3"]))  # a 4-token window
    with caplog.at_level(logging.DEBUG, logger="cove.models"):
        assert Engine(windowed, tok, max_batch_size=2, max_cached_tokens=2 * 64)._steps is None
    assert "a sliding window that cuts" in caplog.text
    hook = model.model.layers[0].register_forward_hook(lambda *a: None)
    try:
        assert Engine(model, tok, max_batch_size=2, max_cached_tokens=2 * 64)._steps is None
    finally:
        hook.remove()
    monkeypatch.setattr(kernels, "_loaded", None)  # kernels off or not built
    engine = Engine(model, tok, max_batch_size=2, max_cached_tokens=2 * 64)
    assert engine._steps is None
    ids = prompt(tok, 3)
    assert engine.generate(ids, SamplingParams(temperature=0, max_tokens=5)).output_ids == \
        solo(model, ids, 5)
