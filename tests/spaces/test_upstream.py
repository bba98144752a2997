"""The proxy's HTTP/1.1 client (server/spaces/upstream.py, over h11) against a scripted app on
loopback: each test's app reads requests and writes the raw answers the test gives it."""

from __future__ import annotations

import asyncio

import pytest

from cove.server.spaces.upstream import Pool, UpstreamError


class App:
    """A loopback server answering each request with the next of `answers`: raw bytes, or a
    list of pieces, where an asyncio.Event holds the rest back until it is set. It records
    the raw requests and its connections, and closes a connection after its answer when
    told to."""

    def __init__(self, answers: list, close_after: bool = False) -> None:
        self.answers = list(answers)
        self.close_after = close_after
        self.requests: list[bytes] = []
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> App:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.answers:
                head = await reader.readuntil(b"\r\n\r\n")
                body = b""
                lower = head.lower()
                if b"content-length:" in lower:
                    n = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
                    body = await reader.readexactly(n)
                elif b"transfer-encoding: chunked" in lower:
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                        chunk = await reader.readexactly(size + 2)
                        body += chunk[:-2]
                        if not size:
                            break
                self.requests.append(head + body)
                answer = self.answers.pop(0)
                for piece in answer if isinstance(answer, list) else [answer]:
                    if isinstance(piece, asyncio.Event):
                        await piece.wait()
                    else:
                        writer.write(piece)
                        await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


async def exchange(pool: Pool, port: int, method: str = "GET", **kwargs):
    """(status, headers, [(piece, last)...]) of one request."""
    ex = pool.exchange(port)
    try:
        status, headers = await ex.request(method, b"/x?q=1", [(b"host", b"app")], **kwargs)
        pieces = []
        while not pieces or not pieces[-1][1]:
            pieces.append(await ex.read())
        return status, headers, pieces
    finally:
        ex.close()


OK = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nhello"


def test_content_length_answer_and_keep_alive():
    async def main():
        pool = Pool()
        async with App([OK, OK]) as app:
            first = await exchange(pool, app.port)
            second = await exchange(pool, app.port, "POST", body=b'{"a": 1}')
        pool.close()
        assert first == (200, [(b"content-type", b"text/plain"), (b"content-length", b"5")],
                         [(b"hello", True)])
        assert second[2] == [(b"hello", True)]
        assert app.connections == 1  # the second request reused the first's connection
        assert app.requests[0].startswith(b"GET /x?q=1 HTTP/1.1\r\nhost: app\r\n")
        assert b"content-length" not in app.requests[0]  # no body, no framing
        assert app.requests[1].endswith(b'content-length: 8\r\n\r\n{"a": 1}')

    asyncio.run(main())


def test_chunked_answer_comes_piece_by_piece():
    async def main():
        pool = Pool()
        later = asyncio.Event()
        events = [b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                  b"transfer-encoding: chunked\r\n\r\n",
                  b"d\r\ndata: first\n\n\r\n", later, b"e\r\ndata: second\n\n\r\n",
                  b"0\r\n\r\n"]
        async with App([events]) as app:
            ex = pool.exchange(app.port)
            status, headers = await ex.request("GET", b"/events", [])
            # The first event comes while the app holds the second back.
            assert await ex.read() == (b"data: first\n\n", False)
            later.set()
            # The end may come with the second event, or after it, as the app's writes arrive.
            rest = [await ex.read()]
            while not rest[-1][1]:
                rest.append(await ex.read())
            assert rest[0][0] == b"data: second\n\n" and not any(p for p, _ in rest[1:])
            ex.close()
        pool.close()
        assert status == 200 and (b"transfer-encoding", b"chunked") in headers
        # HTTP/1.1 requires a Host; without one the request names the app's address.
        assert b"\r\nhost: 127.0.0.1:%d\r\n" % app.port in app.requests[0]

    asyncio.run(main())


def test_streamed_request_body_is_chunked_or_has_its_length():
    async def pieces():
        for piece in (b"ab", b"", b"cd"):
            yield piece

    async def main():
        pool = Pool()
        async with App([OK, OK]) as app:
            await exchange(pool, app.port, "PUT", body=b"01", rest=pieces())
            await exchange(pool, app.port, "PUT", body=b"01", rest=pieces(), length=6)
        pool.close()
        chunked, sized = app.requests
        assert b"transfer-encoding: chunked\r\n" in chunked and chunked.endswith(b"\r\n\r\n01abcd")
        assert sized.endswith(b"content-length: 6\r\n\r\n01abcd")

    asyncio.run(main())


def test_answers_without_body_and_until_close():
    async def main():
        pool = Pool()
        async with App([b"HTTP/1.1 204 No Content\r\n\r\n",
                        b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n",
                        b"HTTP/1.1 100 Continue\r\n\r\n"
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                        [b"HTTP/1.0 200 OK\r\n\r\nuntil close"]]) as app:
            assert (await exchange(pool, app.port))[::2] == (204, [(b"", True)])
            # HEAD: the length of what a GET would answer, and no body.
            head = await exchange(pool, app.port, "HEAD")
            assert head == (200, [(b"content-length", b"99")], [(b"", True)])
            assert (await exchange(pool, app.port))[::2] == (200, [(b"ok", True)])
            status, _, pieces = await exchange(pool, app.port)
        pool.close()
        assert b"".join(p for p, _ in pieces) == b"until close" and pieces[-1] == (b"", True)
        assert app.connections == 1

    asyncio.run(main())


def test_a_connection_the_app_closed_is_not_reused():
    async def main():
        pool = Pool()
        async with App([OK, OK], close_after=True) as app:
            await exchange(pool, app.port)
            await asyncio.sleep(0.1)  # the app's close has arrived: the idle one is dropped
            assert (await exchange(pool, app.port))[2] == [(b"hello", True)]
        pool.close()
        assert app.connections == 2

    asyncio.run(main())


def test_stale_kept_alive_connection_is_retried_once():
    async def main():
        pool = Pool()
        async with App([OK, OK], close_after=True) as app:
            await exchange(pool, app.port)
            # Taken before the app's close arrives, as when it times out at that moment.
            (conn,) = pool._idle[app.port]
            conn.reader.at_eof = lambda: False
            assert (await exchange(pool, app.port))[2] == [(b"hello", True)]
        pool.close()
        assert app.connections == 2 and len(app.requests) == 2

    asyncio.run(main())


def test_errors():
    async def main():
        pool = Pool()
        async with App([b"SSH-2.0-OpenSSH\r\n\r\n",
                        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"],
                       close_after=True) as app:
            with pytest.raises(UpstreamError, match="not valid HTTP/1.1: illegal status line"):
                await exchange(pool, app.port)
            with pytest.raises(UpstreamError, match="received 5 bytes, expected 10"):
                await exchange(pool, app.port)
            port = app.port
        with pytest.raises(UpstreamError, match="no connection"):
            await exchange(pool, port)
        pool.close()

    asyncio.run(main())


def test_abort_ends_a_pending_read():
    async def main():
        pool = Pool()
        never = [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n", asyncio.Event()]
        async with App([never]) as app:
            ex = pool.exchange(app.port)
            await ex.request("GET", b"/stream", [])
            reading = asyncio.create_task(ex.read())
            await asyncio.sleep(0.05)
            ex.abort()
            with pytest.raises(UpstreamError, match="given up"):
                await reading
            ex.close()
        pool.close()
        assert not pool._idle.get(app.port)

    asyncio.run(main())
