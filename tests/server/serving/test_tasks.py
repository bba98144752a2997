"""The Hugging Face task API through the real `huggingface_hub.InferenceClient` against a live
`cove serve`: each task's answer equals the Cove pipeline's on the same inputs and parameters;
text generation (TGI's API, plain and streamed, with details) equals Cove's greedy `generate`;
chat goes through `InferenceClient(base_url=HUB)`; errors arrive as the client's exceptions
with Cove's message; a private model is hidden without a token that reads it."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from unittest import mock

import httpx
import numpy as np
import pytest
import torch
import transformers
from huggingface_hub import InferenceClient
from huggingface_hub.errors import (
    BadRequestError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    ValidationError,
)

import cove
from cove.models import AutoModelForCausalLM
from cove.tokenizers import AutoTokenizer
from tests.pipelines.conftest import (
    NER_LABELS,
    QA_CONTEXT,
    TINY,
    VOCAB,
    randomize,
    write_tokenizer,
)
from tests.pipelines.test_text_generation import build_decoders
from tests.server.conftest import seeded_server
from tests.server.serving.conftest import greedy, push, tiny_sentence_model

LABELS = {0: "negative", 1: "neutral", 2: "positive"}
NLI = {0: "contradiction", 1: "neutral", 2: "entailment"}
MESSAGES = [{"role": "system", "content": "you are terse"},
            {"role": "user", "content": "the quick brown fox"}]
PROMPT = "once upon a time"


def bert(folder: Path, head, seed: int, pipeline_tag: str | None = None,
         labels: dict[int, str] | None = None) -> Path:
    """A tiny random BERT with a head, the pipelines tests' vocabulary, maybe a card."""
    extra = {"id2label": labels, "label2id": {v: k for k, v in labels.items()}} if labels \
        else {}
    config = transformers.BertConfig(vocab_size=len(dict.fromkeys(VOCAB)), **TINY, **extra)
    randomize(head(config), seed).save_pretrained(folder)
    write_tokenizer(folder)
    if pipeline_tag:
        (folder / "README.md").write_text(f"---\npipeline_tag: {pipeline_tag}\n---\n")
    return folder


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    folders = build_decoders(root, kinds=("llama",))
    folders["sentence"] = tiny_sentence_model(root / "sentence")
    for name, head, tag, labels in (
            ("classifier", transformers.BertForSequenceClassification, None, LABELS),
            ("ner", transformers.BertForTokenClassification, None, NER_LABELS),
            ("mlm", transformers.BertForMaskedLM, None, None),
            ("qa", transformers.BertForQuestionAnswering, None, None),
            ("nli", transformers.BertForSequenceClassification, "zero-shot-classification",
             NLI),
            ("base", transformers.BertModel, "feature-extraction", None)):
        folders[name] = bert(root / name, head, len(folders), tag, labels)
    with mock.patch.dict(os.environ, {"COVE_SERVING_MAX_MODELS": "16"}):  # no reloads
        live = seeded_server(root / "data")
    push(live, [(f"alice/tiny-{name}", folder, False) for name, folder in folders.items()]
         + [("alice/secret-classifier", folders["classifier"], True),
            ("alice/tiny-cold", folders["mlm"], False)])  # loaded by one test only
    yield live, folders
    live.stop()


@pytest.fixture(scope="module")
def pipes(hub):
    folders = hub[1]
    tasks = {"sentence": "sentence-similarity", "classifier": "text-classification",
             "ner": "token-classification", "mlm": "fill-mask", "qa": "question-answering",
             "nli": "zero-shot-classification", "base": "feature-extraction"}
    return {name: cove.pipeline(task, model=str(folders[name])) for name, task in tasks.items()}


@pytest.fixture(scope="module")
def llama(hub):
    folder = str(hub[1]["llama"])
    return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def client(hub, repo: str, token: str | None = None) -> InferenceClient:
    """InferenceClient on the model's URL on this Hub (anonymous without a token)."""
    return InferenceClient(model=f"{hub[0].url}/models/{repo}", token=token)


def plain(elements) -> list[dict]:
    """The client's output dataclasses as the dicts the pipelines return."""
    return [{k: v for k, v in e.items() if v is not None} for e in elements]


def same(got, expected, path="result"):
    """Equal structures, floats within 1e-5."""
    if isinstance(expected, float):
        assert math.isclose(got, expected, rel_tol=1e-5, abs_tol=1e-6), (path, got, expected)
    elif isinstance(expected, dict):
        assert set(got) == set(expected), (path, got, expected)
        for k in expected:
            same(got[k], expected[k], f"{path}.{k}")
    elif isinstance(expected, list):
        assert len(got) == len(expected), (path, got, expected)
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            same(g, e, f"{path}[{i}]")
    else:
        assert got == expected, (path, got, expected)


