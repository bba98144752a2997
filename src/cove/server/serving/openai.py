"""The OpenAI-compatible endpoints under /v1: models, chat completions, completions, embeddings.

The shapes are OpenAI's, so that the official SDKs work unchanged (`OpenAI(base_url=HUB +
"/v1", api_key=TOKEN)`): the `model` is a repository on this Hub, the API key a Cove token
(an empty key is anonymous; any other key must be a valid token, as everywhere on the Hub),
and errors are OpenAI's `{"error": {"message", "type", "param", "code"}}` (still with the Hub's
X-Error-Code header). Streams are server-sent events ending in `data: [DONE]`; a client that
goes away mid-stream cancels its requests, which frees their engine slots.

Log-probabilities are the model's own (before penalties, temperature and top-p), each token
shown as its decoded text. `response_format` `json_object` (JSON mode) holds the output to one
JSON object (json_mode.py). Not implemented, refused with a 400 naming the parameter:
logit_bias, response_format `json_schema`, tools, `echo`, `suffix`, `best_of`, token-id
prompts, embedding `dimensions`.

torch loads only with the first model (registry.py); this module imports none of it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
import uuid
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from cove.server import errors
from cove.server.hub import Principal
from cove.server.openapi import ERROR_HEADERS
from cove.server.routing import unslash

# Not in the Hub's /openapi.json: that document describes the Hub API (HubErrorBody errors,
# fuzzed by tests/server/test_openapi.py); /v1 is OpenAI's API, documented by OpenAI.
router = APIRouter(prefix="/v1", tags=["serving"], include_in_schema=False)

MAX_N = 8  # choices per request
ROLES = ("system", "developer", "user", "assistant")


class _ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorBody(BaseModel):
    """OpenAI's error object."""

    error: _ErrorDetail


_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": OpenAIErrorBody, "description": meaning, "headers": ERROR_HEADERS}
    for status, meaning in (
        (400, "Invalid or unsupported parameters, a bad role, too long a prompt, a model that "
              "cannot do this (invalid_request_error)."),
        (401, "The token is invalid (authentication_error)."),
        (404, "No such model, or a private one the caller may not read (model_not_found)."),
        (429, "The model's queue is full: retry after `Retry-After` seconds."),
        (500, "Generation failed."),
        (503, "The model is loading and the client asked not to wait (X-Wait-For-Model: "
              "false): retry after `Retry-After` seconds."),
    )
}


class OpenAIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, type_: str = "invalid_request_error",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type, self.headers = type_, headers or {}

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}
        headers = {"X-Error-Code": self.code or "BadRequest",
                   "X-Error-Message": errors.header_safe(self.message), **self.headers}
        return JSONResponse(body, status_code=self.status, headers=headers)


def _bad(message: str, param: str | None = None, code: str | None = None) -> OpenAIError:
    return OpenAIError(400, message, param, code)


def _from_exception(exc: Exception) -> OpenAIError:
    from cove.server.serving import QueueFullError
    from cove.server.serving.registry import ModelLoading

    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, ModelLoading):
        return OpenAIError(503, f"{exc}: retry in a moment.", "model", "model_loading",
                           "server_error",
                           {"Retry-After": str(max(1, round(exc.estimated_seconds)))})
    if isinstance(exc, errors.HubError):
        kind = {401: "authentication_error", 403: "permission_error"}.get(
            exc.status, "invalid_request_error")
        code = "model_not_found" if exc.code in ("RepoNotFound", "RevisionNotFound") else exc.code
        param = "model" if code == "model_not_found" else None
        return OpenAIError(exc.status, exc.message, param, code, kind)
    if isinstance(exc, QueueFullError):
        return OpenAIError(429, str(exc), None, "rate_limit_exceeded", "rate_limit_error",
                           {"Retry-After": "1"})
    if isinstance(exc, ValueError):
        return _bad(str(exc))
    raise exc


