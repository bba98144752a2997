"""The real `datasets` as a test oracle for the loading tests (offline, its own cache)."""

from __future__ import annotations

import os
from typing import Any

import pytest


def oracle() -> Any:
    """The installed datasets module, offline (it is imported only by tests)."""
    os.environ["HF_DATASETS_OFFLINE"] = "1"  # read by datasets only, not by cove
    return pytest.importorskip("datasets")


def plain(features: dict) -> dict:
    """A features dict with large_string spelled string: datasets 5.2 with pandas 3 reads CSV
    strings as large_string, Cove as string; the content is what is compared."""
    if isinstance(features, dict):
        return {k: ("string" if v == "large_string" else plain(v)) for k, v in features.items()}
    if isinstance(features, list):
        return [plain(v) for v in features]
    return features


def oracle_load(*args: Any, cache_dir: Any, **kwargs: Any) -> Any:
    return oracle().load_dataset(*args, cache_dir=str(cache_dir), **kwargs)