# -- chat and text generation -------------------------------------------------------------------

def test_chat_completion_through_base_url(hub, llama):
    _, tok = llama
    ids = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True,
                                  return_dict=False)
    tokens, text = greedy(llama, ids, 12)
    for base in (hub[0].url, hub[0].url + "/v1"):
        c = InferenceClient(base_url=base)
        reply = c.chat_completion(MESSAGES, model="alice/tiny-llama", max_tokens=12,
                                  temperature=0)
        assert reply.choices[0].message.content == text
        assert reply.usage.completion_tokens == len(tokens)
    chunks = list(c.chat_completion(MESSAGES, model="alice/tiny-llama", max_tokens=12,
                                    temperature=0, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == text
    # a model URL: /models/{id}/v1/chat/completions, whatever the body's model ("dummy")
    reply = client(hub, "alice/tiny-llama").chat_completion(MESSAGES, max_tokens=12,
                                                            temperature=0)
    assert reply.choices[0].message.content == text


def test_text_generation_equals_greedy_generate(hub, llama):
    model, tok = llama
    ids = tok.encode(PROMPT)
    tokens, text = greedy(llama, ids, 10)
    c = client(hub, "alice/tiny-llama")
    assert c.text_generation(PROMPT, max_new_tokens=10) == text
    assert c.text_generation(PROMPT, max_new_tokens=10, return_full_text=True) == PROMPT + text
    out = c.text_generation(PROMPT, max_new_tokens=10, details=True, top_n_tokens=3)
    assert out.generated_text == text
    d = out.details
    assert [t.id for t in d.tokens] == tokens
    assert d.generated_tokens == len(tokens)
    assert d.finish_reason == ("length" if len(tokens) == 10 else "eos_token")
    assert d.seed is None and d.prefill == []  # greedy: no seed, as TGI
    assert "".join(t.text for t in d.tokens) == text
    # the log-probabilities are the model's own
    with torch.no_grad():
        logits = model(torch.tensor([ids + tokens])).logits[0, len(ids) - 1:-1]
    logprobs = logits.float().log_softmax(-1)
    torch.testing.assert_close(torch.tensor([t.logprob for t in d.tokens]),
                               logprobs[torch.arange(len(tokens)), tokens], atol=1e-4, rtol=0)
    # (the client leaves the lists of lists of top tokens as dicts)
    assert [[t["id"] for t in top] for top in d.top_tokens] == \
        logprobs.topk(3).indices.tolist()


def test_text_generation_streams(hub, llama):
    _, tok = llama
    tokens, text = greedy(llama, tok.encode(PROMPT), 10)
    c = client(hub, "alice/tiny-llama")
    assert "".join(c.text_generation(PROMPT, max_new_tokens=10, stream=True)) == text
    events = list(c.text_generation(PROMPT, max_new_tokens=10, stream=True, details=True))
    assert [e.index for e in events] == list(range(1, len(tokens) + 1))
    assert [e.token.id for e in events] == tokens
    assert all(e.generated_text is None and e.details is None for e in events[:-1])
    assert events[-1].generated_text == text
    assert events[-1].details.generated_tokens == len(tokens)
    assert events[-1].details.input_length == len(tok.encode(PROMPT))
    assert all(e.token.logprob <= 0 for e in events)


def test_text_generation_stop_sequence_and_sampling(hub, llama):
    _, tok = llama
    _, text = greedy(llama, tok.encode(PROMPT), 10)
    c = client(hub, "alice/tiny-llama")
    if len(text) > 4:
        stop = text[2:4]
        cut = c.text_generation(PROMPT, max_new_tokens=10, stop=[stop], details=True)
        # as TGI: the text ends with the stop sequence
        assert cut.generated_text == text[:text.find(stop) + len(stop)]
        assert cut.details.finish_reason == "stop_sequence"
        streamed = list(c.text_generation(PROMPT, max_new_tokens=10, stop=[stop], stream=True))
        assert "".join(streamed) == cut.generated_text
    kwargs = dict(max_new_tokens=8, do_sample=True, seed=7, details=True)
    first, second = c.text_generation(PROMPT, **kwargs), c.text_generation(PROMPT, **kwargs)
    assert first.generated_text == second.generated_text and first.details.seed == 7
    assert c.text_generation(PROMPT, max_new_tokens=8, temperature=0.7,
                             details=True).details.seed is not None  # a warper samples
    penalised = c.text_generation(PROMPT, max_new_tokens=10, repetition_penalty=1.5)
    assert isinstance(penalised, str)
    ids = tok.encode(PROMPT)
    assert c.text_generation(PROMPT, max_new_tokens=5, truncate=3) == \
        greedy(llama, ids[-3:], 5)[1]  # as TGI: the prompt's last tokens


def test_a_disconnect_cancels_the_generation(hub):
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 100, "do_sample": True},
            "stream": True}
    with httpx.stream("POST", f"{hub[0].url}/models/alice/tiny-llama", json=body) as r:
        assert r.status_code == 200
        next(r.iter_lines())  # one event, then hang up
    # the slot was freed, not leaked: the model still answers
    assert client(hub, "alice/tiny-llama").text_generation(PROMPT, max_new_tokens=2)