def _caller(request: Request) -> Principal | None:
    """The caller as the Hub sees it; an empty bearer (an SDK with api_key="") is anonymous;
    without a bearer, the signed-in web session with its CSRF header (the pages' widget)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if header and scheme.lower() == "bearer" and not token.strip():
        return None
    from cove.server.deps import serving_caller

    return serving_caller(request)


async def _body(request: Request, model: type[BaseModel]) -> Any:
    try:
        data = await request.json()
    except ValueError:
        raise _bad("The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise _bad("The request body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise _bad(f"Invalid value for {param!r}: {first['msg']}.", param,
                   "invalid_value") from None


def waits_for_model(request: Request) -> bool:
    """False when the client said it would rather have a 503 than wait while a model loads
    (the `X-Wait-For-Model: false` header of HF's inference API)."""
    return request.headers.get("x-wait-for-model", "true").strip().lower() not in (
        "false", "0", "no")


async def _served(request: Request, model: str, task: str):
    registry = request.app.state.serving
    who = _caller(request)
    return await anyio.to_thread.run_sync(registry.get, model, who, (task,),
                                          waits_for_model(request))


# -- request bodies -----------------------------------------------------------------------

class _Generation(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = None
    stream: bool | None = False
    stream_options: dict[str, Any] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logprobs: Any = None  # chat: a bool (with top_logprobs); completions: the top count
    top_logprobs: int | None = None
    # Refused when set to anything but their defaults (not implemented):
    logit_bias: dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    tools: list | None = None
    echo: bool | None = None
    suffix: str | None = None
    best_of: int | None = None

    def refuse_unsupported(self) -> None:
        if self.logit_bias:
            raise _bad("logit_bias is not supported by Cove's server yet.", "logit_bias",
                       "unsupported_parameter")
        if self.response_format and self.response_format.get("type", "text") not in (
                "text", "json_object"):
            raise _bad(f"response_format {self.response_format.get('type')!r} is not supported "
                       "by Cove's server yet: use 'text' or 'json_object'.", "response_format",
                       "unsupported_parameter")
        if self.tools:
            raise _bad("tools are not supported by Cove's server yet.", "tools",
                       "unsupported_parameter")
        if self.echo or self.suffix or (self.best_of or 1) > 1:
            param = "echo" if self.echo else "suffix" if self.suffix else "best_of"
            raise _bad(f"{param} is not supported by Cove's server yet.", param,
                       "unsupported_parameter")

    def logprob_count(self) -> int | None:
        """How many top tokens to report with each token's logprob; None: no logprobs."""
        raise NotImplementedError

    @property
    def json_mode(self) -> bool:
        return (self.response_format or {}).get("type") == "json_object"

    def sampling(self, max_tokens: int | None):
        from cove.server.serving import SamplingParams

        n = 1 if self.n is None else self.n
        if not 1 <= n <= MAX_N:
            raise _bad(f"n must lie between 1 and {MAX_N}, got {n}.", "n", "invalid_value")
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > 4:
            raise _bad("stop takes at most 4 sequences.", "stop", "invalid_value")
        temperature = 1.0 if self.temperature is None else self.temperature
        if not 0 <= temperature <= 2:
            raise _bad(f"temperature must lie in [0, 2], got {temperature}.", "temperature",
                       "invalid_value")
        top_p = 1.0 if self.top_p is None else self.top_p
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= (getattr(self, name) or 0) <= 2:
                raise _bad(f"{name} must lie in [-2, 2], got {getattr(self, name)}.", name,
                           "invalid_value")
        if max_tokens is not None and max_tokens < 1:
            raise _bad(f"max_tokens must be >= 1, got {max_tokens}.", "max_tokens",
                       "invalid_value")
        try:
            params = [SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                                     stop=tuple(stops),
                                     seed=None if self.seed is None else self.seed + i,
                                     presence_penalty=self.presence_penalty or 0.0,
                                     frequency_penalty=self.frequency_penalty or 0.0,
                                     logprobs=self.logprob_count(),
                                     json_object=self.json_mode)
                      for i in range(n)]
        except ValueError as exc:
            raise _bad(str(exc), "top_p" if "top_p" in str(exc) else None,
                       "invalid_value") from None
        return params


class ChatBody(_Generation):
    messages: list[dict[str, Any]]
    max_completion_tokens: int | None = None

    def logprob_count(self) -> int | None:
        if self.logprobs not in (None, False, True):
            raise _bad("logprobs must be a boolean.", "logprobs", "invalid_value")
        if self.top_logprobs is not None and not self.logprobs:
            raise _bad("top_logprobs needs logprobs: true.", "top_logprobs", "invalid_value")
        if not 0 <= (self.top_logprobs or 0) <= 20:
            raise _bad(f"top_logprobs must lie in [0, 20], got {self.top_logprobs}.",
                       "top_logprobs", "invalid_value")
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionBody(_Generation):
    prompt: str | list[str]

    def logprob_count(self) -> int | None:
        if self.logprobs is None:
            return None
        if isinstance(self.logprobs, bool) or not isinstance(self.logprobs, int) \
                or not 0 <= self.logprobs <= 5:
            raise _bad(f"logprobs must be an integer in [0, 5], got {self.logprobs!r}.",
                       "logprobs", "invalid_value")
        return self.logprobs


class EmbeddingBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    input: str | list[str]
    encoding_format: str | None = None
    dimensions: int | None = None


def _message_text(message: dict[str, Any], i: int) -> dict[str, str]:
    role = message.get("role")
    if role not in ROLES:
        raise _bad(f"Invalid role {role!r} in messages[{i}]: use one of {', '.join(ROLES)}.",
                   f"messages.[{i}].role", "invalid_value")
    content = message.get("content")
    if isinstance(content, list):  # content parts: text only
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise _bad(f"messages[{i}]: only text content parts are supported.",
                           f"messages.[{i}].content", "invalid_value")
            texts.append(str(part.get("text", "")))
        content = "".join(texts)
    if not isinstance(content, str):
        raise _bad(f"messages[{i}] needs a text content.", f"messages.[{i}].content",
                   "invalid_value")
    return {"role": "system" if role == "developer" else role, "content": content}


# -- the shared generation path ------------------------------------------------------------

def _submit(engine, prompt_ids: list[int], params: list) -> list:
    requests = []
    try:
        for p in params:
            requests.append(engine.submit(prompt_ids, p))
    except Exception:
        for r in requests:
            r.cancel()
        raise
    return requests


def _usage(requests: list) -> dict[str, int]:
    prompt = len(requests[0].prompt_ids)
    completion = sum(len(r.output_ids) for r in requests)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _finish(r) -> str:
    if r.finish_reason == "error":
        raise OpenAIError(500, f"Generation failed: {r.error}", None, "internal_error",
                          "server_error")
    return r.finish_reason


def _sse(data: Any) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


async def _merged(requests: list):
    """(index, Delta) from all the requests as they come; None at each request's end."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(i, r):
        async for delta in r:
            await queue.put((i, delta))
        await queue.put((i, None))

    tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(requests)]
    try:
        for _ in range(len(requests)):
            while (item := await queue.get())[1] is not None:
                yield item
            yield item
    finally:
        for t in tasks:
            t.cancel()


def _stream(requests: list, chunk, include_usage: bool) -> StreamingResponse:
    """SSE: `chunk(index, text, finish_reason, first, logprobs)` per delta (logprobs: the
    TokenLogprobs of the tokens since the last chunk); the usage chunk; [DONE]."""

    async def events():
        pending: list[list] = [[] for _ in requests]
        try:
            for i in range(len(requests)):
                first = chunk(i, "", None, True, [])
                if first is not None:
                    yield _sse(first)
            async for i, delta in _merged(requests):
                r = requests[i]
                if delta is None:
                    try:
                        reason = _finish(r)
                    except OpenAIError as exc:
                        yield _sse(json.loads(exc.response().body))
                        return
                    yield _sse(chunk(i, "", reason, False, pending[i]))
                    continue
                if delta.logprob is not None:
                    pending[i].append(delta.logprob)
                if delta.text:
                    yield _sse(chunk(i, delta.text, None, False, pending[i]))
                    pending[i] = []
            if include_usage:
                yield _sse({**chunk(0, "", None, False, []), "choices": [],
                            "usage": _usage(requests)})
            yield b"data: [DONE]\n\n"
        finally:  # the client went away (or the stream ended): free the slots
            for r in requests:
                if not r.finished:
                    r.cancel()

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _chat_logprobs(tokenizer, logprobs: list) -> dict[str, Any] | None:
    """OpenAI's chat `logprobs` object for TokenLogprobs (None when none were asked for)."""
    def entry(token_id: int, logprob: float) -> dict[str, Any]:
        text = tokenizer.decode([token_id])
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return {"content": [{**entry(lp.token_id, lp.logprob),
                         "top_logprobs": [entry(t, v) for t, v in lp.top]}
                        for lp in logprobs], "refusal": None}


def _completion_logprobs(tokenizer, logprobs: list, offset: int = 0) -> dict[str, Any]:
    """OpenAI's legacy completions `logprobs` object; `offset` is where the text starts."""
    tokens = [tokenizer.decode([lp.token_id]) for lp in logprobs]
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t)
    return {"tokens": tokens, "token_logprobs": [lp.logprob for lp in logprobs],
            "top_logprobs": [{tokenizer.decode([t]): v for t, v in lp.top}
                             for lp in logprobs], "text_offset": offsets}


