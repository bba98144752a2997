"""The Hugging Face task API: what `huggingface_hub.InferenceClient` speaks to a model URL.

`InferenceClient(model=f"{HUB}/models/{owner}/{name}")` posts every task to that URL; the task is
the one the repository serves (registry.py: its card's pipeline_tag, ...), and the body is HF's
`{"inputs": ..., "parameters": {...}, "options": {...}, "stream": bool}` (feature-extraction
sends its parameters at the top level, as TEI takes them). `/models/{model}/pipeline/{task}`
names the task, as HF's API does for the two a sentence-transformers model answers:
feature-extraction (inputs: a string or a list of strings -> embeddings) and
sentence-similarity (inputs: {"source_sentence", "sentences"} -> cosine similarities); the
plain URL tells them apart by the inputs' shape. The model is named as on /v1: `owner/name`,
`owner/name@revision` (a revision's slashes percent-encoded) or a served alias, under the Hub's
read rules (a private repository is 404 to a caller who cannot read it).
`/models/{model}/v1/chat/completions` is /v1's chat with that model, whatever the body's
`model` says: `InferenceClient(model=URL).chat_completion` posts there, as to a TGI endpoint.

Answers are HF's shapes, each the Cove pipeline's output for the same inputs and parameters:
text-classification `[[{label, score}]]` (every label unless `top_k`, as HF's API),
token-classification `[{entity_group, score, word, start, end}]` (aggregation_strategy
"simple" unless given, as HF's API), fill-mask `[{score, token, token_str, sequence}]`,
question-answering `{score, start, end, answer}` (a list with top_k > 1),
zero-shot-classification `[{label, score}]`, feature-extraction the pipeline's vectors,
sentence-similarity `[score]`. text-generation runs on the continuous-batching engine and
answers as text-generation-inference (TGI): `[{"generated_text", "details"}]`, or with
`stream` server-sent events of `{"index", "token", "top_tokens"?, "generated_text",
"details"}`, the last one with the whole text (and the details when asked for). As TGI, the
text includes a stop sequence that ended it (finish_reason "stop_sequence"; "eos_token",
"length" otherwise); unlike TGI, each token's `text` is the text that became final with it
(so the tokens' texts join to `generated_text`: "" for an end-of-sequence token).

Errors are HF's `{"error": message}` with the Hub's X-Error-Code header (RepoNotFound makes
the client raise RepositoryNotFoundError): 400 bad inputs or parameters (text-generation: 422
with `"error_type": "validation"`, as TGI), 401 an invalid token, 404 an unknown or unreadable
model, 429 a full queue (Retry-After; TGI's "overloaded"), 503 `{"error", "estimated_time"}`
while the model loads for a caller who would rather not wait (`options.wait_for_model` false, or
the `X-Wait-For-Model: false` header). Not done: TGI's
decoder_input_details (prompt log-probabilities), watermark, typical_p, best_of, grammar,
adapters; TEI's prompt_name, dimensions, left truncation; other tasks.

torch loads only with the first model (registry.py); this module imports none of it.
"""

from __future__ import annotations

import json
import math
import random
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from cove.server import errors
from cove.server.routing import unslash
from cove.server.serving.openai import (
    OpenAIError,
    _body,
    _caller,
    _merged,
    _sse,
    _submit,
    _wait,
    chat_completions,
    waits_for_model,
)

# Not in the Hub's /openapi.json: this is HF's inference API, documented by HF.
router = APIRouter(tags=["serving"], include_in_schema=False)

EMBEDDING_TASKS = ("feature-extraction", "sentence-similarity")
MAX_STOP = 4  # stop sequences per request, as TGI's default
MAX_TOP_N_TOKENS = 5  # as TGI's default
DEFAULT_MAX_NEW_TOKENS = 100  # as TGI's GenerateParameters
OPTIONS = ("use_cache", "wait_for_model")  # HF's request options (use_cache: nothing to do)


