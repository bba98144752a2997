"""The inference endpoints' metrics at GET /metrics, in Prometheus' text format.

Per served model (label `model`): requests running and waiting (the queue length), prompt and
generated tokens (counters; Prometheus' `rate()` gives tokens/s, and a gauge gives the last
10 seconds' for a glance without Prometheus), requests ended by finish reason, and the time to
first token (a histogram: from the request's arrival to its first generated token). Plus the
number of models loaded and loading. prometheus_client writes the format.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

router = APIRouter(tags=["serving"], include_in_schema=False)

WINDOW = 10.0  # seconds the tokens/s gauge looks back
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ModelMetrics:
    """One model's counters, fed by its engine."""

    def __init__(self, metrics: ServingMetrics, model: str) -> None:
        self._prompt = metrics.prompt_tokens.labels(model)
        self._generated = metrics.generated_tokens.labels(model)
        self._ttft = metrics.ttft.labels(model)
        self._requests = metrics.requests
        self.model = model
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens) of recent steps
        self._lock = threading.Lock()

    def prefilled(self, tokens: int) -> None:
        self._prompt.inc(tokens)

    def generated(self, tokens: int, first_token_waits: Iterable[float] = ()) -> None:
        """`tokens` new tokens in one engine step; the waits of the requests that got their
        first token in it."""
        self._generated.inc(tokens)
        for wait in first_token_waits:
            self._ttft.observe(wait)
        now = time.monotonic()
        with self._lock:
            self._recent.append((now, tokens))
            while self._recent and self._recent[0][0] < now - WINDOW:
                self._recent.popleft()

    def finished(self, reason: str) -> None:
        self._requests.labels(self.model, reason).inc()

    def tokens_per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            return sum(n for t, n in self._recent if t >= now - WINDOW) / WINDOW


class ServingMetrics:
    """All the models' metrics; `live()` lists the loaded models as (name, engine or None)
    for the gauges, `loading()` counts the models loading now."""

    def __init__(self, live: Callable[[], list[tuple[str, Any]]],
                 loading: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self.prompt_tokens = Counter("cove_serving_prompt_tokens", "Prompt tokens prefilled.",
                                     ["model"], registry=self.registry)
        self.generated_tokens = Counter("cove_serving_generation_tokens",
                                        "Tokens generated.", ["model"], registry=self.registry)
        self.requests = Counter("cove_serving_requests", "Generation requests ended, by "
                                "finish reason (stop, length, cancelled, error).",
                                ["model", "finish_reason"], registry=self.registry)
        self.ttft = Histogram("cove_serving_time_to_first_token_seconds",
                              "From a request's arrival to its first generated token.",
                              ["model"], buckets=TTFT_BUCKETS, registry=self.registry)
        self._models: dict[str, ModelMetrics] = {}
        self.registry.register(_Gauges(self, live, loading))

    def for_model(self, model: str) -> ModelMetrics:
        if model not in self._models:
            self._models[model] = ModelMetrics(self, model)
        return self._models[model]

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Gauges(Collector):
    """The values read at scrape time: queue lengths, tokens/s, models loaded and loading."""

    def __init__(self, metrics: ServingMetrics, live: Callable[[], list[tuple[str, Any]]],
                 loading: Callable[[], int]) -> None:
        self.metrics, self.live, self.loading = metrics, live, loading

    def collect(self):
        running = GaugeMetricFamily("cove_serving_requests_running",
                                    "Requests holding a slot of the running batch.",
                                    labels=["model"])
        waiting = GaugeMetricFamily("cove_serving_requests_waiting",
                                    "Requests queued for a slot.", labels=["model"])
        speed = GaugeMetricFamily("cove_serving_generation_tokens_per_second",
                                  f"Tokens generated per second over the last {WINDOW:g} s.",
                                  labels=["model"])
        models = self.live()
        for name, engine in models:
            if engine is None:  # a pipeline (no queue of its own)
                continue
            running.add_metric([name], engine.num_running)
            waiting.add_metric([name], engine.num_waiting)
            speed.add_metric([name], self.metrics.for_model(name).tokens_per_second())
        yield running
        yield waiting
        yield speed
        yield GaugeMetricFamily("cove_serving_models_loaded", "Models loaded.",
                                value=len(models))
        yield GaugeMetricFamily("cove_serving_models_loading", "Models being loaded.",
                                value=self.loading())


@router.get("/metrics", name="serving_metrics")
async def metrics(request: Request) -> Response:
    """The serving metrics (Prometheus text format)."""
    return Response(request.app.state.serving.metrics.render(), media_type=CONTENT_TYPE_LATEST)