async def _wait(request: Request, requests: list) -> None:
    """Wait for all the requests; cancel them if the client goes away meanwhile."""
    try:
        while not all(r.finished for r in requests):
            if await request.is_disconnected():
                for r in requests:
                    r.cancel()
                return
            pending = next((r for r in requests if not r.finished), None)
            if pending is None:  # it ended since the check above (the engine's thread)
                break
            try:
                await anyio.to_thread.run_sync(pending.result, 0.25)
            except TimeoutError:
                pass
    except BaseException:
        for r in requests:
            r.cancel()
        raise


def _handled(handler):
    async def wrapper(request: Request):
        try:
            return await handler(request)
        except Exception as exc:  # noqa: BLE001 - mapped to OpenAI's shape, or re-raised
            return _from_exception(exc).response()

    wrapper.__name__ = handler.__name__
    wrapper.__doc__ = handler.__doc__
    return wrapper


# -- the routes ----------------------------------------------------------------------------

def _model_card(source) -> dict[str, Any]:
    repo = source.repo
    if repo is None:  # a local model (cove serve-model)
        return {"id": source.name, "object": "model", "created": 0, "owned_by": "cove"}
    return {"id": source.name, "object": "model",
            "created": int(repo.created_at.timestamp()) if repo.created_at else 0,
            "owned_by": repo.namespace}