class TaskError(Exception):
    """An error answered as HF's `{"error": message}` (TGI's adds `error_type`)."""

    def __init__(self, status: int, message: str, code: str = "BadRequest",
                 error_type: str | None = None, headers: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.error_type, self.headers, self.extra = error_type, headers or {}, extra or {}

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"error": self.message, **self.extra}
        if self.error_type:
            body["error_type"] = self.error_type
        headers = {"X-Error-Code": self.code,
                   "X-Error-Message": errors.header_safe(self.message), **self.headers}
        return JSONResponse(body, status_code=self.status, headers=headers)


def _bad(message: str) -> TaskError:
    return TaskError(400, message)


def _task_error(exc: Exception, tgi: bool) -> TaskError:
    """`exc` as HF's error; for text-generation (`tgi`) with TGI's statuses and error types."""
    from cove.server.serving import QueueFullError
    from cove.server.serving.registry import ModelLoading

    if isinstance(exc, OpenAIError):  # from the shared body parser
        error = TaskError(exc.status, exc.message)
    elif isinstance(exc, TaskError):
        error = exc
    elif isinstance(exc, ModelLoading):  # HF's answer while a model loads
        error = TaskError(503, str(exc), "ModelLoading",
                          headers={"Retry-After": str(max(1, round(exc.estimated_seconds)))},
                          extra={"estimated_time": exc.estimated_seconds})
    elif isinstance(exc, errors.HubError):
        error = TaskError(exc.status, exc.message, exc.code, headers=exc.headers)
    elif isinstance(exc, QueueFullError):
        error = TaskError(429, str(exc), "TooManyRequests", headers={"Retry-After": "1"})
    elif isinstance(exc, ValueError):
        error = _bad(str(exc))
    else:
        raise exc
    if tgi and error.error_type is None:
        if error.status == 400:
            error.status, error.error_type = 422, "validation"
        elif error.status == 429:
            error.error_type = "overloaded"
    return error


class TaskBody(BaseModel):
    # Extra top-level fields are parameters: feature-extraction sends its own there (TEI's).
    model_config = ConfigDict(extra="allow")

    inputs: Any = None
    parameters: dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    stream: bool = False

    def all_parameters(self) -> dict[str, Any]:
        return {**(self.model_extra or {}), **(self.parameters or {})}


def _check_parameters(task: str, params: dict[str, Any], allowed: tuple[str, ...]) -> None:
    if unknown := sorted(set(params) - set(allowed)):
        takes = ", ".join(allowed) if allowed else "none"
        raise _bad(f"Unknown parameter{'s' if len(unknown) > 1 else ''} for {task}: "
                   f"{', '.join(unknown)} (it takes: {takes}).")


# -- the pipeline tasks ---------------------------------------------------------------------

def _call(served, inputs: Any, **params: Any) -> Any:
    """The pipeline's answer; its refusals of inputs and parameters are 400s."""
    with served.lock:
        try:
            return served.pipeline(inputs, **params)
        except (ValueError, TypeError) as exc:
            raise _bad(str(exc)) from None


def _as_is(served, inputs: Any, params: dict[str, Any]) -> Any:
    return _call(served, inputs, **params)


def _text_classification(served, inputs: Any, params: dict[str, Any]) -> Any:
    params.setdefault("top_k", None)  # every label, best first, as HF's API answers
    out = _call(served, inputs, **params)
    single = isinstance(inputs, (str, dict))
    return [out] if single else out


def _token_classification(served, inputs: Any, params: dict[str, Any]) -> Any:
    params.setdefault("aggregation_strategy", "simple")  # as HF's API
    return _call(served, inputs, **params)


def _zero_shot(served, inputs: Any, params: dict[str, Any]) -> Any:
    if params.get("candidate_labels") is None:
        raise _bad("zero-shot-classification needs parameters.candidate_labels (a list of "
                   "labels, or one string of comma-separated labels).")
    out = _call(served, inputs, **params)

    def pairs(result: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"label": label, "score": score}
                for label, score in zip(result["labels"], result["scores"], strict=True)]

    return pairs(out) if isinstance(out, dict) else [pairs(o) for o in out]


