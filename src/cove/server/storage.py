"""Object storage for LFS files, addressed by sha256.

A small interface so that S3-compatible storage can take the place of the local disk. Uploads
are written to a temporary object, hashed as they arrive and checked against the announced
sha256 and size before they are published: a partial or corrupt object is never visible.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import BinaryIO, Protocol

_OID = re.compile(r"^[0-9a-f]{64}$")


def is_oid(value: str) -> bool:
    return bool(_OID.match(value))


class UploadMismatch(ValueError):
    """The bytes received do not match the announced sha256 or size."""


class PendingObject(Protocol):
    def write(self, data: bytes) -> None: ...
    def commit(self) -> None: ...
    def abort(self) -> None: ...


class ObjectStore(Protocol):
    """Where LFS objects live. Implementations must publish objects atomically."""

    def size(self, oid: str) -> int | None:
        """The stored object's size, or None when it is not stored."""

    def local_path(self, oid: str) -> Path | None:
        """A path on local disk for zero-copy serving, when the store has one."""

    def open(self, oid: str) -> BinaryIO: ...

    def begin(self, oid: str, size: int) -> PendingObject:
        """Start receiving an object; nothing is visible until commit() verifies it."""

    def cleanup(self) -> None:
        """Drop leftovers of uploads interrupted by a crash."""


class _LocalPending:
    def __init__(self, store: LocalObjectStore, oid: str, size: int) -> None:
        self._store = store
        self._oid = oid
        self._size = size
        self._tmp = store.tmp_dir / f"{oid}.{uuid.uuid4().hex}"
        self._file = open(self._tmp, "wb")
        self._hash = hashlib.sha256()
        self._written = 0

    def write(self, data: bytes) -> None:
        self._written += len(data)
        if self._written > self._size:
            raise UploadMismatch(f"received more than the announced {self._size} bytes")
        self._hash.update(data)
        self._file.write(data)

    def commit(self) -> None:
        try:
            if self._written != self._size:
                raise UploadMismatch(
                    f"received {self._written} bytes, expected {self._size}"
                )
            digest = self._hash.hexdigest()
            if digest != self._oid:
                raise UploadMismatch(f"sha256 of the received bytes is {digest}, not {self._oid}")
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            final = self._store.path(self._oid)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._tmp, final)
            _fsync_dir(final.parent)  # the rename itself survives a power loss
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._tmp.unlink(missing_ok=True)


class LocalObjectStore:
    """LFS objects as files under `root/ab/cd/<oid>`; uploads staged in `root/tmp`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp_dir = self.root / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    def path(self, oid: str) -> Path:
        if not is_oid(oid):
            raise ValueError(f"not a sha256 object id: {oid!r}")
        return self.root / oid[:2] / oid[2:4] / oid

    def size(self, oid: str) -> int | None:
        try:
            return self.path(oid).stat().st_size
        except (FileNotFoundError, ValueError):
            return None

    def local_path(self, oid: str) -> Path | None:
        p = self.path(oid)
        return p if p.exists() else None

    def open(self, oid: str) -> BinaryIO:
        return open(self.path(oid), "rb")

    def begin(self, oid: str, size: int) -> _LocalPending:
        if not is_oid(oid):
            raise ValueError(f"not a sha256 object id: {oid!r}")
        return _LocalPending(self, oid, size)

    def cleanup(self) -> None:
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