@router.get("/models", name="openai_list_models",
            responses=_RESPONSES)
@_handled
async def list_models(request: Request):
    """The models this Hub serves that the caller can read (OpenAI's list shape)."""
    registry = request.app.state.serving
    who = _caller(request)
    sources = await anyio.to_thread.run_sync(registry.served, who)
    return {"object": "list", "data": [_model_card(s) for s in sources]}


@router.get("/models/{model:repo}", name="openai_retrieve_model",
            responses=_RESPONSES)
@router.get("/models/{model}", name="openai_retrieve_alias", responses=_RESPONSES)
async def retrieve_model(request: Request, model: str):
    """One served model (`owner/name`, the slash as-is or percent-encoded, or an alias)."""
    async def handler(request: Request):
        registry = request.app.state.serving
        who = _caller(request)

        def lookup():
            source = registry.resolve(unslash(model), who)
            if registry.facts(source).openai_kind is None:
                raise errors.repo_not_found(source.name)
            return source

        return _model_card(await anyio.to_thread.run_sync(lookup))

    return await _handled(handler)(request)


async def _reply(request: Request, body: Any, requests: list, head: dict, kind: str,
                 chunk: Any, choice: Any) -> Any:
    """The requests' answer: a server-sent-event stream of `chunk(i, text, reason, first)`
    dicts when the body asks to stream, else, once every request has ended, one `kind` object
    with each request's `choice(i, request)` and the usage."""
    if body.stream:
        return _stream(requests, chunk, bool((body.stream_options or {}).get("include_usage")))
    await _wait(request, requests)
    return {**head, "object": kind, "choices": [choice(i, r) for i, r in enumerate(requests)],
            "usage": _usage(requests)}


@router.post("/chat/completions", name="openai_chat_completions",
            responses=_RESPONSES)
