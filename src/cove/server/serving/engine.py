"""A continuous-batching generation engine over Cove's causal LMs.

Requests are admitted into a running batch between decode steps: each holds one slot of a
`SlotKVCache` (a fixed pool of rows, each one sequence's keys and values at its own positions),
its prompt is prefilled in chunks of at most `prefill_chunk` tokens per engine step (so a long
prompt never stalls the others' decoding for long), and every step ends with one batched decode
of all the running requests, each at its own position. A Llama-family model on the CPU decodes
through cove.kernels' whole-step Decoder (cove.models.decoding.slot_steps: one C++ call per 8
rows, each row writing and attending in its own slot at its own length, as generate's steps);
otherwise (and for every prompt) the module forward runs over the bound slots, the position
ids saying where each row is and the attention mask which cached positions each row holds.
Each request samples with its own parameters and its own seeded generator, so a seeded
request gives the same tokens whatever else shares the batch; it ends at an EOS or stop
token, a stop string, `max_tokens` or when it is cancelled, which frees its slot for a
waiting request.

`Engine.step()` runs one scheduler iteration; `Engine.start()` runs steps in a thread.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch

from cove import kernels
from cove.generation.logits_process import apply_temperature, top_k_filter, top_p_filter
from cove.models.cache import SlotKVCache
from cove.models.decoding import slot_steps

_DONE = object()  # the end of a request's stream
JSON_CANDIDATES = 64  # the model's best tokens JSON mode tries before its punctuation
_ids = itertools.count(1)


class QueueFullError(RuntimeError):
    """Every slot is busy and the waiting queue is full: try again later (HTTP 429)."""


@dataclass
class SamplingParams:
    """How one request samples and when it stops.

    temperature 0 means greedy (top_p and top_k then do nothing). `max_tokens` None fills the
    slot: as many tokens as the prompt leaves room for. `stop` strings end the request, the
    returned text stopping before the string; `stop_token_ids` (as the model's EOS ids) end it
    with the token kept in `output_ids` but not in the text. `seed` seeds the request's own
    generator: the same seed gives the same tokens whatever else runs in the batch.

    Penalties change the scores before sampling: `repetition_penalty` as transformers' (over
    the prompt and the output: a positive score divided by it, a negative one multiplied),
    `presence_penalty` and `frequency_penalty` as OpenAI's (over the output: minus the penalty
    once for a token that occurred, minus frequency times its count). `logprobs` k (not None)
    records each chosen token's log-probability and the k most likely tokens', under the
    model's own distribution (before penalties, temperature and top-p). `json_object` holds
    the output to one JSON object (json_mode.py) and ends the request when it is whole.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int | None = 16
    stop: Sequence[str] = ()
    stop_token_ids: Sequence[int] = ()
    seed: int | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logprobs: int | None = None
    json_object: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(s for s in self.stop if s)
        self.stop_token_ids = tuple(int(t) for t in self.stop_token_ids)
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}.")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}.")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}.")
        if self.logprobs is not None and self.logprobs < 0:
            raise ValueError(f"logprobs must be >= 0, got {self.logprobs}.")

    @property
    def plain_greedy(self) -> bool:
        """Greedy with nothing to change the scores or record: the batch's argmax will do."""
        return (self.temperature == 0 and self.repetition_penalty == 1 and
                not self.presence_penalty and not self.frequency_penalty and
                self.logprobs is None and not self.json_object)


class TokenLogprob(NamedTuple):
    """A chosen token's log-probability and the `top` (token id, log-probability) pairs."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


class Delta(NamedTuple):
    """One step of a request's stream: the token it produced, the text that became final
    with it ("" while a possible stop string or an incomplete character is held back), and
    the token's log-probabilities when the request asked for them."""

    token_id: int
    text: str
    logprob: TokenLogprob | None = None


