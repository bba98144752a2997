"""The serving registry on a Hub's own storage: what a repository serves (the card's
pipeline_tag first, sentence-transformers, causal LMs, GGUF files and which one), the LRU under
a model count and a memory budget (busy models stay), loading in the background for callers
that will not wait, and local models under an alias."""

from __future__ import annotations

import time

import pytest

from cove.server import errors
from cove.server.config import Settings
from cove.server.hub import Hub
from cove.server.serving import SamplingParams
from cove.server.serving.registry import (
    ModelLoading,
    Registry,
    _facts,
    _gguf_rank,
    _weights_bytes,
)
from tests.pipelines.test_text_generation import build_decoders
from tests.server.conftest import seeded_server
from tests.server.serving.conftest import push, tiny_sentence_model


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    folders = build_decoders(root, kinds=("llama", "gpt2"))
    folders["sentence"] = tiny_sentence_model(root / "sentence")
    (folders["gpt2"] / "README.md").write_text("---\npipeline_tag: feature-extraction\n---\n")
    live = seeded_server(root / "data")
    push(live, [("alice/llama", folders["llama"], False),
                ("alice/gpt2-features", folders["gpt2"], False),
                ("alice/sentence", folders["sentence"], False)])
    live.folders = folders
    yield live
    live.stop()


def registry(live, **kwargs) -> Registry:
    return Registry(Hub(Settings(data_dir=live.data)), idle_seconds=3600, **kwargs)


def test_what_a_repository_serves(live):
    reg = registry(live)
    tasks = {name: reg.task_of(reg.resolve(name, None))
             for name in ("alice/llama", "alice/gpt2-features", "alice/sentence")}
    assert tasks == {"alice/llama": "text-generation",
                     "alice/gpt2-features": "feature-extraction",  # the card says so
                     "alice/sentence": "sentence-similarity"}
    with pytest.raises(ValueError, match="serves feature-extraction, not text-generation"):
        reg.get("alice/gpt2-features", None, ("text-generation",))
    with pytest.raises(errors.HubError, match="Repository not found"):
        reg.resolve("alice/nothing", None)
    # GGUF files: the most precise by default, a name part picks another
    names = {"m.Q4_K_M.gguf", "m.F16.gguf", "m.Q8_0.gguf", "README.md"}
    assert _facts(names, lambda n: None).gguf == "m.F16.gguf"
    assert _facts(names, lambda n: None, "q8_0").gguf == "m.Q8_0.gguf"
    assert _facts(names, lambda n: None).task == "text-generation"
    assert _facts({"config.json", "m.gguf"}, lambda n: b"{}").gguf is None  # an HF folder
    assert sorted(["b.q2_k.gguf", "a.bf16.gguf"], key=_gguf_rank)[0] == "a.bf16.gguf"
    reg.close()


def test_lru_by_count_and_by_memory(live):
    reg = registry(live, max_models=1)
    first = reg.get("alice/llama", None)
    assert first.engine is not None and reg.loaded() == [(first.key + ":", "text-generation")]
    reg.get("alice/sentence", None)
    assert [task for _, task in reg.loaded()] == ["sentence-similarity"]  # llama unloaded
    reg.close()

    llama_bytes = registry(live).get("alice/llama", None).nbytes  # weights and KV cache
    gpt2_weights = _weights_bytes(live.folders["gpt2"])
    reg = registry(live, max_models=5, memory_budget=llama_bytes + gpt2_weights - 1)
    reg.get("alice/llama", None)
    reg.get("alice/llama@main", None)  # the same commit: the same model, nothing evicted
    assert len(reg.loaded()) == 1
    reg.get("alice/gpt2-features", None)  # does not fit beside it: llama goes
    assert [task for _, task in reg.loaded()] == ["feature-extraction"]
    reg.close()
    with pytest.raises(errors.HubError, match="more than the serving memory budget"):
        registry(live, memory_budget=1000).get("alice/llama", None)


def test_a_busy_model_is_not_evicted(live):
    reg = registry(live, max_models=1)
    llama = reg.get("alice/llama", None)
    llama.engine.stop()  # hold the request in the queue: the model stays busy
    request = llama.engine.submit([5, 6, 7], SamplingParams(max_tokens=2))
    reg.get("alice/sentence", None)
    assert len(reg.loaded()) == 2  # over the count while llama is busy
    request.cancel()
    llama.engine.step()
    reg.get("alice/gpt2-features", None)
    assert [task for _, task in reg.loaded()] == ["feature-extraction"]
    reg.close()


def test_callers_that_will_not_wait_get_model_loading(live):
    reg = registry(live)
    with pytest.raises(ModelLoading, match="alice/llama is currently loading"):
        reg.get("alice/llama", None, wait=False)
    deadline = time.monotonic() + 60
    while True:
        try:
            served = reg.get("alice/llama", None, wait=False)
            break
        except ModelLoading:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert served.engine is not None
    reg.close()


def test_local_models_under_an_alias(live, tmp_path):
    reg = registry(live)
    reg.add_local("tiny", live.folders["llama"])
    assert [s.name for s in reg.served(None)][:1] == ["tiny"]
    assert reg.get("tiny", None).task == "text-generation"
    with pytest.raises(FileNotFoundError):
        reg.add_local("gone", tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match="holds no model"):
        reg.add_local("empty", tmp_path)
    reg.close()
