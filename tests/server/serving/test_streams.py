"""Many clients at once on a real model: SmolLM2-135M-Instruct, its packaged Q4_1 GGUF pushed
as a private repository (served dequantised to float32). 16 concurrent streaming chats all
complete, each with exactly its solo greedy tokens; a client that disconnects mid-stream frees
its slot (seen in /metrics); the private model is hidden from callers without a token."""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from pathlib import Path

import httpx
import openai
import pytest

from cove.models import AutoModelForCausalLM
from cove.tokenizers import AutoTokenizer
from tests.server.conftest import seeded_server
from tests.server.serving.conftest import greedy

GGUF = Path(__file__).resolve().parents[2] / ".data" / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
REPO = "alice/smollm2-gguf"
QUESTIONS = ["What is the capital of France?", "Name a primary colour.", "Say hello.",
             "What is 2 + 3?", "Give me a fruit.", "What colour is the sky?",
             "Name a planet.", "What do cats eat?", "Write a short greeting.",
             "What is water made of?", "Name a musical instrument.", "Count to three.",
             "What is the opposite of hot?", "Name an ocean.", "What is a dog?",
             "Tell me a colour of a banana."]
NEW = 12

pytestmark = pytest.mark.skipif(not GGUF.exists(), reason="make tests/.data/.fetched first")


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    from huggingface_hub import HfApi

    data = tmp_path_factory.mktemp("streams")
    live = seeded_server(data)
    api = HfApi(endpoint=live.url, token=live.accounts.alice_write)
    api.create_repo(REPO, private=True)
    api.upload_file(path_or_fileobj=str(GGUF), path_in_repo=GGUF.name, repo_id=REPO)
    yield live
    live.stop()
    shutil.rmtree(data, ignore_errors=True)  # the server's conversion of the GGUF: 517 MiB


@pytest.fixture(scope="module")
def smollm2():
    folder, name = str(GGUF.parent), GGUF.name
    return (AutoModelForCausalLM.from_pretrained(folder, gguf_file=name),
            AutoTokenizer.from_pretrained(folder, gguf_file=name))


def running(live) -> float:
    """Requests holding a slot now, from /metrics."""
    text = httpx.get(live.url + "/metrics").text
    values = [float(v) for v in re.findall(r"^cove_serving_requests_running\{[^}]*\} (\S+)$",
                                             text, re.M)]
    return sum(values)


def test_sixteen_streams_equal_their_solo_greedy_runs(hub, smollm2):
    model, tok = smollm2
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}],
                                       add_generation_prompt=True, tokenize=True,
                                       return_dict=False) for q in QUESTIONS]
    expected = [greedy(smollm2, ids, NEW) for ids in prompts]
    client = openai.AsyncOpenAI(base_url=hub.url + "/v1", api_key=hub.accounts.alice_read,
                                max_retries=0, timeout=600)

    async def one(question: str) -> tuple[str, list[str], str]:
        stream = await client.chat.completions.create(
            model=REPO, messages=[{"role": "user", "content": question}], temperature=0,
            max_tokens=NEW, stream=True, logprobs=True)
        text, tokens, reason = "", [], None
        async for chunk in stream:
            for choice in chunk.choices:
                text += choice.delta.content or ""
                tokens += [e.token for e in (choice.logprobs.content if choice.logprobs
                                             else [])]
                reason = choice.finish_reason or reason
        return text, tokens, reason

    async def all_at_once():
        return await asyncio.gather(*(one(q) for q in QUESTIONS))

    results = asyncio.run(all_at_once())
    for (text, tokens, reason), (ids, want) in zip(results, expected, strict=True):
        assert tokens == [tok.decode([t]) for t in ids]  # token by token
        assert text == want
        assert reason == ("length" if len(ids) == NEW else "stop")
    assert running(hub) == 0


def test_a_client_that_disconnects_frees_its_slot(hub):
    body = {"model": REPO, "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": 400, "stream": True}
    headers = {"Authorization": f"Bearer {hub.accounts.alice_read}"}
    with httpx.stream("POST", hub.url + "/v1/chat/completions", json=body, headers=headers,
                      timeout=60) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        seen = [next(lines) for _ in range(6)]  # a few chunks in: generating
        assert any('"content"' in line for line in seen)
        assert running(hub) == 1
    deadline = time.monotonic() + 30
    while running(hub) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running(hub) == 0
    assert re.search(r'cove_serving_requests_total\{finish_reason="cancelled",model="private-\w+"\}'
                     r" [1-9]", httpx.get(hub.url + "/metrics").text)
    assert "smollm2" not in httpx.get(hub.url + "/metrics").text  # a private repo's name


def test_the_private_model_needs_a_token(hub):
    message = [{"role": "user", "content": "hi"}]
    anonymous = openai.OpenAI(base_url=hub.url + "/v1", api_key="anonymous", max_retries=0,
                              default_headers={"Authorization": ""})
    with pytest.raises(openai.NotFoundError, match=f"Repository not found: {REPO}"):
        anonymous.chat.completions.create(model=REPO, messages=message)
    bad = openai.OpenAI(base_url=hub.url + "/v1", api_key="not-a-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.chat.completions.create(model=REPO, messages=message)
    assert httpx.post(hub.url + "/v1/chat/completions",
                      json={"model": REPO, "messages": message}).status_code == 404
    assert httpx.post(hub.url + "/v1/chat/completions", json={"model": REPO, "messages": message},
                      headers={"Authorization": "Bearer nope"}).status_code == 401


def test_json_mode_gives_an_object(hub):
    import json

    client = openai.OpenAI(base_url=hub.url + "/v1", api_key=hub.accounts.alice_read,
                           max_retries=0)
    ask = [{"role": "user", "content": "Give the capital of France as JSON with keys country "
                                       "and capital."}]
    reply = client.chat.completions.create(model=REPO, messages=ask, temperature=0,
                                           max_tokens=60,
                                           response_format={"type": "json_object"})
    assert reply.choices[0].finish_reason == "stop"
    answer = json.loads(reply.choices[0].message.content)
    assert answer["capital"] == "Paris" and set(answer) == {"country", "capital"}
    with pytest.raises(openai.BadRequestError, match="must contain the word 'json'"):
        client.chat.completions.create(model=REPO, messages=[{"role": "user", "content": "hi"}],
                                       response_format={"type": "json_object"})
    with pytest.raises(openai.BadRequestError, match="'json_schema' is not supported"):
        client.chat.completions.create(model=REPO, messages=ask, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {}}})
