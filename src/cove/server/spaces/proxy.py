"""The reverse proxy: a Space's app under the Hub's origin at `/spaces/{owner}/{name}/app/`.

HTTP responses are streamed (server-sent events pass as they come), WebSockets are relayed
both ways. The Hub's own credentials (its session cookie, the Authorization header) never
reach a Space, and a Space cannot set the Hub's session cookie.

`SpacesProxy` is ASGI middleware ahead of the Hub's routes: a proxied request skips FastAPI's
routing, dependency injection and response classes, and the Space's row comes from the
manager's cache, so what the proxy adds to an app's answer stays small (issue 18: <= 5 ms
for a Gradio API call, two requests; `bench/spaces.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import mimetypes
import posixpath
import re

import websockets
from starlette.requests import HTTPConnection
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from cove.server import errors
from cove.server.db import Repository
from cove.server.deps import SESSION_COOKIE, hub_of, principal, session_of
from cove.server.hub import Principal
from cove.server.spaces.manager import SpaceManager
from cove.server.spaces.upstream import UpstreamError

# Headers that belong to one connection, never forwarded (RFC 9110 7.6.1), and the Hub's
# own credentials.
HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
              b"te", b"trailer", b"trailers", b"transfer-encoding", b"upgrade", b"host",
              b"authorization", b"proxy-connection"}
# Also not passed on to the app: the body's length (the upstream client frames the body) and
# the forwarding headers, which the proxy sets itself.
_NOT_FORWARDED = HOP_BY_HOP | {b"content-length", b"x-forwarded-for", b"x-forwarded-proto",
                               b"x-forwarded-host", b"x-forwarded-prefix"}
# Not passed back: the Hub's server answers with its own Date and Server headers (uvicorn
# adds them to every response), and two of each would be invalid.
_NOT_RETURNED = HOP_BY_HOP | {b"date", b"server"}
_SESSION_COOKIE = SESSION_COOKIE.encode()
WAKE_TIMEOUT = 60.0  # seconds a visit waits for a sleeping or building Space
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
# The app's prefix and what follows it, on the routed path (where %2F is NUL: `routing`).
_APP_PATH = re.compile(r"/spaces/([^/]+)/([^/]+)/app(/.*)?", re.DOTALL)


class SpacesProxy:
    """ASGI middleware: HTTP and WebSocket requests under a Space's app prefix go to the app,
    everything else to the Hub's routes (`app`)."""

    def __init__(self, app: ASGIApp, manager: SpaceManager) -> None:
        self.app = app
        self.manager = manager

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = None
        if scope["type"] in ("http", "websocket"):
            match = _APP_PATH.fullmatch(scope["path"])
        if match is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await _websocket(self.manager, WebSocket(scope, receive, send), *match.groups())
        else:
            try:
                await _http(self.manager, scope, receive, send, *match.groups())
            except errors.HubError as e:
                await errors.error_response(e)(scope, receive, send)


def _visitor(request: HTTPConnection) -> Principal | None:
    """The caller: a bearer token, else the pages' signed-in session."""
    if request.headers.get("authorization"):
        return principal(request)
    session = session_of(request)
    if "uid" in session:
        return hub_of(request).principal_for_account(session["uid"])
    return None


def _find(manager: SpaceManager, scope: Scope, owner: str, name: str) -> Repository:
    """The Space, if the caller may see it; the caller is looked up for private Spaces only."""
    return manager.find(owner, name, lambda: _visitor(HTTPConnection(scope)))


