"""The OpenAI-compatible endpoints through the official `openai` SDK against a live `cove
serve`: chat (plain and streamed) and completions give exactly Cove's greedy `generate` on the
same prompt; embeddings equal the sentence-similarity pipeline's vectors; errors arrive as the
SDK's exceptions with Cove's message; a private model is hidden without a token that reads it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
import torch

import cove
from cove.models import AutoModelForCausalLM
from cove.server.serving import Engine, SamplingParams
from cove.tokenizers import AutoTokenizer
from tests.pipelines.test_text_generation import build_decoders
from tests.server.conftest import seeded_server
from tests.server.serving.conftest import greedy, push, tiny_sentence_model

MESSAGES = [{"role": "system", "content": "you are terse"},
            {"role": "user", "content": "the quick brown fox"}]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    from huggingface_hub import HfApi

    root = tmp_path_factory.mktemp("openai")
    folders = build_decoders(root, kinds=("llama",))
    folders["sentence"] = tiny_sentence_model(root / "sentence")
    live = seeded_server(root / "data")
    push(live, [("alice/tiny-llama", folders["llama"], False),
                ("alice/secret-llama", folders["llama"], True),
                ("alice/tiny-sentence", folders["sentence"], False)])
    api = HfApi(endpoint=live.url, token=live.accounts.alice_write)
    api.create_repo("alice/not-a-model")
    api.upload_file(path_or_fileobj=b"# hi\n", path_in_repo="README.md",
                    repo_id="alice/not-a-model")
    yield live, folders
    live.stop()


@pytest.fixture(scope="module")
def llama(hub):
    folder = hub[1]["llama"]
    return AutoModelForCausalLM.from_pretrained(str(folder)), AutoTokenizer.from_pretrained(
        str(folder))


def client(hub, token: str | None = None) -> openai.OpenAI:
    """The SDK on this Hub with a Cove token; anonymous (no Authorization header) without."""
    headers = None if token else {"Authorization": ""}
    return openai.OpenAI(base_url=hub[0].url + "/v1", api_key=token or "anonymous",
                         max_retries=0, default_headers=headers)


def test_chat_matches_greedy_generate(hub, llama):
    _, tok = llama
    ids = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True,
                                  return_dict=False)
    tokens, text = greedy(llama, ids, 12)
    c = client(hub)
    reply = c.chat.completions.create(model="alice/tiny-llama", messages=MESSAGES,
                                      temperature=0, max_tokens=12)
    assert reply.choices[0].message.content == text
    assert reply.choices[0].message.role == "assistant"
    assert reply.usage.prompt_tokens == len(ids)
    assert reply.usage.completion_tokens == len(tokens)
    assert reply.choices[0].finish_reason == ("length" if len(tokens) == 12 else "stop")
    # streamed: the deltas join to the same text, then the usage chunk
    stream = c.chat.completions.create(model="alice/tiny-llama", messages=MESSAGES,
                                       temperature=0, max_completion_tokens=12, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(tokens)
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == \
        reply.choices[0].finish_reason
    # n: several choices, each the greedy one
    many = c.chat.completions.create(model="alice/tiny-llama", messages=MESSAGES,
                                     temperature=0, max_tokens=12, n=3)
    assert [ch.message.content for ch in many.choices] == [text] * 3


def test_completions_match_greedy_generate(hub, llama):
    _, tok = llama
    prompt = "once upon a time"
    tokens, text = greedy(llama, tok.encode(prompt), 10)
    c = client(hub)
    reply = c.completions.create(model="alice/tiny-llama", prompt=prompt, temperature=0,
                                 max_tokens=10)
    assert reply.choices[0].text == text
    assert reply.usage.completion_tokens == len(tokens)
    streamed = c.completions.create(model="alice/tiny-llama", prompt=prompt, temperature=0,
                                    max_tokens=10, stream=True)
    assert "".join(ch.choices[0].text for ch in streamed) == text
    # a stop string ends the text before it
    if len(text) > 3:
        stop = text[2:4]
        cut = c.completions.create(model="alice/tiny-llama", prompt=prompt, temperature=0,
                                   max_tokens=10, stop=[stop])
        assert cut.choices[0].text == text[:text.find(stop)]
        assert cut.choices[0].finish_reason == "stop"


def test_logprobs_and_penalties(hub, llama):
    """logprobs are the model's log-softmax at each step (top ones in order), in the chat and
    completions shapes, streamed or not; penalties reach the engine."""
    model, tok = llama
    ids = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True,
                                  return_dict=False)
    tokens, text = greedy(llama, ids, 6)
    with torch.no_grad():
        full = model(torch.tensor([ids + tokens])).logits[0, len(ids) - 1:-1].log_softmax(-1)
    c = client(hub)
    reply = c.chat.completions.create(model="alice/tiny-llama", messages=MESSAGES,
                                      temperature=0, max_tokens=6, logprobs=True,
                                      top_logprobs=2)
    content = reply.choices[0].logprobs.content
    assert len(content) == len(tokens)
    for step, entry in enumerate(content):
        assert entry.token == tok.decode([tokens[step]])
        assert abs(entry.logprob - float(full[step, tokens[step]])) < 1e-4
        assert [t.token for t in entry.top_logprobs] == [
            tok.decode([t]) for t in full[step].topk(2).indices.tolist()]
    stream = c.chat.completions.create(model="alice/tiny-llama", messages=MESSAGES,
                                       temperature=0, max_tokens=6, logprobs=True, stream=True)
    streamed = [e.logprob for ch in stream if ch.choices and ch.choices[0].logprobs
                for e in ch.choices[0].logprobs.content]
    assert streamed == [e.logprob for e in content]
    completion = c.completions.create(model="alice/tiny-llama", prompt="once upon a time",
                                      temperature=0, max_tokens=5, logprobs=3)
    lp = completion.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert all(len(top) <= 3 for top in lp.top_logprobs) and lp.text_offset[0] == 0
    penalised = c.chat.completions.create(model="alice/tiny-llama", messages=MESSAGES,
                                          temperature=0, max_tokens=12, presence_penalty=2,
                                          frequency_penalty=2)
    expected = Engine(model, tok, max_batch_size=1).generate(ids, SamplingParams(
        temperature=0, max_tokens=12, presence_penalty=2, frequency_penalty=2))
    assert penalised.choices[0].message.content == expected.text


def test_embeddings_equal_the_pipeline(hub):
    sentences = ["The cat sits outside.", "A man is playing guitar.", "hello"]
    pipe = cove.pipeline("sentence-similarity", model=str(hub[1]["sentence"]))
    expected = torch.tensor(pipe(sentences))
    c = client(hub)
    got = c.embeddings.create(model="alice/tiny-sentence", input=sentences)  # base64
    assert [d.index for d in got.data] == [0, 1, 2]
    torch.testing.assert_close(torch.tensor([d.embedding for d in got.data]), expected)
    floats = c.embeddings.create(model="alice/tiny-sentence", input=sentences[2],
                                 encoding_format="float")
    torch.testing.assert_close(torch.tensor(floats.data[0].embedding), expected[2])
    assert floats.usage.prompt_tokens == len(pipe.tokenizer(sentences[2])["input_ids"])


def test_models_and_private_access(hub):
    live = hub[0]
    anonymous = client(hub)
    listed = {m.id for m in anonymous.models.list()}
    assert listed == {"alice/tiny-llama", "alice/tiny-sentence"}
    alice = client(hub, live.accounts.alice_read)
    assert {m.id for m in alice.models.list()} == listed | {"alice/secret-llama"}
    assert alice.models.retrieve("alice/secret-llama").owned_by == "alice"
    with pytest.raises(openai.NotFoundError, match="Repository not found: alice/secret-llama"):
        anonymous.chat.completions.create(model="alice/secret-llama", messages=MESSAGES)
    with pytest.raises(openai.NotFoundError, match="Repository not found"):
        client(hub, live.accounts.bob_write).completions.create(
            model="alice/secret-llama", prompt="hi", max_tokens=2)
    with pytest.raises(openai.AuthenticationError, match="Invalid credentials"):
        client(hub, "not-a-token").chat.completions.create(model="alice/tiny-llama",
                                                           messages=MESSAGES)
    reply = alice.chat.completions.create(model="alice/secret-llama", messages=MESSAGES,
                                          temperature=0, max_tokens=3)
    assert reply.usage.completion_tokens >= 1
    # raw HTTP: OpenAI's error object
    r = httpx.post(live.url + "/v1/chat/completions",
                   json={"model": "alice/secret-llama", "messages": MESSAGES})
    assert r.status_code == 404
    assert r.json()["error"]["param"] == "model"
    assert r.json()["error"]["code"] == "model_not_found"


def test_bad_requests_are_openai_errors(hub):
    c = client(hub)
    chat = c.chat.completions.create
    with pytest.raises(openai.BadRequestError, match="Invalid role 'wizard'"):
        chat(model="alice/tiny-llama", messages=[{"role": "wizard", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="n must lie between 1 and 8"):
        chat(model="alice/tiny-llama", messages=MESSAGES, n=50)
    with pytest.raises(openai.BadRequestError, match="exceed a slot's 128 positions"):
        chat(model="alice/tiny-llama", messages=[{"role": "user", "content": "a " * 200}])
    with pytest.raises(openai.BadRequestError, match="top_logprobs must lie in"):
        chat(model="alice/tiny-llama", messages=MESSAGES, logprobs=True, top_logprobs=50)
    with pytest.raises(openai.BadRequestError, match="presence_penalty must lie in"):
        chat(model="alice/tiny-llama", messages=MESSAGES, presence_penalty=3)
    with pytest.raises(openai.BadRequestError, match="tools are not supported"):
        chat(model="alice/tiny-llama", messages=MESSAGES,
             tools=[{"type": "function", "function": {"name": "f"}}])
    with pytest.raises(openai.BadRequestError, match="temperature must lie in"):
        chat(model="alice/tiny-llama", messages=MESSAGES, temperature=5)
    with pytest.raises(openai.BadRequestError, match="serves text-generation, not sentence-similarity"):
        c.embeddings.create(model="alice/tiny-llama", input="hi")
    with pytest.raises(openai.BadRequestError, match="serves sentence-similarity, not text-generation"):
        chat(model="alice/tiny-sentence", messages=MESSAGES)
    with pytest.raises(openai.NotFoundError, match="not-a-model"):
        c.models.retrieve("alice/not-a-model")
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        chat(model="no-slash", messages=MESSAGES)


def test_seeded_sampling_is_reproducible(hub):
    c = client(hub)
    kwargs = dict(model="alice/tiny-llama", prompt="the cat", max_tokens=8, temperature=1.0,
                  seed=7)
    assert c.completions.create(**kwargs).choices[0].text == \
        c.completions.create(**kwargs).choices[0].text


def test_disconnect_cancels_the_stream(hub):
    live = hub[0]
    body = {"model": "alice/tiny-llama", "prompt": "the", "max_tokens": 100,
            "temperature": 1.0, "stream": True}
    with httpx.stream("POST", live.url + "/v1/completions", json=body) as r:
        assert r.status_code == 200
        next(r.iter_lines())  # one event, then hang up
    # the server keeps serving (the slot was freed, not leaked): a greedy request still runs
    reply = client(hub).completions.create(model="alice/tiny-llama", prompt="the",
                                           temperature=0, max_tokens=4)
    assert reply.usage.completion_tokens >= 1


def test_app_stays_torch_free_and_serving_can_be_off(tmp_path):
    code = ("import sys\n"
            "from fastapi.testclient import TestClient\n"
            "from cove.server.app import create_app\n"
            "from cove.server.config import Settings\n"
            f"on = TestClient(create_app(Settings(data_dir={str(tmp_path / 'on')!r})))\n"
            "assert on.get('/v1/models').json() == {'object': 'list', 'data': []}\n"
            f"off = create_app(Settings(data_dir={str(tmp_path / 'off')!r}, serving=False))\n"
            "assert TestClient(off).get('/v1/models').status_code == 404\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[3])