def _question_answering(served, inputs: Any, params: dict[str, Any]) -> Any:
    if not isinstance(inputs, (dict, list)):
        raise _bad('question-answering takes inputs {"question": ..., "context": ...}.')
    return _call(served, inputs, **params)


def _embeddings(served, inputs: Any, params: dict[str, Any]) -> Any:
    """feature-extraction: a sentence-transformers model's embeddings (one vector per text),
    or any other model's token vectors (the feature-extraction pipeline's)."""
    if not isinstance(inputs, (str, list)):
        raise _bad("feature-extraction takes inputs: a string or a list of strings.")
    if params.get("prompt_name") is not None:
        raise _bad("prompt_name is not supported by Cove's server yet.")
    if params.get("dimensions") is not None:
        raise _bad("dimensions is not supported by Cove's server yet.")
    if params.get("encoding_format", "float") != "float":
        raise _bad("encoding_format: Cove's task API answers floats only (base64 is on "
                   "/v1/embeddings).")
    if params.get("truncation_direction", "right") != "right":
        raise _bad("truncation_direction: Cove truncates on the right only.")
    truncate = params.get("truncate")
    if served.task == "sentence-similarity":
        if truncate is False:
            raise _bad("truncate: a sentence-transformers model always truncates its inputs "
                       "to its max_seq_length.")
        normalize = params.get("normalize")
        return _call(served, inputs, **({} if normalize is None else {"normalize": normalize}))
    if params.get("normalize") is not None:
        raise _bad("normalize: this model answers token vectors (it is no sentence-"
                   "transformers model), which are not normalised.")
    return _call(served, inputs, **({} if truncate is None else {"truncation": truncate}))


def _similarity(served, inputs: Any, params: dict[str, Any]) -> list[float]:
    if not (isinstance(inputs, dict) and isinstance(inputs.get("source_sentence"), str)
            and isinstance(inputs.get("sentences"), list)):
        raise _bad('sentence-similarity takes inputs {"source_sentence": "...", '
                   '"sentences": ["...", ...]}.')
    if served.task != "sentence-similarity":
        raise _bad(f"The model {served.name!r} serves {served.task}, not sentence-similarity.")
    if not inputs["sentences"]:
        return []
    source, *others = _call(served, [inputs["source_sentence"], *inputs["sentences"]])
    return [_cosine(source, v) for v in others]


def _cosine(a: list[float], b: list[float]) -> float:
    norms = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return sum(x * y for x, y in zip(a, b, strict=True)) / norms if norms else 0.0


# task -> (the parameters it takes, its handler)
_PIPELINE_TASKS: dict[str, tuple[tuple[str, ...], Any]] = {
    "text-classification": (("top_k", "function_to_apply"), _text_classification),
    "token-classification": (("aggregation_strategy", "ignore_labels", "stride"),
                             _token_classification),
    "fill-mask": (("top_k", "targets"), _as_is),
    "question-answering": (("top_k", "doc_stride", "max_answer_len", "max_seq_len",
                            "max_question_len", "handle_impossible_answer", "align_to_words"),
                           _question_answering),
    "zero-shot-classification": (("candidate_labels", "multi_label", "hypothesis_template"),
                                 _zero_shot),
    "feature-extraction": (("normalize", "truncate", "truncation_direction", "prompt_name",
                            "dimensions", "encoding_format"), _embeddings),
    "sentence-similarity": ((), _similarity),
}
TASKS = ("text-generation", *_PIPELINE_TASKS)


# -- text generation (TGI) ------------------------------------------------------------------

