"""CAS access tokens: a repository, an operation (read or write) and an expiry, signed.

Form: `{repo row id}.{op}.{exp}.{hmac}`, the HMAC-SHA256 under the server's secret of those
three with a domain prefix (so no other signature of the server can pass for one). Tokens
are short-lived; the clients fetch a new one from the Hub before `exp`.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass

TOKEN_TTL = 900  # seconds
OPS = ("read", "write")


@dataclass(frozen=True)
class Claims:
    repo_id: int
    op: str
    exp: int

    def allows(self, op: str) -> bool:
        return self.op == "write" or op == "read"


def _sign(secret: bytes, repo_id: int, op: str, exp: int) -> str:
    return hmac.new(secret, f"xet-token:{repo_id}:{op}:{exp}".encode(), hashlib.sha256).hexdigest()


def issue(secret: bytes, repo_id: int, op: str, ttl: int = TOKEN_TTL) -> tuple[str, int]:
    """A token for `op` on the repository row `repo_id`, and its expiry (epoch seconds)."""
    exp = int(time.time()) + ttl
    return f"{repo_id}.{op}.{exp}.{_sign(secret, repo_id, op, exp)}", exp


def verify(secret: bytes, token: str) -> Claims | None:
    """The claims of a valid, unexpired token; None otherwise."""
    parts = token.split(".")
    if len(parts) != 4 or parts[1] not in OPS or not parts[0].isdigit() or not parts[2].isdigit():
        return None
    repo_id, op, exp = int(parts[0]), parts[1], int(parts[2])
    expected = _sign(secret, repo_id, op, exp)
    if not hmac.compare_digest(expected.encode(), parts[3].encode("utf-8", "replace")):
        return None
    if exp < time.time():
        return None
    return Claims(repo_id, op, exp)


def sign_range(secret: bytes, xorb: str, start: int, end: int, exp: int) -> str:
    """The signature of a presigned URL to bytes [start, end] of a xorb."""
    message = f"xet-range:{xorb}:{start}:{end}:{exp}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()
