"""Cove: a self-hostable, open implementation of the Hugging Face system."""

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Lazy: `import cove` stays light (no torch) until a pipeline is asked for.
    if name == "pipeline":
        from cove.pipelines import pipeline

        return pipeline
    raise AttributeError(f"module 'cove' has no attribute {name!r}")
