"""Seekable read-only files over HTTP byte ranges, for streaming datasets without downloading.

`open_file(url)` answers `seek`/`tell`/`read` like a local file: Parquet readers jump to the
footer and to column chunks, CSV/JSON readers read straight through. Each miss fetches one
Range request of at least `block_size` bytes (the read-ahead), so sequential reads cost one
request per block, not one per read; while reads stay sequential the block doubles (up to
`MAX_BLOCK_SIZE`), so long scans pay the request latency rarely. Dropped connections, timeouts and 5xx answers are
retried with backoff, resuming at the first byte not yet received.
"""

from __future__ import annotations

import io
import os
import re
import threading
import time
from pathlib import Path
from typing import BinaryIO

import httpx

from cove.hub import http
from cove.hub.cache import normalize_etag

BLOCK_SIZE = 4 * 1024 * 1024
MAX_BLOCK_SIZE = 32 * 1024 * 1024
MAX_RETRIES = 5
RETRY_STATUSES = {429, 500, 502, 503, 504}
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")

_client: httpx.Client | None = None
_client_pid: int | None = None
_client_lock = threading.Lock()


def _http_client() -> httpx.Client:
    """A client of this process's own: a pool inherited through fork (DataLoader workers)
    would share its sockets with the parent, so a forked child builds a fresh one."""
    global _client, _client_pid
    with _client_lock:
        if _client is None or _client_pid != os.getpid():
            _client = httpx.Client(
                timeout=httpx.Timeout(30.0, connect=10.0),
                headers={"user-agent": http.USER_AGENT, "accept-encoding": "identity"},
                follow_redirects=True,
            )
            _client_pid = os.getpid()
        return _client


def _backoff(attempt: int) -> None:
    time.sleep(min(0.1 * 2**attempt, 4.0))


