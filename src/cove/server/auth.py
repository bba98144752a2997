"""Web sign-in passwords: salted scrypt hashes in the `passwords` table.

The format is self-describing (`scrypt$n$r$p$salt$hash`, hex), so the cost can be raised
later without breaking stored hashes.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import select

from cove.server.db import Account, Password, utcnow
from cove.server.hub import Hub

# 16 MiB of memory per hash (128 * n * r): slow enough for guessing, quick for one sign-in.
_N, _R, _P = 2**14, 8, 1
MIN_LENGTH = 8


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r),
                             p=int(p), dklen=len(digest) // 2)
    except ValueError:
        return False
    return hmac.compare_digest(got.hex(), digest)


def check_strength(password: str) -> None:
    if len(password) < MIN_LENGTH:
        raise ValueError(f"A password has at least {MIN_LENGTH} characters.")


def set_password(hub: Hub, account_id: int, password: str) -> None:
    """Set (or replace) a user's password, after `check_strength`."""
    check_strength(password)
    with hub.session() as s:
        row = s.get(Password, account_id)
        if row is None:
            s.add(Password(account_id=account_id, hash=hash_password(password)))
        else:
            row.hash, row.updated_at = hash_password(password), utcnow()
        s.commit()


# Compared against when the user is unknown, so a miss costs as much time as a wrong password.
_DUMMY = hash_password(secrets.token_hex(8))


def authenticate(hub: Hub, name: str, password: str) -> int | None:
    """The id of the user `name` (or with that email) whose password this is, else None."""
    with hub.session() as s:
        row = s.execute(
            select(Account.id, Password.hash)
            .join(Password, Password.account_id == Account.id)
            .where(Account.type == "user", (Account.name == name) | (Account.email == name))
        ).first()
    if row is None:
        verify_password(password, _DUMMY)
        return None
    return row.id if verify_password(password, row.hash) else None
