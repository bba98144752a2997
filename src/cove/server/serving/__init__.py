"""Serving models: the in-process continuous-batching engine (the HTTP endpoints build on it).

The names load lazily: importing this package does not import torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Delta", "Engine", "QueueFullError", "Request", "SamplingParams", "TokenLogprob"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from cove.server.serving import engine
        return getattr(engine, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