class TGIParameters(BaseModel):
    """TGI's GenerateParameters."""

    model_config = ConfigDict(extra="forbid")

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    do_sample: bool = False
    seed: int | None = None
    stop: list[str] | None = None
    stop_sequences: list[str] | None = None  # the older name
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    return_full_text: bool | None = None
    details: bool = False
    top_n_tokens: int | None = None
    truncate: int | None = None
    # Refused when set (not implemented):
    decoder_input_details: bool = False
    watermark: bool = False
    typical_p: float | None = None
    best_of: int | None = None
    grammar: Any = None
    adapter_id: str | None = None

    def refuse_unsupported(self) -> None:
        if self.decoder_input_details:
            raise _bad("decoder_input_details (the prompt's log-probabilities) is not "
                       "supported by Cove's server yet.")
        if self.watermark:
            raise _bad("watermark is not supported by Cove's server.")
        if self.typical_p is not None and self.typical_p < 1:
            raise _bad("typical_p is not supported by Cove's server yet.")
        if (self.best_of or 1) > 1:
            raise _bad("best_of is not supported by Cove's server yet.")
        if self.grammar is not None:
            raise _bad("grammar (constrained generation) is not supported by Cove's server "
                       "yet.")
        if self.adapter_id:
            raise _bad("adapter_id (LoRA adapters) is not supported by Cove's server yet.")

    def sampling(self, room: int, stream: bool):
        """The engine's parameters; a prompt leaving `room` positions in a slot."""
        from cove.server.serving import SamplingParams

        self.refuse_unsupported()
        for name in ("temperature", "top_p", "repetition_penalty"):
            value = getattr(self, name)
            if value is not None and value <= 0 and not (name == "temperature" and value == 0):
                raise _bad(f"{name} must be > 0, got {value}.")
        if self.top_p is not None and self.top_p > 1:
            raise _bad(f"top_p must lie in (0, 1], got {self.top_p}.")
        if self.top_k is not None and self.top_k < 1:
            raise _bad(f"top_k must be > 0, got {self.top_k}.")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise _bad(f"max_new_tokens must be > 0, got {self.max_new_tokens}.")
        if self.frequency_penalty is not None and not -2 <= self.frequency_penalty <= 2:
            raise _bad(f"frequency_penalty must lie in [-2, 2], got {self.frequency_penalty}.")
        stops = [*(self.stop or []), *(self.stop_sequences or [])]
        if len(stops) > MAX_STOP:
            raise _bad(f"stop takes at most {MAX_STOP} sequences, got {len(stops)}.")
        top_n = self.top_n_tokens or 0
        if not 0 <= top_n <= MAX_TOP_N_TOKENS:
            raise _bad(f"top_n_tokens must lie in [0, {MAX_TOP_N_TOKENS}], got {top_n}.")
        # As TGI: any warper (temperature, top_k, top_p) turns sampling on.
        sample = self.temperature != 0 and (
            self.do_sample or self.temperature not in (None, 1.0) or bool(self.top_k)
            or (self.top_p is not None and self.top_p < 1))
        seed = self.seed if self.seed is not None or not sample else random.randrange(2**32)
        max_tokens = self.max_new_tokens or max(1, min(DEFAULT_MAX_NEW_TOKENS, room))
        return SamplingParams(
            temperature=(self.temperature or 1.0) if sample else 0.0,
            top_p=self.top_p or 1.0, top_k=self.top_k or 0, max_tokens=max_tokens,
            stop=tuple(stops), seed=seed if sample else None,
            repetition_penalty=self.repetition_penalty or 1.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            # Each streamed token and each detailed one carries its log-probability.
            logprobs=top_n if (self.details or stream) else None)


def _tgi_parameters(params: dict[str, Any]) -> TGIParameters:
    _check_parameters("text-generation", params, tuple(TGIParameters.model_fields))
    try:
        return TGIParameters.model_validate(params)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first["loc"])
        raise _bad(f"Invalid value for parameters.{name}: {first['msg']}.") from None


