"""Logging in: check a token with the Hub, keep it in the token file (mode 0600), forget it.

The token file is the one huggingface_hub uses (`<home>/token`), so either library's login
serves both.
"""

from __future__ import annotations

import getpass
import os
import sys
import tempfile
import warnings

from cove.hub import config, http
from cove.hub.errors import LocalTokenNotFoundError

_TOKEN_VARIABLES = ("COVE_TOKEN", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def whoami(token: str | None = None, *, endpoint: str | None = None) -> dict:
    """The account behind `token` (default: the configured one), as `/api/whoami-v2` says."""
    token = token or config.get_token()
    if not token:
        raise LocalTokenNotFoundError(
            "No token: run `cove login`, call cove.hub.login(), or set COVE_TOKEN / HF_TOKEN."
        )
    base = (endpoint or config.endpoint()).rstrip("/")
    r = http.request("GET", f"{base}/api/whoami-v2", token=token)
    http.raise_for_status(r)
    return r.json()


def login(token: str | None = None, *, endpoint: str | None = None) -> None:
    """Check `token` with the Hub, then save it to the token file (asks for it when omitted)."""
    if token is None:
        if not sys.stdin.isatty():
            raise ValueError("login() needs a token: pass token=..., or run it in a terminal "
                             "to be asked for one.")
        token = getpass.getpass("Token (input hidden): ")
    token = token.strip()
    if not token:
        raise ValueError("The token is empty.")
    info = whoami(token, endpoint=endpoint)  # never save a token the Hub refuses
    path = config.token_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp creates the file with mode 0600 before anything is written to it.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(token)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    role = (info.get("auth") or {}).get("accessToken", {}).get("role")
    print(f"Logged in as {info.get('name')}{f' ({role} token)' if role else ''}; "
          f"token saved to {path}.")
    _warn_if_variable_wins("login")


def logout() -> None:
    """Remove the saved token file."""
    path = config.token_path()
    try:
        path.unlink()
    except FileNotFoundError:
        print(f"Not logged in: there is no token file at {path}.")
    else:
        print(f"Logged out: removed {path}.")
    _warn_if_variable_wins("logout")


def _warn_if_variable_wins(action: str) -> None:
    names = [n for n in _TOKEN_VARIABLES if os.environ.get(n)]
    if names:
        warnings.warn(
            f"{names[0]} is set and takes precedence over the token file, so this {action} does "
            f"not change which token is used: unset {names[0]} for it to apply.",
            stacklevel=3,
        )