def test_a_full_queue_is_tgi_overloaded():
    from cove.server.serving import QueueFullError
    from cove.server.serving.tasks import _task_error

    error = _task_error(QueueFullError("busy"), tgi=True).response()
    assert error.status_code == 429 and error.headers["Retry-After"] == "1"
    assert json.loads(error.body) == {"error": "busy", "error_type": "overloaded"}


# -- the pipeline tasks -------------------------------------------------------------------------

def test_embeddings_and_similarity(hub, pipes):
    sentences = ["The cat sits outside.", "A man is playing guitar.", "hello"]
    c = client(hub, "alice/tiny-sentence")
    expected = np.array(pipes["sentence"](sentences), dtype="float32")
    np.testing.assert_allclose(c.feature_extraction(sentences), expected, atol=1e-6)
    np.testing.assert_allclose(c.feature_extraction(sentences[0]), expected[0], atol=1e-6)
    unnormalised = np.array(pipes["sentence"](sentences[0], normalize=False))
    np.testing.assert_allclose(c.feature_extraction(sentences[0], normalize=False),
                               unnormalised, atol=1e-5)
    scores = c.sentence_similarity(sentences[0], sentences[1:])
    vectors = torch.tensor(expected)
    cosine = torch.nn.functional.cosine_similarity(vectors[:1], vectors[1:]).tolist()
    np.testing.assert_allclose(scores, cosine, atol=1e-5)
    # a plain encoder (pipeline_tag feature-extraction): token vectors
    base = client(hub, "alice/tiny-base").feature_extraction("hello world")
    np.testing.assert_allclose(base, np.array(pipes["base"]("hello world")), atol=1e-5)


def test_text_classification(hub, pipes):
    c = client(hub, "alice/tiny-classifier")
    text = "I love this movie!"
    # every label, best first, as HF's API
    same(plain(c.text_classification(text)), pipes["classifier"](text, top_k=None))
    same(plain(c.text_classification(text, top_k=1, function_to_apply="sigmoid")),
         pipes["classifier"](text, top_k=1, function_to_apply="sigmoid"))


def test_token_classification(hub, pipes):
    c = client(hub, "alice/tiny-ner")
    text = "hello world, the quick brown fox jumped over the lazy dog."
    expected = pipes["ner"](text, aggregation_strategy="simple")  # HF's API's default
    assert expected, "the random model tags nothing: change its seed"
    same(plain(c.token_classification(text)), expected)
    same(plain(c.token_classification(text, aggregation_strategy="none", ignore_labels=[])),
         pipes["ner"](text, aggregation_strategy="none", ignore_labels=[]))


def test_fill_mask(hub, pipes):
    c = client(hub, "alice/tiny-mlm")
    text = "the quick brown [MASK] jumps over the lazy dog."
    same(plain(c.fill_mask(text)), pipes["mlm"](text))
    same(plain(c.fill_mask(text, top_k=2, targets=["fox", "dog", "cat"])),
         pipes["mlm"](text, top_k=2, targets=["fox", "dog", "cat"]))


def test_question_answering(hub, pipes):
    c = client(hub, "alice/tiny-qa")
    question = "what sat on the mat?"
    same(dict(c.question_answering(question, QA_CONTEXT)),
         pipes["qa"](question=question, context=QA_CONTEXT))
    same(plain(c.question_answering(question, QA_CONTEXT, top_k=2, max_answer_len=5)),
         pipes["qa"](question=question, context=QA_CONTEXT, top_k=2, max_answer_len=5))


def test_zero_shot_classification(hub, pipes):
    c = client(hub, "alice/tiny-nli")
    text, labels = "I love this movie!", ["good", "bad", "cat"]
    for kwargs in ({}, {"multi_label": True, "hypothesis_template": "It is {}."}):
        expected = pipes["nli"](text, candidate_labels=labels, **kwargs)
        same(plain(c.zero_shot_classification(text, labels, **kwargs)),
             [{"label": lab, "score": s} for lab, s in zip(expected["labels"],
                                                          expected["scores"], strict=True)])