class HTTPFile(io.RawIOBase):
    """A read-only, seekable view of a remote file, fetched by HTTP Range requests."""

    def __init__(self, url: str, *, token: str | bool | None = None,
                 block_size: int = BLOCK_SIZE, max_retries: int = MAX_RETRIES) -> None:
        super().__init__()
        self.url = url
        self.name = url
        self.block_size = block_size
        self._next_block = block_size  # grows while the reads are sequential
        self.max_retries = max_retries
        self._headers = http.auth_headers(token)
        self._pos = 0
        self._buf = b""
        self._buf_start = 0
        self._lock = threading.Lock()  # pyarrow may read from its own threads
        self.size, self._etag = self._head()

    def _head(self) -> tuple[int, str | None]:
        for attempt in range(self.max_retries + 1):
            http.check_online()
            try:
                r = _http_client().head(self.url, headers=self._headers)
            except httpx.TransportError:
                if attempt == self.max_retries:
                    raise
                _backoff(attempt)
                continue
            if r.status_code in RETRY_STATUSES and attempt < self.max_retries:
                _backoff(attempt)
                continue
            break
        if r.status_code >= 400:
            http.raise_for_status(r)
        # A Hub answers a HEAD on an LFS file with the linked size; a plain server with its length.
        size = r.headers.get("x-linked-size") or r.headers.get("content-length")
        if size is None:
            raise OSError(f"The server did not send the size of {self.url} (no Content-Length "
                          "in its answer to HEAD): it cannot be streamed by byte ranges.")
        etag = r.headers.get("x-linked-etag") or r.headers.get("etag")
        return int(size), normalize_etag(etag) if etag else None

    # io.RawIOBase interface
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        if pos < 0:
            raise OSError(f"Negative seek position {pos} in {self.url}")
        self._pos = pos
        return pos

    def readinto(self, b) -> int:
        with self._lock:
            if self.closed:
                raise ValueError(f"I/O operation on closed file {self.url}")
            view = memoryview(b).cast("B")
            want = min(len(view), max(self.size - self._pos, 0))
            if want == 0:
                return 0
            done = 0
            while done < want:
                offset = self._pos - self._buf_start
                if 0 <= offset < len(self._buf):  # what the read-ahead already holds
                    n = min(want - done, len(self._buf) - offset)
                    view[done:done + n] = self._buf[offset:offset + n]
                    done += n
                    self._pos += n
                    continue
                sequential = bool(self._buf) and offset == len(self._buf)
                self._next_block = (min(self._next_block * 2, max(MAX_BLOCK_SIZE, self.block_size))
                                    if sequential else self.block_size)
                self._buf = self._fetch(self._pos, max(want - done, self._next_block))
                self._buf_start = self._pos
            return done

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = max(self.size - self._pos, 0)
        out = bytearray(size)
        n = self.readinto(out)
        return bytes(out[:n])

    def readall(self) -> bytes:
        return self.read(-1)

    # fetching
    def _fetch(self, start: int, length: int) -> bytes:
        """Bytes [start, start+length) clipped to the file, whatever the network does."""
        end = min(start + length, self.size)  # exclusive
        got = bytearray()
        failures = 0
        while start + len(got) < end:
            at = start + len(got)
            try:
                self._get_range(at, end, got)
                continue
            except (httpx.TransportError, _RetryableStatus) as e:
                failures += 1
                if failures > self.max_retries:
                    raise OSError(
                        f"Reading bytes {at}-{end - 1} of {self.url} failed after "
                        f"{self.max_retries} retries: {e}") from e
                _backoff(failures)
        return bytes(got)

    def _get_range(self, at: int, end: int, got: bytearray) -> None:
        """Append bytes [at, end) to `got`: as many as arrive before the connection ends."""
        http.check_online()
        headers = {**self._headers, "range": f"bytes={at}-{end - 1}"}
        with _http_client().stream("GET", self.url, headers=headers) as r:
            if r.status_code in RETRY_STATUSES:
                raise _RetryableStatus(f"{r.status_code} {r.reason_phrase}")
            if r.status_code >= 400:
                r.read()
                http.raise_for_status(r)
            self._check_range(r, at, end)
            left = end - at
            for chunk in r.iter_raw():
                got += chunk[:left]
                left -= len(chunk)
                if left <= 0:
                    break
            if left > 0:  # closed early without an error: resume from what arrived
                raise httpx.RemoteProtocolError(f"the body ended {left} bytes early")

    def _check_range(self, r: httpx.Response, at: int, end: int) -> None:
        encoding = r.headers.get("content-encoding", "identity").lower()
        if encoding != "identity":
            raise OSError(f"The server sent {self.url} with Content-Encoding {encoding!r}: byte "
                          "ranges of a compressed body cannot be read as the file's bytes.")
        if r.status_code == 200 and at == 0 and end == self.size:
            return  # the whole file was asked for: a full answer is the right one
        match = _CONTENT_RANGE.fullmatch(r.headers.get("content-range", "").strip())
        if r.status_code != 206 or match is None:
            raise OSError(
                f"The server does not support HTTP Range requests for {self.url}: asked for "
                f"bytes {at}-{end - 1}, it answered {r.status_code} without a matching "
                "Content-Range. Streaming needs byte ranges; download the file instead "
                "(streaming=False).")
        first, total = int(match.group(1)), match.group(3)
        if first != at or (total != "*" and int(total) != self.size):
            raise OSError(f"The server answered bytes {match.group(0)!r} of {self.url} when "
                          f"asked for {at}-{end - 1} of {self.size}: did the file change?")
        etag = r.headers.get("x-linked-etag") or r.headers.get("etag")
        if self._etag and etag and normalize_etag(etag) != self._etag:
            raise OSError(f"{self.url} changed on the server while it was being read "
                          f"(ETag {self._etag} became {normalize_etag(etag)}).")


class _RetryableStatus(Exception):
    """A 429 or 5xx answer: worth another try."""


def is_remote(path: str) -> bool:
    return path.startswith(("http://", "https://"))


def open_file(path_or_url: str | os.PathLike, *, token: str | bool | None = None,
              block_size: int = BLOCK_SIZE) -> BinaryIO:
    """A seekable read-only binary file: `open(path, "rb")` locally, byte ranges for http(s)."""
    path = os.fspath(path_or_url)
    if is_remote(path):
        return io.BufferedReader(HTTPFile(path, token=token, block_size=block_size),
                                 buffer_size=64 * 1024)
    if path.startswith("file://"):
        path = path[len("file://"):]
    if not Path(path).is_file():
        raise FileNotFoundError(f"No such file: {path!r}")
    return open(path, "rb")