async def _http(manager: SpaceManager, scope: Scope, receive: Receive, send: Send, owner: str,
                name: str, path: str | None) -> None:
    """One HTTP request under the app's prefix (`path` follows it), relayed to the app."""
    method = scope["method"]
    if method not in METHODS:
        raise errors.HubError(405, "MethodNotAllowed", "Method Not Allowed",
                              headers={"Allow": ", ".join(METHODS)})
    repo = _find(manager, scope, owner, name)
    prefix = manager.app_prefix(repo)
    if path is None:  # the app's root is its prefix with a slash, as relative links need it
        query = scope["query_string"].decode("latin-1")
        await RedirectResponse(f"{prefix}/" + (f"?{query}" if query else ""),
                               status_code=307)(scope, receive, send)
        return
    upstream = manager.upstream(repo)
    if upstream is None:  # asleep, starting, in trouble, or a static Space
        if (await _settled(manager, repo))["sdk"] == "static":
            await (await _static(manager, repo, path[1:]))(scope, receive, send)
            return
        upstream = manager.upstream(repo)
        if upstream is None:  # stopped meanwhile (a push, a pause)
            raise errors.HubError(503, "SpaceNotReady", f"{repo.repo_id} is restarting.",
                                  headers={"Retry-After": "5"})
    port, keep_prefix = upstream
    # The path as the browser sent it (encoded characters kept), without the prefix unless
    # the app serves under it (Streamlit). The routed path matched, so the raw one has the
    # prefix's four slashes.
    raw = (scope.get("raw_path") or scope["path"].encode()).split(b"?", 1)[0]
    target = raw if keep_prefix else b"/" + raw.split(b"/", 5)[5]
    if scope["query_string"]:
        target += b"?" + scope["query_string"]
    headers, length = _forward_headers(scope, prefix)
    body, rest = b"", None
    if method not in ("GET", "HEAD"):
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body = message.get("body", b"")
        if message.get("more_body"):
            rest = _body_rest(receive)
    exchange = manager.upstreams.exchange(port)

    async def watch() -> None:  # the visitor may leave while the app thinks or streams
        while (await receive())["type"] != "http.disconnect":
            pass
        exchange.abort()

    # receive() is the body's until it is read; with the body whole, watch from now on.
    watcher = asyncio.create_task(watch()) if rest is None else None
    end_visit = manager.begin_visit(repo)
    try:
        try:
            status, answer_headers = await exchange.request(method, target, headers, body,
                                                            rest, length)
        except UpstreamError as e:
            if exchange.aborted:
                return
            raise errors.HubError(502, "SpaceUnreachable",
                                  f"The Space {repo.repo_id} did not answer: {e}") from None
        except _VisitorLeft:
            return
        if watcher is None:
            watcher = asyncio.create_task(watch())
        await send({"type": "http.response.start", "status": status,
                    "headers": _response_headers(answer_headers, port, prefix, status)})
        last = False
        while not last:
            try:
                data, last = await exchange.read()
            except UpstreamError:
                if exchange.aborted:
                    return
                raise
            await send({"type": "http.response.body", "body": data, "more_body": not last})
    finally:
        if watcher is not None:
            watcher.cancel()
        exchange.close()
        end_visit()


class _VisitorLeft(Exception):
    """The visitor went away while sending the request's body."""


async def _body_rest(receive: Receive):
    """The request body's pieces after the first, as they arrive."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _VisitorLeft
        yield message.get("body", b"")
        if not message.get("more_body"):
            return


def _forward_headers(scope: Scope, prefix: str) -> tuple[list[tuple[bytes, bytes]], int | None]:
    """The request's headers for the app, and the body's length when the visitor gave it."""
    raw = scope["headers"]
    connection = set()
    for key, value in raw:
        if key == b"connection":
            connection.update(t.strip().lower() for t in value.split(b","))
    out = []
    host = b""
    length = None
    for key, value in raw:  # names are lowercase in ASGI
        if key in _NOT_FORWARDED or key in connection or key.startswith(b"sec-websocket"):
            if key == b"host":
                host = value
            elif key == b"content-length":
                length = int(value)
            continue
        if key == b"cookie" and _SESSION_COOKIE in value:
            value = _without_hub_cookie(value)
            if not value:
                continue
        out.append((key, value))
    client = scope.get("client")
    out += ((b"x-forwarded-for", client[0].encode("latin-1") if client else b""),
            (b"x-forwarded-proto", b"https" if scope["scheme"] in ("https", "wss") else b"http"),
            (b"x-forwarded-host", host), (b"x-forwarded-prefix", prefix.encode("latin-1")),
            (b"host", host))
    return out, length


def _without_hub_cookie(header: bytes) -> bytes:
    parts = [p.strip() for p in header.split(b";")]
    return b"; ".join(p for p in parts if p and p.split(b"=", 1)[0].strip() != _SESSION_COOKIE)


def _response_headers(headers: list[tuple[bytes, bytes]], port: int, prefix: str,
                      status: int) -> list[tuple[bytes, bytes]]:
    """The app's headers for the visitor, repeated ones (Set-Cookie) kept."""
    connection = set()
    for key, value in headers:
        if key == b"connection":
            connection.update(t.strip().lower() for t in value.split(b","))
    out = []
    for key, value in headers:
        if key in _NOT_RETURNED or key in connection:
            continue
        if key == b"content-length" and status in (204, 304):
            continue  # no body follows; the server would wait for one of this length
        if key == b"set-cookie" and _cookie_name(value) == _SESSION_COOKIE:
            continue  # a Space must not sign anyone in or out of the Hub
        if key == b"location":
            for origin in (b"http://127.0.0.1:%d" % port, b"http://localhost:%d" % port):
                if value.startswith(origin):
                    value = prefix.encode("latin-1") + value[len(origin):]
        out.append((key, value))
    return out


