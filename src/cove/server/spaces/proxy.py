"""The reverse proxy: a Space's app under the Hub's origin at `/spaces/{owner}/{name}/app/`.

HTTP responses are streamed (server-sent events pass as they come), WebSockets are relayed
both ways. The Hub's own credentials (its session cookie, the Authorization header) never
reach a Space, and a Space cannot set the Hub's session cookie.
"""

from __future__ import annotations

import asyncio
import contextlib
import mimetypes
import posixpath
from http.cookies import SimpleCookie

import httpx
import websockets
from fastapi import APIRouter, Request, WebSocket
from starlette.background import BackgroundTask
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.websockets import WebSocketDisconnect

from cove.server import errors
from cove.server.db import Repository
from cove.server.deps import SESSION_COOKIE, hub_of, principal, session_of
from cove.server.hub import Principal

router = APIRouter(include_in_schema=False)

# Headers that belong to one connection, never forwarded (RFC 9110 7.6.1), and the Hub's
# own credentials.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailer", "trailers", "transfer-encoding", "upgrade", "host", "authorization",
              "proxy-connection"}
WAKE_TIMEOUT = 60.0  # seconds a visit waits for a sleeping or building Space
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
def _visitor(request) -> Principal | None:
    """The caller: a bearer token, else the pages' signed-in session."""
    if request.headers.get("authorization"):
        return principal(request)
    session = session_of(request)
    if "uid" in session:
        return hub_of(request).principal_for_account(session["uid"])
    return None


def _space_repo(request, owner: str, name: str) -> Repository:
    hub = hub_of(request)
    with hub.session() as s:
        return hub.find_repo(s, "space", f"{owner}/{name}", _visitor(request))


def _forward_headers(headers, client_host: str, scheme: str, host: str, prefix: str) -> dict:
    connection = {h.strip().lower() for h in headers.get("connection", "").split(",")}
    out = {}
    for key, value in headers.items():
        k = key.lower()
        if k in HOP_BY_HOP or k in connection or k.startswith("sec-websocket"):
            continue
        if k == "cookie":
            value = _without_hub_cookie(value)
            if not value:
                continue
        out[k] = value
    out["x-forwarded-for"] = client_host
    out["x-forwarded-proto"] = scheme
    out["x-forwarded-host"] = host
    out["x-forwarded-prefix"] = prefix
    out["host"] = host
    return out


def _without_hub_cookie(header: str) -> str:
    parts = [p.strip() for p in header.split(";")]
    return "; ".join(p for p in parts if p and p.split("=", 1)[0].strip() != SESSION_COOKIE)


def _response_headers(resp: httpx.Response, port: int, prefix: str) -> list[tuple[str, str]]:
    connection = {h.strip().lower() for h in resp.headers.get("connection", "").split(",")}
    out = []
    for key, value in resp.headers.multi_items():
        k = key.lower()
        if k in HOP_BY_HOP or k in connection:
            continue
        if k == "set-cookie" and SESSION_COOKIE in SimpleCookie(value):
            continue  # a Space must not sign anyone in or out of the Hub
        if k == "location":
            for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
                if value.startswith(origin):
                    value = prefix + value[len(origin):]
        out.append((k, value))
    return out


async def _settled(request, repo: Repository) -> dict:
    """The Space's runtime once it runs (woken if asleep), or a 503 saying why it does not."""
    try:
        runtime = await request.app.state.spaces.wait_running(repo, WAKE_TIMEOUT)
    except TimeoutError as e:
        raise errors.HubError(503, "SpaceNotReady", f"{e}; try again shortly.",
                              headers={"Retry-After": "5"}) from None
    if runtime["stage"] != "RUNNING":
        message = runtime.get("errorMessage") or f"The Space is {runtime['stage']}."
        raise errors.HubError(503, "SpaceNotRunning",
                              f"{repo.repo_id} is {runtime['stage']}: {message}")
    return runtime


async def _running(request, repo: Repository) -> tuple[int, bool]:
    """(port, keep the prefix) of the Space's running app."""
    await _settled(request, repo)
    upstream = request.app.state.spaces.upstream(repo)
    if upstream is None:  # a static Space: no app to connect to
        raise errors.HubError(404, "NoAppServer", f"{repo.repo_id} is a static Space.")
    return upstream


