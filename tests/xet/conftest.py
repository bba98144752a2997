"""Xet tests run with Xet on, as a new user's client: the suite's HF_HUB_DISABLE_XET=1 is
undone here (huggingface_hub reads `constants.HF_HUB_DISABLE_XET` at each call), and hf_xet's
retries are bounded so that a refused request fails in seconds, not minutes."""

from __future__ import annotations

import os

import pytest

# hf_xet reads these when its session starts (the first Xet transfer of the process).
os.environ.setdefault("HF_XET_CLIENT_RETRY_MAX_ATTEMPTS", "2")
os.environ.setdefault("HF_XET_CLIENT_RETRY_BASE_DELAY", "100ms")
os.environ.setdefault("HF_XET_CLIENT_RETRY_MAX_DURATION", "10s")


@pytest.fixture(autouse=True)
def xet_on(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", False)
    monkeypatch.delenv("HF_HUB_DISABLE_XET", raising=False)
