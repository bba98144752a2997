"""Where to talk to and where to keep things: COVE_* variables, HF_* honoured too.

Read at call time, not import time, so a variable set after `import cove.hub` still counts.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_ENDPOINT = "https://huggingface.co"
REPO_TYPES = ("model", "dataset", "space")
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
API_PLURAL = {"model": "models", "dataset": "datasets", "space": "spaces"}
_TRUE = {"1", "true", "yes", "on"}


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def endpoint() -> str:
    return (_env("COVE_ENDPOINT", "HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def home() -> Path:
    """Cove's home: token file and hub cache (shared with huggingface_hub's layout)."""
    value = _env("COVE_HOME", "HF_HOME")
    if value:
        return Path(value).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "huggingface"


def cache_dir() -> Path:
    value = _env("COVE_HUB_CACHE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")
    return Path(value).expanduser() if value else home() / "hub"


def token_path() -> Path:
    value = _env("COVE_TOKEN_PATH", "HF_TOKEN_PATH")
    return Path(value).expanduser() if value else home() / "token"


def offline() -> bool:
    value = _env("COVE_OFFLINE", "HF_HUB_OFFLINE")
    return value is not None and value.lower() in _TRUE


def progress_disabled() -> bool:
    value = _env("COVE_DISABLE_PROGRESS_BARS", "HF_HUB_DISABLE_PROGRESS_BARS")
    return value is not None and value.lower() in _TRUE


def get_token() -> str | None:
    """The token from COVE_TOKEN / HF_TOKEN, else the token file written by login()."""
    value = _env("COVE_TOKEN", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
    if value:
        return value.strip()
    try:
        return token_path().read_text().strip() or None
    except OSError:
        return None


def check_repo_type(repo_type: str | None) -> str:
    repo_type = repo_type or "model"
    if repo_type not in REPO_TYPES:
        raise ValueError(f"Invalid repo_type {repo_type!r}: use one of {', '.join(REPO_TYPES)}.")
    return repo_type
