"""The proxy's HTTP/1.1 client to the Space apps, which listen on loopback ports.

Connections are kept alive per port. A request goes out in one write (its head, and its body
when that arrived whole); the answer's body comes back piece by piece as the app sends it, so
server-sent events pass at once. h11 does the protocol (framing, parsing, keep-alive state);
this module moves its bytes over asyncio streams. httpx did all of it before: its request and
response objects, URL and header models cost more per proxied request than the forwarding
itself (issue 18). WebSockets do not come here: the proxy relays them with `websockets`.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator

import h11

CONNECT_TIMEOUT = 5.0  # seconds; reads have no timeout: event streams stay open
IDLE_PER_PORT = 32  # kept-alive connections per app; more are closed after use
HEAD_LIMIT = 1 << 20  # bytes of an answer's status line and headers
PIECE = 1 << 16  # bytes read from the socket at a time


class UpstreamError(Exception):
    """The app refused the connection, closed it early or answered no valid HTTP/1.1."""


class _Stale(UpstreamError):
    """A kept-alive connection the app had closed before it answered the request."""


class _Connection:
    __slots__ = ("reader", "writer", "h11")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=HEAD_LIMIT)

    def usable(self) -> bool:
        return (self.h11.our_state is h11.IDLE and not self.reader.at_eof()
                and not self.writer.is_closing())

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
                asyncio.open_connection("127.0.0.1", port), CONNECT_TIMEOUT)
        except asyncio.TimeoutError:
            raise UpstreamError(f"no connection to port {port} within {CONNECT_TIMEOUT:g} s")\
                from None
        except OSError as e:
            raise UpstreamError(f"no connection to port {port}: {e}") from None
        return _Connection(reader, writer), False

    def _release(self, port: int, conn: _Connection) -> None:
        """Keep `conn` for the next request to `port` if both sides may go on with it."""
        if conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
            conn.h11.start_next_cycle()
            idle = self._idle.setdefault(port, collections.deque())
            if len(idle) < IDLE_PER_PORT and conn.usable():
                idle.append(conn)
                return
        conn.close()

    def forget(self, port: int) -> None:
        """Close the idle connections to `port` (its app stopped)."""
        for conn in self._idle.pop(port, ()):
            conn.close()

    def close(self) -> None:
        for port in list(self._idle):
            self.forget(port)


class Exchange:
    """One request to an app and its answer: `request`, then `read` until it says last;
    `abort` (from any task) ends it early, `close` after it is done or given up."""

    def __init__(self, pool: Pool, port: int) -> None:
        self.pool, self.port = pool, port
        self._conn: _Connection | None = None
        self.aborted = False  # given up by `abort`
        self._next: h11.Data | h11.EndOfMessage | None = None  # an event read ahead

    async def request(self, method: str, target: bytes, headers: list[tuple[bytes, bytes]],
                      body: bytes = b"", rest: AsyncIterator[bytes] | None = None,
                      length: int | None = None) -> tuple[int, list[tuple[bytes, bytes]]]:
        """Send the request (`body`, then the pieces of `rest` if the body is still arriving,
        `length` bytes in all when known) and answer the status and headers (lowercase
        names) of the app's answer. `headers` must not hold the body's framing; a missing
        Host is the app's address."""
        headers = list(headers)
        if not any(name.lower() == b"host" for name, _ in headers):
            headers.append((b"host", b"127.0.0.1:%d" % self.port))  # HTTP/1.1 requires one
        if rest is None:
            if body or length is not None:
                headers.append((b"content-length", b"%d" % len(body)))
        elif length is not None:
            headers.append((b"content-length", b"%d" % length))
        else:
            headers.append((b"transfer-encoding", b"chunked"))
        try:
            head = h11.Request(method=method, target=target, headers=headers)
        except h11.LocalProtocolError as e:
            raise UpstreamError(f"the request cannot be sent: {e}") from None
        conn, reused = await self.pool._connect(self.port)
        while True:
            if self.aborted:
                conn.close()
                raise UpstreamError("the request was given up")
            self._conn = conn
            try:
                return await self._send(conn, head, body, rest)
            except _Stale:
                self._drop()
                # Once more on a new connection, unless the body was streamed (it is gone).
                if not reused or rest is not None:
                    raise
            except BaseException as e:
                self._drop()
                raise self._error(e) from None
            conn, reused = await self.pool._connect(self.port, fresh=True)

    async def _send(self, conn: _Connection, head: h11.Request, body: bytes,
                    rest: AsyncIterator[bytes] | None) -> tuple[int, list[tuple[bytes, bytes]]]:
        protocol, writer = conn.h11, conn.writer
        data = protocol.send(head)
        if body:
            data += protocol.send(h11.Data(data=body))
        if rest is None:
            data += protocol.send(h11.EndOfMessage())
        try:
            writer.write(data)
            await writer.drain()
        except (ConnectionResetError, BrokenPipeError):
            raise _Stale("the app closed the connection") from None
        if rest is not None:
            async for piece in rest:
                if piece:
                    writer.write(protocol.send(h11.Data(data=piece)))
                    await writer.drain()
            writer.write(protocol.send(h11.EndOfMessage()))
            await writer.drain()
        while True:
            event = await self._event(conn, answered=False)
            # Interim answers (100 Continue, 103 Early Hints) are skipped. No 101 comes: the
            # proxy never forwards Upgrade (WebSockets are relayed apart).
            if isinstance(event, h11.Response):
                return event.status_code, list(event.headers)

    async def _event(self, conn: _Connection, answered: bool = True) -> h11.Event:
        """The next event of the app's answer, read from the socket as needed; before the
        answer began (not `answered`), a close with nothing received means a stale
        connection."""
        protocol = conn.h11
        while True:
            event = protocol.next_event()
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await conn.reader.read(PIECE)
            except ConnectionResetError:
                data = b""
            if not data and not answered and not protocol.trailing_data[0]:
                raise _Stale("the app closed the connection without an answer")
            protocol.receive_data(data)

    async def read(self) -> tuple[bytes, bool]:
        """The next piece of the answer's body, and whether it is the last one (which may be
        empty); the connection goes back to the pool after the last."""
        conn = self._conn
        if conn is None:
            raise UpstreamError("the request was given up" if self.aborted else "no request")
        try:
            event, self._next = self._next or await self._event(conn), None
            if isinstance(event, h11.Data):
                # Whatever the app sent is passed on now; only an end already in the buffer
                # is looked for, so that a body's last piece says it is the last.
                after = conn.h11.next_event()
                if isinstance(after, h11.EndOfMessage):
                    self._done()
                    return bytes(event.data), True
                if after is not h11.NEED_DATA:
                    self._next = after
                return bytes(event.data), False
            if isinstance(event, h11.EndOfMessage):
                self._done()
                return b"", True
            raise UpstreamError(f"the app's answer went on with {type(event).__name__}")
        except BaseException as e:
            self._drop()
            raise self._error(e) from None

    def _error(self, e: BaseException) -> BaseException:
        """What a failed `request` or `read` raises for `e`."""
        if self.aborted and isinstance(e, Exception):
            return UpstreamError("the request was given up")
        if isinstance(e, UpstreamError) or not isinstance(e, Exception):
            return e  # ours, or a cancellation
        if isinstance(e, h11.RemoteProtocolError):
            return UpstreamError(f"the app's answer is not valid HTTP/1.1: {e}")
        if isinstance(e, h11.LocalProtocolError):
            return UpstreamError(f"the request cannot be sent: {e}")
        if isinstance(e, OSError):
            return UpstreamError(str(e) or type(e).__name__)
        return e

    def _done(self) -> None:
        conn, self._conn = self._conn, None
        if self.aborted:
            conn.close()
        else:
            self.pool._release(self.port, conn)

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