def _cookie_name(set_cookie: bytes) -> bytes:
    """The name a browser reads from a Set-Cookie header (RFC 6265 5.2): up to the first
    `=` of its first part, trimmed."""
    pair = set_cookie.split(b";", 1)[0]
    name, sep, _ = pair.partition(b"=")
    return name.strip() if sep else b""


async def _settled(manager: SpaceManager, repo: Repository) -> dict:
    """The Space's runtime once it runs (woken if asleep), or a 503 saying why it does not."""
    try:
        runtime = await manager.wait_running(repo, WAKE_TIMEOUT)
    except TimeoutError as e:
        raise errors.HubError(503, "SpaceNotReady", f"{e}; try again shortly.",
                              headers={"Retry-After": "5"}) from None
    if runtime["stage"] != "RUNNING":
        message = runtime.get("errorMessage") or f"The Space is {runtime['stage']}."
        raise errors.HubError(503, "SpaceNotRunning",
                              f"{repo.repo_id} is {runtime['stage']}: {message}")
    return runtime


async def _websocket(manager: SpaceManager, websocket: WebSocket, owner: str, name: str,
                     path: str | None) -> None:
    """A WebSocket of the app (Streamlit's stream, Gradio's older queue), relayed both ways."""
    try:
        repo = _find(manager, websocket.scope, owner, name)
        await _settled(manager, repo)
        upstream = manager.upstream(repo)
    except errors.HubError:
        upstream = None
    if upstream is None or path is None:  # refused, not running, static, or no path
        await websocket.close(code=1008)
        return
    port, keep_prefix = upstream
    prefix = manager.app_prefix(repo)
    target = f"{prefix}{path}" if keep_prefix else path
    query = websocket.url.query
    url = f"ws://127.0.0.1:{port}{target}" + (f"?{query}" if query else "")
    protocols = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",")
                 if p.strip()]
    forwarded, _ = _forward_headers(websocket.scope, prefix)
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in forwarded
               if k not in (b"host", b"origin")]
    try:
        upstream = await websockets.connect(
            url, additional_headers=headers, subprotocols=protocols or None,
            origin=websocket.headers.get("origin"), max_size=None, open_timeout=10,
            compression=None,
        )
    except (OSError, websockets.WebSocketException, asyncio.TimeoutError):
        await websocket.close(code=1011)
        return
    await websocket.accept(subprotocol=upstream.subprotocol)
    end_visit = manager.begin_visit(repo)
    try:
        await _relay(websocket, upstream)
    finally:
        end_visit()


async def _relay(websocket: WebSocket, upstream) -> None:
    """Messages both ways until either side closes."""

    async def to_app() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            await upstream.send(data if data is not None else message.get("text", ""))

    async def to_browser() -> None:
        async for data in upstream:
            if isinstance(data, bytes):
                await websocket.send_bytes(data)
            else:
                await websocket.send_text(data)

    tasks = [asyncio.create_task(to_app()), asyncio.create_task(to_browser())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await upstream.close()
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):
            await websocket.close()


async def _static(manager: SpaceManager, repo: Repository, path: str) -> Response:
    """A static Space's file from main: `index.html` for the root and for folders."""
    space = await manager.wake(repo)
    path = posixpath.normpath(path or ".").lstrip("/")
    if path.startswith("..") or any(p == ".git" for p in path.split("/")):
        raise errors.entry_not_found(repo.repo_id, path, space.sha or "")
    root = space.config.app_file if space.config else "index.html"
    candidates = [root] if path in ("", ".") else [path, f"{path}/index.html"]
    for candidate in candidates:
        data = await asyncio.to_thread(manager.read_file, repo, space.sha or repo.sha, candidate)
        if data is not None:
            media = mimetypes.guess_type(candidate)[0] or "application/octet-stream"
            return Response(data, media_type=media, headers={"Cache-Control": "no-cache"})
    raise errors.entry_not_found(repo.repo_id, path, space.sha or "")