# -- access and errors --------------------------------------------------------------------------

def test_private_models_need_a_token_that_reads_them(hub, pipes):
    live = hub[0]
    text = "I love this movie!"
    with pytest.raises(RepositoryNotFoundError, match="Repository not found"):
        client(hub, "alice/secret-classifier").text_classification(text)
    with pytest.raises(RepositoryNotFoundError):
        client(hub, "alice/secret-classifier", live.accounts.bob_write).text_classification(text)
    with pytest.raises(HfHubHTTPError, match="Invalid credentials") as info:
        client(hub, "alice/tiny-classifier", "not-a-token").text_classification(text)
    assert info.value.response.status_code == 401
    alice = client(hub, "alice/secret-classifier", live.accounts.alice_read)
    same(plain(alice.text_classification(text)), pipes["classifier"](text, top_k=None))
    # a revision, and the id's slash percent-encoded
    sha = httpx.get(f"{live.url}/api/models/alice/tiny-classifier").json()["sha"]
    for url in (f"{live.url}/models/alice/tiny-classifier@{sha}",
                f"{live.url}/models/alice%2Ftiny-classifier"):
        same(plain(InferenceClient(model=url).text_classification(text)),
             pipes["classifier"](text, top_k=None))
    with pytest.raises(RepositoryNotFoundError):
        client(hub, "alice/no-such-model").fill_mask("[MASK]")


def test_a_loading_model_is_a_503_to_who_would_not_wait(hub, pipes):
    url = f"{hub[0].url}/models/alice/tiny-cold"
    r = httpx.post(url, json={"inputs": "[MASK]", "options": {"wait_for_model": False}})
    assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["error"] == "Model alice/tiny-cold is currently loading"
    assert r.json()["estimated_time"] > 0
    deadline = time.monotonic() + 30
    while (r := httpx.post(url, json={"inputs": "[MASK]"},
                           headers={"X-Wait-For-Model": "false"})).status_code == 503:
        assert time.monotonic() < deadline, "the model never loaded"
        time.sleep(0.2)
    assert r.status_code == 200
    same(r.json(), pipes["mlm"]("[MASK]"))


def test_bad_requests_are_hf_errors(hub):
    url = hub[0].url
    with pytest.raises(BadRequestError, match="Unrecognized function_to_apply"):
        client(hub, "alice/tiny-classifier").text_classification("hi", function_to_apply="x")
    with pytest.raises(BadRequestError, match="was not able to be formatted"):
        client(hub, "alice/tiny-nli").zero_shot_classification("hi", ["a"],
                                                               hypothesis_template="none")
    llm = client(hub, "alice/tiny-llama")
    with pytest.raises(ValidationError, match="decoder_input_details"):
        llm.text_generation(PROMPT, details=True, decoder_input_details=True)
    with pytest.raises(ValidationError, match="watermark"):
        llm.text_generation(PROMPT, watermark=True)
    with pytest.raises(ValidationError, match="exceed a slot's 128 positions"):
        llm.text_generation("a " * 200, max_new_tokens=5)
    # raw HTTP: HF's error shapes
    r = httpx.post(f"{url}/models/alice/tiny-classifier",
                   json={"inputs": "hi", "parameters": {"wizard": 1}})
    assert r.status_code == 400
    assert r.json() == {"error": "Unknown parameter for text-classification: wizard (it "
                                 "takes: top_k, function_to_apply)."}
    r = httpx.post(f"{url}/models/alice/tiny-llama", json={"inputs": PROMPT,
                                                          "parameters": {"top_k": 0}})
    assert r.status_code == 422
    assert r.json() == {"error": "top_k must be > 0, got 0.", "error_type": "validation"}
    r = httpx.post(f"{url}/models/alice/tiny-qa", json={"inputs": "hi"})
    assert r.status_code == 400 and "question-answering takes inputs" in r.json()["error"]
    r = httpx.post(f"{url}/models/alice/tiny-mlm", json={"inputs": "[MASK]", "stream": True})
    assert r.status_code == 400 and "only text-generation streams" in r.json()["error"]
    r = httpx.post(f"{url}/models/alice/tiny-llama/pipeline/translation", json={"inputs": "x"})
    assert r.status_code == 404
    # a model URL posts every task to the model's own: a named one must be the model's
    r = httpx.post(f"{url}/models/alice/tiny-classifier/pipeline/sentence-similarity",
                   json={"inputs": {"source_sentence": "a", "sentences": ["b"]}})
    assert r.status_code == 400
    assert r.json()["error"] == ("The model 'alice/tiny-classifier' serves text-classification, "
                                 "not sentence-similarity.")