class _Tokens:
    """TGI's token objects for one request's deltas."""

    def __init__(self, served) -> None:
        self.tokenizer = served.tokenizer
        self.eos = served.engine.eos_token_ids
        self.special = set(getattr(self.tokenizer, "all_special_ids", ())) | self.eos

    def token(self, token_id: int, text: str, logprob: Any) -> dict[str, Any]:
        return {"id": token_id, "text": text,
                "logprob": None if logprob is None else logprob.logprob,
                "special": token_id in self.special}

    def top(self, logprob: Any) -> list[dict[str, Any]]:
        return [{"id": t, "text": self.tokenizer.decode([t]), "logprob": lp,
                 "special": t in self.special} for t, lp in (logprob.top if logprob else [])]

    def reason(self, r) -> str:
        """TGI's finish_reason for an ended request."""
        if r.finish_reason == "error":
            raise TaskError(500, f"Generation failed: {r.error}", "InternalError", "generation")
        if r.finish_reason == "length":
            return "length"
        return "eos_token" if r.output_ids and r.output_ids[-1] in self.eos else "stop_sequence"

    def text(self, r, reason: str) -> str:
        """The generated text; as TGI, with the stop sequence that ended it."""
        if reason == "stop_sequence":
            return self.tokenizer.decode(r.output_ids, skip_special_tokens=True)
        return r.text


async def _generate(request: Request, served, inputs: Any, params: dict[str, Any],
                    stream: bool):
    if not isinstance(inputs, str) or not inputs:
        raise _bad("text-generation takes inputs: a non-empty string.")
    p = _tgi_parameters(params)
    ids = list(served.tokenizer.encode(inputs))
    if p.truncate is not None:
        if p.truncate < 1:
            raise _bad(f"truncate must be > 0, got {p.truncate}.")
        ids = ids[-p.truncate:]  # TGI keeps the prompt's end
    sampling = p.sampling(served.engine.slot_length - len(ids), stream)
    (r,) = _submit(served.engine, ids, [sampling])
    tokens = _Tokens(served)
    prefix = inputs if p.return_full_text else ""
    if stream:
        return _tgi_stream(r, tokens, p, prefix)
    await _wait(request, [r])
    reason = tokens.reason(r)
    text = tokens.text(r, reason)
    answer: dict[str, Any] = {"generated_text": prefix + text}
    if p.details:
        deltas = list(r)  # all it produced: nothing read its stream
        texts = [d.text for d in deltas]
        if texts:  # the stop sequence the deltas held back
            texts[-1] += text[len("".join(texts)):]
        details: dict[str, Any] = {
            "finish_reason": reason, "generated_tokens": len(r.output_ids),
            "seed": r.params.seed, "prefill": [],
            "tokens": [tokens.token(d.token_id, t, d.logprob)
                       for d, t in zip(deltas, texts, strict=True)]}
        if p.top_n_tokens:
            details["top_tokens"] = [tokens.top(d.logprob) for d in deltas]
        answer["details"] = details
    return [answer]


def _tgi_stream(r, tokens: _Tokens, p: TGIParameters, prefix: str) -> StreamingResponse:
    """TGI's server-sent events: one per token, the last with the text (and details)."""

    def event(index: int, delta, text: str, last: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"index": index, "token": tokens.token(delta.token_id, text,
                                                                     delta.logprob)}
        if p.top_n_tokens:
            out["top_tokens"] = tokens.top(delta.logprob)
        out["generated_text"] = out["details"] = None
        if last:
            reason = tokens.reason(r)
            out["generated_text"] = prefix + tokens.text(r, reason)
            if p.details:
                out["details"] = {"finish_reason": reason,
                                  "generated_tokens": len(r.output_ids),
                                  "seed": r.params.seed, "input_length": len(r.prompt_ids)}
        return out

    async def events():
        sent, held, index = "", None, 0
        try:
            # One delta is held back: the last event must carry the text and the details.
            async for _, delta in _merged([r]):
                if held is not None:
                    index += 1
                    if delta is None:
                        full = tokens.text(r, tokens.reason(r))
                        yield _sse(event(index, held, full[len(sent):], True))
                        return
                    sent += held.text
                    yield _sse(event(index, held, held.text, False))
                held = delta
            tokens.reason(r)  # it ended without a token: only a failure does (raised)
        except TaskError as exc:
            yield _sse({"error": exc.message, "error_type": exc.error_type})
        finally:  # the client went away (or the stream ended): free the slot
            if not r.finished:
                r.cancel()

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# -- the routes ------------------------------------------------------------------------------