@dataclass(eq=False)
class Request:
    """One generation request. Iterate it (or `async for` it) for its `Delta`s as they come;
    `result()` waits for the end. `output_ids`, `text` and `finish_reason` ("stop", "length",
    "cancelled", or "error" with `error` set) hold the outcome; `logprobs` one TokenLogprob per
    output id when the parameters asked for them."""

    prompt_ids: list[int]
    params: SamplingParams
    id: int = field(default_factory=lambda: next(_ids))
    output_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    error: BaseException | None = None
    slot: int | None = None
    _arrived: float = field(default_factory=time.monotonic)
    _max_tokens: int = 0
    _prefilled: int = 0  # prompt tokens in the cache
    _cached: int = 0  # positions in the cache
    _emitted: int = 0  # characters of text streamed
    _cancel: bool = False
    _json_complete: bool = False
    _generator: torch.Generator | None = None
    _queue: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    _inbox: tuple[asyncio.AbstractEventLoop, asyncio.Queue] | None = None  # an async reader
    _done: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        """End the request now (a client went away); the engine frees its slot at its next
        step. Its stream ends at once, with finish_reason "cancelled"."""
        self._cancel = True
        self._finish("cancelled")

    def result(self, timeout: float | None = None) -> Request:
        """Wait until the request ends; itself. TimeoutError if it has not within `timeout`."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.id} has not finished within {timeout} s")
        return self

    def __iter__(self) -> Iterator[Delta]:
        while (item := self._queue.get()) is not _DONE:
            yield item

    async def __aiter__(self) -> AsyncIterator[Delta]:
        # Deltas reach the event loop by call_soon_threadsafe, not a worker thread blocked on
        # the queue per stream: 16 streams would hold most of a small machine's thread pool.
        loop, inbox = asyncio.get_running_loop(), asyncio.Queue()
        with self._lock:
            while not self._queue.empty():  # what came before this iteration, in order
                inbox.put_nowait(self._queue.get_nowait())
            self._inbox = (loop, inbox)
        while (item := await inbox.get()) is not _DONE:
            yield item

    def _deliver(self, item: object) -> None:  # with self._lock held
        if self._inbox is None:
            self._queue.put(item)
            return
        loop, inbox = self._inbox
        try:
            loop.call_soon_threadsafe(inbox.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    def _push(self, delta: Delta) -> None:
        with self._lock:
            if not self._done.is_set():
                self._deliver(delta)

    def _finish(self, reason: str, error: BaseException | None = None) -> None:
        with self._lock:
            if self._done.is_set():
                return
            self.finish_reason, self.error = reason, error
            self._done.set()
            self._deliver(_DONE)


class Engine:
    """Continuous batching over `model` (a Cove causal LM) with a slot-based KV cache.

    `max_batch_size` requests run at once, each in a slot of `max_cached_tokens //
    max_batch_size` positions, at most the model's context length. By default the cache takes
    at most `max_cache_bytes` (2 GiB: slots are allocated whole, so a byte bound, not the
    context length, is what keeps a small model's cache from taking gigabytes), each slot at
    most 4096 positions. A request whose prompt plus `max_tokens` does not fit is refused with a
    ValueError. Up to `max_waiting` requests queue for a slot; past that `submit` raises
    QueueFullError. Each step prefills at most `prefill_chunk` prompt tokens in all.
    `metrics` (a serving.metrics.ModelMetrics) counts tokens, waits and endings.
    """

    def __init__(self, model: Any, tokenizer: Any = None, max_batch_size: int = 16,
                 max_cached_tokens: int | None = None, prefill_chunk: int = 512,
                 max_waiting: int = 256, metrics: Any = None,
                 max_cache_bytes: int = 2 * 2**30) -> None:
        config = model.config
        if max_batch_size < 1 or prefill_chunk < 1:
            raise ValueError("max_batch_size and prefill_chunk must be >= 1.")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.prefill_chunk = prefill_chunk
        self.max_waiting = max_waiting
        context = (getattr(config, "max_position_embeddings", None)
                   or getattr(config, "n_positions", None) or 4096)
        probe = model.new_cache(1, 1)  # the layers' shapes, whatever the family
        _, heads, _, head_dim = probe.keys[0].shape
        if max_cached_tokens is None:
            per_token = 2 * len(probe.keys) * heads * head_dim * probe.keys[0].element_size()
            max_cached_tokens = min(4096 * max_batch_size, max_cache_bytes // per_token)
        self.slot_length = min(max_cached_tokens // max_batch_size, context)
        if self.slot_length < 2:
            raise ValueError(f"max_cached_tokens={max_cached_tokens} leaves each of the "
                             f"{max_batch_size} slots fewer than 2 positions.")
        self.cache = SlotKVCache(len(probe.keys), max_batch_size, heads, head_dim,
                                 self.slot_length, dtype=probe.keys[0].dtype,
                                 device=probe.keys[0].device)
        self.device = probe.keys[0].device
        with torch.inference_mode():  # how the steps run
            self._steps = slot_steps(self.model, self.slot_length)
        self.eos_token_ids = _eos_ids(model)
        self._slots: list[Request | None] = [None] * max_batch_size
        self._waiting: deque[Request] = deque()
        self._lock = threading.Lock()  # the waiting queue and the slots
        self._wake = threading.Condition(self._lock)
        self._step_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.metrics = metrics
        self._punctuation: list[int] | None = None  # JSON mode's fallback tokens
        self._step_tokens: list[float] = []  # per token accepted this step: its request's wait

    # -- the client side ------------------------------------------------------------------

    def submit(self, prompt: str | Sequence[int], params: SamplingParams | None = None
               ) -> Request:
        """Queue a prompt (text, tokenized with the engine's tokenizer, or token ids); the
        request starts at the next step with a free slot."""
        params = params or SamplingParams()
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("A text prompt needs the engine's tokenizer.")
            prompt = self.tokenizer.encode(prompt)
        ids = [int(t) for t in prompt]
        if not ids:
            raise ValueError("The prompt is empty.")
        if (params.stop or params.json_object) and self.tokenizer is None:
            raise ValueError("Stop strings and JSON mode need the engine's tokenizer.")
        room = self.slot_length - len(ids)
        max_tokens = params.max_tokens if params.max_tokens is not None else room
        if max_tokens > room or room < 1:
            raise ValueError(
                f"The prompt's {len(ids)} tokens plus max_tokens={max_tokens} exceed a slot's "
                f"{self.slot_length} positions: shorten the prompt or ask for fewer tokens.")
        request = Request(ids, params, _max_tokens=max_tokens)
        if params.seed is not None:
            request._generator = torch.Generator(self.device).manual_seed(params.seed)
        with self._wake:
            if len(self._waiting) >= self.max_waiting:
                raise QueueFullError(f"{len(self._waiting)} requests are already waiting for "
                                     "a slot; try again later.")
            self._waiting.append(request)
            self._wake.notify()
        return request

    def generate(self, prompt: str | Sequence[int], params: SamplingParams | None = None
                 ) -> Request:
        """Submit and run steps here until the request ends (no background loop needed)."""
        request = self.submit(prompt, params)
        while not request.finished:
            if self._thread is None:
                self.step()
            else:
                request.result()
        return request

    @property
    def num_running(self) -> int:
        return sum(r is not None for r in self._slots)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    def has_work(self) -> bool:
        return bool(self._waiting) or any(r is not None for r in self._slots)

    # -- the background loop --------------------------------------------------------------

    def start(self) -> None:
        """Run steps in a background thread while there is work."""
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="cove-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the background loop (the requests in flight stay as they are)."""
        thread = self._thread
        if thread is None:
            return
        with self._wake:
            self._stopping = True
            self._wake.notify_all()
        thread.join(timeout)
        self._thread = None

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self.has_work():
                    self._wake.wait()
                if self._stopping:
                    return
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001 - fail the requests, keep serving
                self._fail_all(exc)

    def _fail_all(self, exc: BaseException) -> None:
        with self._lock:
            requests = [r for r in self._slots if r is not None] + list(self._waiting)
            self._slots = [None] * self.max_batch_size
            self._waiting.clear()
        for r in requests:
            r._finish("error", exc)

    # -- the scheduler --------------------------------------------------------------------

    def step(self) -> bool:
        """One scheduler iteration: free finished and cancelled requests' slots, admit
        waiting requests into free slots, prefill up to `prefill_chunk` prompt tokens, then
        decode one token for every running request at once. False when there was nothing to
        do."""
        with self._step_lock, torch.inference_mode():
            self._schedule()
            running = [r for r in self._slots if r is not None]
            if not running:
                return False
            budget = self.prefill_chunk
            for r in running:
                if r._prefilled < len(r.prompt_ids) and budget > 0:
                    budget -= self._prefill(r, budget)
            decoding = [r for r in running if r._prefilled == len(r.prompt_ids)
                        and not r.finished and r.output_ids]
            if decoding:
                self._decode(decoding)
            self._schedule()
            if self.metrics is not None:
                self.metrics.generated(len(self._step_tokens),
                                       [w for w in self._step_tokens if w >= 0])
            self._step_tokens.clear()
            return True

    def _schedule(self) -> None:
        with self._lock:
            ended = []
            for i, r in enumerate(self._slots):
                if r is not None and r.finished:
                    self._slots[i] = None
                    ended.append(r)
            ended += [r for r in self._waiting if r.finished]
            self._waiting = deque(r for r in self._waiting if not r.finished)
            for i in range(self.max_batch_size):
                if self._slots[i] is None and self._waiting:
                    r = self._waiting.popleft()
                    r.slot = i
                    self._slots[i] = r
        if self.metrics is not None:
            for r in ended:
                self.metrics.finished(r.finish_reason)

    def _prefill(self, r: Request, budget: int) -> int:
        """Prefill the next chunk (at most `budget` tokens) of r's prompt; the last chunk
        samples its first token. The number of tokens prefilled."""
        n = min(len(r.prompt_ids) - r._prefilled, budget)
        chunk = r.prompt_ids[r._prefilled:r._prefilled + n]
        self.cache.bind([r.slot], [r._cached])
        ids = torch.tensor([chunk], device=self.device)
        logits = self.model(input_ids=ids, position_ids=self.cache.position_ids(n, self.device),
                            past_key_values=self.cache, use_cache=True, logits_to_keep=1,
                            return_dict=True).logits
        r._prefilled += n
        r._cached += n
        if self.metrics is not None:
            self.metrics.prefilled(n)
        if r._prefilled == len(r.prompt_ids):
            self._accept(r, *self._choose(r, logits[0, -1]))
        return n

    def _decode(self, requests: list[Request]) -> None:
        logits = self._step_logits(requests)
        greedy = logits.argmax(-1).tolist()
        for i, r in enumerate(requests):
            r._cached += 1
            if r.params.plain_greedy:
                self._accept(r, greedy[i])
            else:
                self._accept(r, *self._choose(r, logits[i]))

    def _step_logits(self, requests: list[Request]) -> torch.Tensor:
        """The next token's logits [requests, vocab], each request's last output fed at its
        own length."""
        ids = torch.tensor([r.output_ids[-1] for r in requests], device=self.device)
        if self._steps is not None:
            # A sequence's position is its index in its slot: lengths are the positions.
            # Calls of at most 8 rows, the most the kernels' products take.
            slots = torch.tensor([r.slot for r in requests])
            lengths = torch.tensor([r._cached for r in requests])
            parts = [self._steps(ids[i:i + kernels.MAX_ROWS], self.cache.storage,
                                 slots[i:i + kernels.MAX_ROWS], lengths[i:i + kernels.MAX_ROWS],
                                 lengths[i:i + kernels.MAX_ROWS])
                     for i in range(0, len(requests), kernels.MAX_ROWS)]
            return parts[0] if len(parts) == 1 else torch.cat(parts)
        self.cache.bind([r.slot for r in requests], [r._cached for r in requests])
        return self.model(input_ids=ids[:, None],
                          attention_mask=self.cache.attention_mask(1, self.device),
                          position_ids=self.cache.position_ids(1, self.device),
                          past_key_values=self.cache, use_cache=True, logits_to_keep=1,
                          return_dict=True).logits[:, -1]

    def _choose(self, r: Request, logits: torch.Tensor) -> tuple[int, TokenLogprob | None]:
        """r's next token from its row of scores, and its log-probabilities if asked for."""
        p = r.params
        scores = logits.float()
        if p.repetition_penalty != 1 or p.presence_penalty or p.frequency_penalty:
            scores = _penalised(scores, r, p)
        probs = None
        if p.temperature > 0:
            scores = apply_temperature(scores[None], p.temperature)
            if p.top_k:
                scores = top_k_filter(scores, p.top_k)
            if p.top_p < 1:
                scores = top_p_filter(scores, p.top_p)
            probs = scores[0].softmax(-1)
        if p.json_object:
            token = self._json_token(r, scores, probs)
        elif probs is None:
            token = int(scores.argmax())
        else:
            token = int(torch.multinomial(probs, 1, generator=r._generator))
        if p.logprobs is None:
            return token, None
        logprobs = logits.float().log_softmax(-1)
        pairs: list[tuple[int, float]] = []
        if p.logprobs:
            top = logprobs.topk(min(p.logprobs, logprobs.numel()))
            pairs = list(zip(top.indices.tolist(), top.values.tolist(), strict=True))
        return token, TokenLogprob(token, float(logprobs[token]), pairs)

    def _json_token(self, r: Request, scores: torch.Tensor, probs: torch.Tensor | None) -> int:
        """JSON mode: the first of the model's candidates (best first, or drawn without
        replacement when sampling) that keeps the output the beginning of a JSON object; the
        single-character tokens of JSON's punctuation, best first, if none of them does."""
        from cove.server.serving.json_mode import first_valid

        if probs is None:
            candidates = scores.reshape(-1).topk(min(JSON_CANDIDATES, scores.numel()))
            candidates = candidates.indices.tolist()
        else:
            n = min(JSON_CANDIDATES, int((probs > 0).sum()))
            candidates = torch.multinomial(probs, n, generator=r._generator).tolist()
        base = self.tokenizer.decode(r.output_ids, skip_special_tokens=True)

        def text_with(token: int) -> str:
            text = self.tokenizer.decode(r.output_ids + [token], skip_special_tokens=True)
            return "" if text == base else text  # a special token adds nothing: not JSON

        found = first_valid(candidates, text_with)
        if found is None:
            flat = scores.reshape(-1)
            found = first_valid(sorted(self._json_punctuation(), key=lambda t: -float(flat[t])),
                                text_with)
        if found is None:
            raise RuntimeError("JSON mode: no token continues the JSON object.")
        token, state = found
        r._json_complete = state.complete
        return token

    def _json_punctuation(self) -> list[int]:
        if self._punctuation is None:
            ids = (self.tokenizer.encode(c, add_special_tokens=False)
                   for c in '{}[]":, 0123456789-.eEtrufalsn')
            self._punctuation = sorted({i[0] for i in ids if len(i) == 1})
        return self._punctuation

    def _accept(self, r: Request, token: int, logprob: TokenLogprob | None = None) -> None:
        """Record r's new token, stream what became final and end r where it should."""
        if r.finished:  # cancelled meanwhile
            return
        r.output_ids.append(token)
        # the first token's wait since arrival (time to first token); -1 for the others
        self._step_tokens.append(time.monotonic() - r._arrived if len(r.output_ids) == 1
                                 else -1.0)
        if logprob is not None:
            r.logprobs.append(logprob)
        p = r.params
        reason = None
        if token in self.eos_token_ids or token in p.stop_token_ids:
            reason = "stop"
            ids = r.output_ids[:-1]
        else:
            ids = r.output_ids
        text = self.tokenizer.decode(ids, skip_special_tokens=True) if self.tokenizer else ""
        if p.stop:
            searched = max(0, r._emitted - max(map(len, p.stop)))
            hits = [i for s in p.stop if (i := text.find(s, searched)) >= 0]
            if hits:
                text, reason = text[:min(hits)], "stop"
        if reason is None and r._json_complete:
            reason = "stop"  # JSON mode: the object is whole
        if reason is None and len(r.output_ids) >= r._max_tokens:
            reason = "length"
        r.text = text
        final = len(text) if reason else _stream_end(text, p.stop)
        delta, r._emitted = text[r._emitted:final], max(r._emitted, final)
        r._push(Delta(token, delta, logprob))
        if reason:
            r._finish(reason)


def _penalised(scores: torch.Tensor, r: Request, p: SamplingParams) -> torch.Tensor:
    scores = scores.clone()
    if p.repetition_penalty != 1:
        seen = torch.tensor(r.prompt_ids + r.output_ids, device=scores.device).unique()
        picked = scores[seen]
        scores[seen] = torch.where(picked > 0, picked / p.repetition_penalty,
                                   picked * p.repetition_penalty)
    if (p.presence_penalty or p.frequency_penalty) and r.output_ids:
        out, counts = torch.tensor(r.output_ids, device=scores.device).unique(
            return_counts=True)
        scores[out] -= p.presence_penalty + p.frequency_penalty * counts.to(scores.dtype)
    return scores


def _stream_end(text: str, stops: tuple[str, ...]) -> int:
    """How much of `text` can be streamed: all but a trailing incomplete character and the
    longest tail that could still begin a stop string."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    held = 0
    for s in stops:
        for k in range(min(len(s) - 1, end), held, -1):
            if text[end - k:end] == s[:k]:
                held = k
                break
    return end - held


def _eos_ids(model: Any) -> set[int]:
    ids: set[int] = set()
    for config in (getattr(model, "generation_config", None), model.config):
        eos = getattr(config, "eos_token_id", None) if config is not None else None
        if eos is None:
            continue
        ids.update([eos] if isinstance(eos, int) else eos)
        break  # the generation config's, when it names any: as generate does
    return {int(i) for i in ids}
