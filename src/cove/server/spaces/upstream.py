"""The proxy's HTTP/1.1 client to the Space apps, which listen on loopback ports.

Connections are kept alive per port. A request goes out in one write (its head, and its body
when that arrived whole); the answer's body comes back piece by piece as the app sends it, so
server-sent events pass at once. httpx did this before: its request and response objects, URL
and header models cost more per proxied request than the forwarding itself (issue 18), and
the apps are local HTTP/1.1 servers, so a small client for that one case does.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator

CONNECT_TIMEOUT = 5.0  # seconds; reads have no timeout: event streams stay open
IDLE_PER_PORT = 32  # kept-alive connections per app; more are closed after use
HEAD_LIMIT = 1 << 20  # bytes of an answer's status line and headers
PIECE = 1 << 16  # bytes read at a time from a body of known length


class UpstreamError(Exception):
    """The app refused the connection, closed it early or answered no valid HTTP/1.1."""


class _Stale(UpstreamError):
    """A kept-alive connection the app had closed before it read the request."""


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def usable(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        self.writer.transport.abort()  # at once: nothing of ours is left to send


class Pool:
    """Kept-alive connections to the apps, by port; `exchange(port)` makes one request."""

    def __init__(self) -> None:
        self._idle: dict[int, collections.deque[_Connection]] = {}

    def exchange(self, port: int) -> Exchange:
        return Exchange(self, port)

    async def _connect(self, port: int, fresh: bool = False) -> tuple[_Connection, bool]:
        """A connection to `port` (a new one if `fresh`) and whether it was kept alive from
        an earlier request."""
        idle = None if fresh else self._idle.get(port)
        while idle:
            conn = idle.pop()  # the newest: the least likely to have timed out at the app
            if conn.usable():
                return conn, True
            conn.close()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, limit=HEAD_LIMIT), CONNECT_TIMEOUT)
        except asyncio.TimeoutError:
            raise UpstreamError(f"no connection to port {port} within {CONNECT_TIMEOUT:g} s")\
                from None
        except OSError as e:
            raise UpstreamError(f"no connection to port {port}: {e}") from None
        return _Connection(reader, writer), False

    def _release(self, port: int, conn: _Connection) -> None:
        idle = self._idle.setdefault(port, collections.deque())
        if len(idle) < IDLE_PER_PORT and conn.usable():
            idle.append(conn)
        else:
            conn.close()

    def forget(self, port: int) -> None:
        """Close the idle connections to `port` (its app stopped)."""
        for conn in self._idle.pop(port, ()):
            conn.close()

    def close(self) -> None:
        for port in list(self._idle):
            self.forget(port)


# How an answer's body is delimited.
_NONE, _LENGTH, _CHUNKED, _UNTIL_CLOSE = range(4)


class Exchange:
    """One request to an app and its answer: `request`, then `read` until it says last;
    `abort` (from any task) ends it early, `close` after it is done or given up."""

    def __init__(self, pool: Pool, port: int) -> None:
        self.pool, self.port = pool, port
        self._conn: _Connection | None = None
        self.aborted = False  # given up by `abort`
        self._framing = _NONE
        self._left = 0
        self._keep = False

    async def request(self, method: str, target: bytes, headers: list[tuple[bytes, bytes]],
                      body: bytes = b"", rest: AsyncIterator[bytes] | None = None,
                      length: int | None = None) -> tuple[int, list[tuple[bytes, bytes]]]:
        """Send the request (`body`, then the pieces of `rest` if the body is still arriving,
        `length` bytes in all when known) and answer the status and headers (lowercase
        names) of the app's answer. `headers` must not hold the body's framing."""
        head = [b"%s %s HTTP/1.1\r\n" % (method.encode("ascii"), target)]
        for name, value in headers:
            head += (name, b": ", value, b"\r\n")
        if rest is None:
            if body or length is not None:
                head.append(b"content-length: %d\r\n" % len(body))
        elif length is not None:
            head.append(b"content-length: %d\r\n" % length)
        else:
            head.append(b"transfer-encoding: chunked\r\n")
        head.append(b"\r\n")
        chunked = rest is not None and length is None
        if chunked and body:
            head += (b"%x\r\n" % len(body), body, b"\r\n")
        elif body:
            head.append(body)
        data = b"".join(head)
        conn, reused = await self.pool._connect(self.port)
        while True:
            if self.aborted:
                conn.close()
                raise UpstreamError("the request was given up")
            self._conn = conn
            try:
                return await self._send(method, conn, data, rest, chunked)
            except _Stale:
                self._drop()
                # Once more on a new connection, unless the body was streamed (it is gone).
                if not reused or rest is not None:
                    raise
            except UpstreamError:
                self._drop()
                raise
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    ValueError) as e:
                self._drop()
                raise UpstreamError(str(e) or type(e).__name__) from None
            conn, reused = await self.pool._connect(self.port, fresh=True)

    async def _send(self, method: str, conn: _Connection, data: bytes,
                    rest: AsyncIterator[bytes] | None,
                    chunked: bool) -> tuple[int, list[tuple[bytes, bytes]]]:
        writer, reader = conn.writer, conn.reader
        try:
            writer.write(data)
            await writer.drain()
        except (ConnectionResetError, BrokenPipeError):
            raise _Stale("the app closed the connection") from None
        if rest is not None:
            async for piece in rest:
                if piece:
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                    await writer.drain()
            if chunked:
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        while True:
            try:
                block = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as e:
                if not e.partial:
                    raise _Stale("the app closed the connection without an answer") from None
                raise
            lines = block.split(b"\r\n")
            version, _, status_text = lines[0].partition(b" ")
            if not version.startswith(b"HTTP/1.") or len(status_text) < 3:
                raise UpstreamError(f"not an HTTP/1 answer: {lines[0][:80]!r}")
            status = int(status_text[:3])
            if status >= 200 or status == 101:
                break  # 1xx: interim answers (100 Continue, 103 Early Hints) are skipped
        headers = []
        length = None
        chunked_answer = False
        close = version != b"HTTP/1.1"
        for line in lines[1:-2]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise UpstreamError(f"a header line without a colon: {line[:80]!r}")
            name, value = name.strip().lower(), value.strip()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked_answer = value.lower().rsplit(b",", 1)[-1].strip() == b"chunked"
            elif name == b"connection":
                close = close or b"close" in value.lower()
            headers.append((name, value))
        if method == "HEAD" or status in (101, 204, 304):
            self._framing = _NONE
        elif chunked_answer:
            self._framing = _CHUNKED
        elif length is not None:
            self._framing, self._left = _LENGTH, length
        else:
            self._framing, close = _UNTIL_CLOSE, True
        self._keep = not close
        return status, headers

    async def read(self) -> tuple[bytes, bool]:
        """The next piece of the answer's body, and whether it is the last one (which may be
        empty); the connection goes back to the pool after the last."""
        conn = self._conn
        if conn is None:
            raise UpstreamError("the request was given up" if self.aborted else "no request")
        reader = conn.reader
        try:
            if self._framing == _LENGTH and self._left:
                data = await reader.read(min(self._left, PIECE))
                if not data:
                    raise UpstreamError(f"the app closed its answer {self._left} bytes short")
                self._left -= len(data)
                if self._left:
                    return data, False
                self._done()
                return data, True
            if self._framing == _CHUNKED:
                line = await reader.readuntil(b"\r\n")
                size = int(line.split(b";", 1)[0], 16)
                if size:
                    data = await reader.readexactly(size + 2)
                    if data[-2:] != b"\r\n":
                        raise UpstreamError("a chunk of the answer is not terminated")
                    return data[:-2], False
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers, not relayed
                self._done()
                return b"", True
            if self._framing == _UNTIL_CLOSE:
                data = await reader.read(PIECE)
                if data:
                    return data, False
            self._done()
            return b"", True
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ValueError) as e:
            self._drop()
            raise UpstreamError("the request was given up" if self.aborted
                                else str(e) or type(e).__name__) from None
        except UpstreamError:
            self._drop()
            raise

    def _done(self) -> None:
        conn, self._conn = self._conn, None
        if self._keep and not self.aborted:
            self.pool._release(self.port, conn)
        else:
            conn.close()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def abort(self) -> None:
        """Give the exchange up (the visitor went away): a pending `request` or `read` fails."""
        self.aborted = True
        self._drop()

    def close(self) -> None:
        """End the exchange: a connection still reading an answer is closed."""
        self._drop()