async def _answer(request: Request, model: str, task: str | None) -> Any:
    """Run `model` on the body's inputs for `task` (None: the task the model serves)."""
    tgi = False
    try:
        body: TaskBody = await _body(request, TaskBody)
        if unknown := sorted(set(body.options or {}) - set(OPTIONS)):
            raise _bad(f"Unknown options: {', '.join(unknown)} (Cove takes: "
                       f"{', '.join(OPTIONS)}).")
        if body.inputs is None:
            raise _bad("The request needs inputs.")
        registry = request.app.state.serving
        who = _caller(request)
        # HF's legacy body option, else its X-Wait-For-Model header (waiting by default)
        wait = bool((body.options or {}).get("wait_for_model", waits_for_model(request)))

        def lookup():
            source = registry.resolve(model, who)
            serves = registry.task_of(source)
            if serves not in TASKS:
                raise _bad(f"The model {source.name!r} serves {serves or 'no known task'}, "
                           "which Cove's inference API does not answer yet.")
            return registry.get(model, who, (serves,), wait)

        served = await anyio.to_thread.run_sync(lookup)
        wanted = task or served.task
        if served.task == "sentence-similarity" and task is None:
            wanted = "sentence-similarity" if isinstance(body.inputs, dict) \
                else "feature-extraction"
        if wanted != served.task and not (wanted in EMBEDDING_TASKS
                                          and served.task in EMBEDDING_TASKS):
            raise _bad(f"The model {served.name!r} serves {served.task}, not {wanted}.")
        params = body.all_parameters()
        if wanted == "text-generation":
            tgi = True
            return await _generate(request, served, body.inputs, params, body.stream)
        if body.stream:
            raise _bad(f"stream: {wanted} answers at once; only text-generation streams.")
        allowed, handler = _PIPELINE_TASKS[wanted]
        _check_parameters(wanted, params, allowed)
        return await anyio.to_thread.run_sync(handler, served, body.inputs, params)
    except Exception as exc:  # noqa: BLE001 - mapped to HF's error shape, or re-raised
        return _task_error(exc, tgi).response()


@router.post("/models/{model:repo}", name="hf_inference")
async def inference(request: Request, model: str):
    """The model's own task on the body's inputs (HF's inference API)."""
    return await _answer(request, unslash(model), None)


@router.post("/models/{model:repo}/pipeline/{task}", name="hf_inference_pipeline")
async def inference_pipeline(request: Request, model: str, task: str):
    """One named task (feature-extraction or sentence-similarity of a sentence-transformers
    model; any other task must be the model's own)."""
    if task not in TASKS:
        return TaskError(404, f"Unknown task {task!r}: Cove answers {', '.join(TASKS)}.",
                         "NotFound").response()
    return await _answer(request, unslash(model), task)


@router.post("/models/{model:repo}/v1/chat/completions", name="hf_inference_chat")
async def inference_chat(request: Request, model: str):
    """OpenAI's chat completions with the model the URL names, whatever the body's `model`
    says (`InferenceClient(model=URL).chat_completion` sends "dummy"), as a TGI endpoint."""
    raw = await request.body()
    try:
        data = json.loads(raw)
    except ValueError:
        data = None  # the chat endpoint answers the error
    if isinstance(data, dict):
        raw = json.dumps({**data, "model": unslash(model)}).encode()
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        return await request.receive()  # a disconnect, seen by the chat endpoint

    return await chat_completions(Request(request.scope, receive))