@router.api_route("/spaces/{owner}/{name}/app", methods=_METHODS)
async def app_root(owner: str, name: str, request: Request) -> Response:
    """The app's root is its prefix with a slash, as relative links need it."""
    _space_repo(request, owner, name)
    query = f"?{request.url.query}" if request.url.query else ""
    return RedirectResponse(f"/spaces/{owner}/{name}/app/{query}", status_code=307)


@router.api_route("/spaces/{owner}/{name}/app/{path:path}", methods=_METHODS)
async def proxy_http(owner: str, name: str, path: str, request: Request) -> Response:
    """Everything under the app's prefix, relayed to the Space's server."""
    repo = _space_repo(request, owner, name)
    manager = request.app.state.spaces
    prefix = manager.app_prefix(repo)
    if (await _settled(request, repo))["sdk"] == "static":
        return await _static(request, repo, path)
    upstream = manager.upstream(repo)
    if upstream is None:  # stopped between the two lines (a push, a pause)
        raise errors.HubError(503, "SpaceNotReady", f"{repo.repo_id} is restarting.",
                              headers={"Retry-After": "5"})
    port, keep_prefix = upstream
    target = f"{prefix}/{path}" if keep_prefix else f"/{path}"
    raw = request.scope.get("raw_path")
    if raw:  # the path as the browser sent it (encoded characters kept)
        raw_path = raw.split(b"?", 1)[0].decode("latin-1")
        target = raw_path if keep_prefix else raw_path[len(prefix):] or "/"
    url = httpx.URL(f"http://127.0.0.1:{port}{target}",
                    query=request.url.query.encode("latin-1"))
    headers = _forward_headers(request.headers, request.client.host if request.client else "",
                               request.url.scheme, request.headers.get("host", ""), prefix)
    body = request.stream() if request.method not in ("GET", "HEAD") else None
    client = manager.client
    upstream = client.build_request(request.method, url, headers=headers, content=body)
    end_visit = manager.begin_visit(repo)
    try:
        resp = await client.send(upstream, stream=True)
    except httpx.HTTPError as e:
        end_visit()
        raise errors.HubError(502, "SpaceUnreachable",
                              f"The Space {repo.repo_id} did not answer: {e}") from None

    async def done() -> None:  # after the last byte, or when the visitor went away
        await resp.aclose()
        end_visit()

    response = StreamingResponse(resp.aiter_raw(), status_code=resp.status_code,
                                 background=BackgroundTask(done))
    # The app's headers as they came, repeated ones (Set-Cookie) included.
    response.raw_headers = [(k.encode("latin-1"), v.encode("latin-1"))
                            for k, v in _response_headers(resp, port, prefix)]
    return response


@router.websocket("/spaces/{owner}/{name}/app/{path:path}")
async def proxy_websocket(websocket: WebSocket, owner: str, name: str, path: str) -> None:
    """A WebSocket of the app (Streamlit's stream, Gradio's older queue), relayed both ways."""
    try:
        repo = _space_repo(websocket, owner, name)
        port, keep_prefix = await _running(websocket, repo)
    except errors.HubError:
        await websocket.close(code=1008)
        return
    prefix = websocket.app.state.spaces.app_prefix(repo)
    target = f"{prefix}/{path}" if keep_prefix else f"/{path}"
    query = websocket.url.query
    url = f"ws://127.0.0.1:{port}{target}" + (f"?{query}" if query else "")
    protocols = [p.strip() for p in websocket.headers.get("sec-websocket-protocol", "").split(",")
                 if p.strip()]
    headers = _forward_headers(websocket.headers,
                               websocket.client.host if websocket.client else "",
                               "https" if websocket.url.scheme == "wss" else "http",
                               websocket.headers.get("host", ""), prefix)
    headers.pop("host", None)
    headers.pop("origin", None)
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
    end_visit = websocket.app.state.spaces.begin_visit(repo)
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


async def _static(request: Request, repo: Repository, path: str) -> Response:
    """A static Space's file from main: `index.html` for the root and for folders."""
    manager = request.app.state.spaces
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
