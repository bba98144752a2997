"""JSON mode: the prefix automaton against Python's json module, and the engine holding a
tiny random model's output to a JSON object (the real model is in test_streams.py)."""

from __future__ import annotations

import json
import random

import pytest

from cove.models import AutoModelForCausalLM
from cove.server.serving import Engine, SamplingParams
from cove.server.serving.json_mode import JsonPrefix
from cove.tokenizers import AutoTokenizer
from tests.pipelines.test_text_generation import build_decoders


def accepts(text: str) -> JsonPrefix | None:
    state = JsonPrefix()
    return state if state.feed(text) else None


def random_value(rng: random.Random, depth: int = 0):
    kinds = ["int", "float", "str", "bool", "null"] + (["list", "dict"] * 2 if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.randint(-10**6, 10**6)
    if kind == "float":
        return rng.uniform(-1e6, 1e6) * 10 ** rng.randint(-30, 30)
    if kind == "str":
        return "".join(rng.choice('ab "\\\n\té€\u0001/') for _ in range(rng.randint(0, 8)))
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {"".join(rng.choice('k "\\é') for _ in range(rng.randint(0, 4))):
            random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def test_every_prefix_of_an_object_is_accepted_and_only_the_whole_is_complete():
    rng = random.Random(0)
    for _ in range(300):
        doc = json.dumps({"v": random_value(rng)}, indent=rng.choice([None, 2]),
                         ensure_ascii=rng.random() < 0.5)
        for end in range(len(doc)):
            state = accepts(doc[:end])
            assert state is not None and not state.complete, doc[:end]
        assert accepts(doc).complete, doc


def test_what_can_never_become_an_object_is_refused():
    for text in ['[1, 2]', '"a"', '1', ' x', '{a', '{"a" 1', '{"a": tru3', '{"a": 01',
                 '{"a": 1.}', '{"a": -}', '{"a": 1e}', '{"a": "\\x"}', '{"a": "\\u12g4"}',
                 '{"a": "\n"}', '{"a": 1,}', '{"a": [1,]}', '{"a": 1}}', '{"a": 1} x',
                 '{"a": [1}', '{"a": 1]', '{,', '{"a": 1}' + ' ', '{' + ' ' * 17]:
        assert accepts(text) is None, text
    # a mutation the automaton passes as a whole object, json.loads must parse
    rng = random.Random(1)
    for _ in range(3000):
        doc = list(json.dumps({"v": random_value(rng)}))
        doc[rng.randrange(len(doc))] = rng.choice('{}[]",:0123456789-.eE tfn\\')
        text = "".join(doc)
        state = accepts(text)
        if state is not None and state.complete:
            assert isinstance(json.loads(text), dict), text


@pytest.mark.parametrize("temperature", [0, 1.0])
def test_the_engine_holds_a_random_model_to_json(tmp_path, temperature):
    folder = build_decoders(tmp_path, kinds=("llama",))["llama"]
    model, tok = AutoModelForCausalLM.from_pretrained(str(folder)), AutoTokenizer.from_pretrained(
        str(folder))
    engine = Engine(model, tok, max_batch_size=4, max_cached_tokens=4 * 128)
    params = [SamplingParams(temperature=temperature, max_tokens=60, json_object=True, seed=s)
              for s in range(4)]
    requests = [engine.submit(tok.encode("the cat"), p) for p in params]
    for _ in range(500):
        if all(r.finished for r in requests):
            break
        engine.step()
    for r in requests:
        assert r.finish_reason in ("stop", "length"), r.error
        state = accepts(r.text)
        assert state is not None, r.text  # always the beginning of an object
        if r.finish_reason == "stop":
            assert state.complete and isinstance(json.loads(r.text), dict)