@_handled
async def chat_completions(request: Request):
    """Chat: the messages through the model's chat template (with the generation prompt)."""
    body: ChatBody = await _body(request, ChatBody)
    body.refuse_unsupported()
    if not body.messages:
        raise _bad("messages must not be empty.", "messages", "invalid_value")
    messages = [_message_text(m, i) for i, m in enumerate(body.messages)]
    if body.json_mode and not any("json" in m["content"].lower() for m in messages):
        # OpenAI's rule: a model not told to write JSON pads with whitespace until max_tokens
        raise _bad("'messages' must contain the word 'json' in some form, to use "
                   "'response_format' of type 'json_object'.", "messages", "invalid_value")
    max_tokens = body.max_completion_tokens if body.max_completion_tokens is not None \
        else body.max_tokens
    params = body.sampling(max_tokens)
    served = await _served(request, body.model, "text-generation")
    tokenizer = served.tokenizer
    if not getattr(tokenizer, "chat_template", None):
        raise _bad(f"The model {body.model!r} has no chat template: use /v1/completions.",
                   "model", "no_chat_template")
    try:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                            tokenize=True, return_dict=False)
    except Exception as exc:  # noqa: BLE001 - a template that refuses these messages
        raise _bad(f"The chat template refused the messages: {exc}", "messages") from None
    ids = list(ids[0]) if ids and isinstance(ids[0], list) else list(ids)
    requests = _submit(served.engine, ids, params)
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    head = {"id": cid, "created": int(created), "model": body.model,
            "system_fingerprint": None}

    wants_logprobs = params[0].logprobs is not None

    def logprobs(lps):
        return _chat_logprobs(tokenizer, lps) if wants_logprobs else None

    def chunk(i, text, reason, first, lps):
        delta = {"role": "assistant", "content": ""} if first else (
            {"content": text} if text else {})
        return {**head, "object": "chat.completion.chunk",
                "choices": [{"index": i, "delta": delta, "logprobs": logprobs(lps),
                             "finish_reason": reason}]}

    def choice(i, r):
        return {"index": i, "message": {"role": "assistant", "content": r.text},
                "logprobs": logprobs(r.logprobs), "finish_reason": _finish(r)}

    return await _reply(request, body, requests, head, "chat.completion", chunk, choice)


@router.post("/completions", name="openai_completions",
            responses=_RESPONSES)
@_handled
async def completions(request: Request):
    """Plain completion of a prompt string."""
    body: CompletionBody = await _body(request, CompletionBody)
    body.refuse_unsupported()
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise _bad("Cove's server takes one prompt string per request.", "prompt",
                       "invalid_value")
        prompt = prompt[0]
    params = body.sampling(body.max_tokens if body.max_tokens is not None else 16)
    served = await _served(request, body.model, "text-generation")
    ids = served.tokenizer.encode(prompt)
    requests = _submit(served.engine, ids, params)
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": body.model,
            "system_fingerprint": None}

    wants_logprobs = params[0].logprobs is not None
    streamed = [0] * len(params)  # characters streamed per choice: the text offsets

    def chunk(i, text, reason, first, lps):
        if first:
            return None
        lp = _completion_logprobs(served.tokenizer, lps, streamed[i]) if wants_logprobs \
            else None
        streamed[i] += len(text)
        return {**head, "object": "text_completion",
                "choices": [{"index": i, "text": text, "logprobs": lp,
                             "finish_reason": reason}]}

    def choice(i, r):
        lp = _completion_logprobs(served.tokenizer, r.logprobs) if wants_logprobs else None
        return {"index": i, "text": r.text, "logprobs": lp, "finish_reason": _finish(r)}

    return await _reply(request, body, requests, head, "text_completion", chunk, choice)


@router.post("/embeddings", name="openai_embeddings",
            responses=_RESPONSES)
@_handled
async def embeddings(request: Request):
    """Sentence embeddings, pooled as the repository's sentence-transformers config says."""
    body: EmbeddingBody = await _body(request, EmbeddingBody)
    if body.dimensions is not None:
        raise _bad("dimensions is not supported by Cove's server yet.", "dimensions",
                   "unsupported_parameter")
    fmt = body.encoding_format or "float"
    if fmt not in ("float", "base64"):
        raise _bad(f"encoding_format must be 'float' or 'base64', got {fmt!r}.",
                   "encoding_format", "invalid_value")
    texts = [body.input] if isinstance(body.input, str) else list(body.input)
    if not texts or any(not t for t in texts):
        raise _bad("input must be a non-empty string or a list of non-empty strings.",
                   "input", "invalid_value")
    served = await _served(request, body.model, "sentence-similarity")

    def run():
        with served.lock:
            vectors = served.pipeline(texts)
            counts = [len(ids) for ids in served.tokenizer(texts)["input_ids"]]
        return vectors, counts

    vectors, counts = await anyio.to_thread.run_sync(run)
    data = []
    for i, v in enumerate(vectors):
        v = [float(x) for x in v]
        embedding: Any = v if fmt == "float" else base64.b64encode(
            struct.pack(f"<{len(v)}f", *v)).decode()
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    tokens = sum(counts)
    return {"object": "list", "data": data, "model": body.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
