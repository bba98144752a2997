"""Git LFS: the batch API, signed upload URLs, and verify.

The client PUTs the bytes to `href` with no headers at all, so each upload URL carries its own
authorization: an HMAC over (oid, size, expiry) with the server's secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from urllib.parse import urlencode

import anyio
from fastapi import APIRouter, Request, Response
from starlette.responses import StreamingResponse

from cove.server import errors
from cove.server.deps import base_url, hub_of, load_repo, principal
from cove.server.routers.files import file_stream
from cove.server.storage import UploadMismatch, is_oid

router = APIRouter()
LFS_JSON = "application/vnd.git-lfs+json"
WRITE_BATCH = 8 * 1024 * 1024  # bytes gathered before one write+hash in a worker thread


def _sign(secret: bytes, oid: str, size: int, expires: int) -> str:
    return hmac.new(secret, f"{oid}:{size}:{expires}".encode(), hashlib.sha256).hexdigest()


def _lfs_error(status: int, message: str) -> Response:
    return Response(
        content=f'{{"message": "{message}"}}', status_code=status, media_type=LFS_JSON,
        headers={"X-Error-Code": "LfsError", "X-Error-Message": message},
    )


async def _batch(request: Request, rtype: str, repo_id: str) -> Response:
    body = await request.json()
    operation = body.get("operation")
    if operation not in ("upload", "download"):
        raise errors.bad_request("LFS batch 'operation' must be 'upload' or 'download'.")
    repo, _ = load_repo(request, rtype, repo_id, write=operation == "upload")
    hub = hub_of(request)
    settings = hub.settings
    expires = int(time.time()) + settings.upload_url_ttl
    root = base_url(request)
    objects = []
    for obj in body.get("objects") or []:
        oid, size = str(obj.get("oid", "")), obj.get("size")
        if not is_oid(oid) or not isinstance(size, int) or size < 0:
            objects.append({"oid": oid, "size": size,
                            "error": {"code": 422, "message": "Invalid oid or size"}})
            continue
        stored = hub.objects.size(oid)
        item: dict = {"oid": oid, "size": size, "authenticated": True}
        query = urlencode({"size": size, "expires": expires,
                           "sig": _sign(settings.secret, oid, size, expires)})
        href = f"{root}/api/lfs/objects/{oid}?{query}"
        if operation == "upload":
            if stored != size:  # already stored objects get no actions: nothing to send
                item["actions"] = {
                    "upload": {"href": href, "expires_in": settings.upload_url_ttl},
                    # The client sends its own token with verify: nothing secret in here.
                    "verify": {"href": f"{root}/api/lfs/verify"},
                }
        elif stored == size:
            item["actions"] = {"download": {"href": href, "expires_in": settings.upload_url_ttl}}
        else:
            item["error"] = {"code": 404, "message": "Object does not exist"}
        objects.append(item)
    return Response(json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}),
                    media_type=LFS_JSON)


def _batch_kind(kind: str):
    async def batch(request: Request, repo_id: str) -> Response:
        return await _batch(request, kind, repo_id)

    return batch


for _prefix, _kind in (("/datasets", "dataset"), ("/spaces", "space"), ("", "model")):
    router.add_api_route(
        _prefix + "/{repo_id:repo}.git/info/lfs/objects/batch", _batch_kind(_kind),
        methods=["POST"], name=f"lfs_batch_{_kind}",
    )


def _check_signature(request: Request, oid: str) -> int:
    q = request.query_params
    try:
        size, expires = int(q["size"]), int(q["expires"])
    except (KeyError, ValueError):
        raise errors.HubError(403, "InvalidSignature", "This LFS URL is not signed.") from None
    expected = _sign(hub_of(request).settings.secret, oid, size, expires)
    if not hmac.compare_digest(expected, q.get("sig", "")):
        raise errors.HubError(403, "InvalidSignature", "This LFS URL's signature is invalid.")
    if expires < time.time():
        raise errors.HubError(403, "ExpiredSignature", "This LFS URL has expired: ask the batch API for a new one.")
    return size


@router.put("/api/lfs/objects/{oid}")
async def upload_object(request: Request, oid: str) -> Response:
    if not is_oid(oid):
        raise errors.bad_request(f"Invalid LFS oid {oid!r}.")
    size = _check_signature(request, oid)
    hub = hub_of(request)
    if hub.objects.size(oid) == size:
        async for _ in request.stream():  # already stored: drain and accept
            pass
        return Response(status_code=200)
    pending = await anyio.to_thread.run_sync(hub.objects.begin, oid, size)
    buffer: list[bytes] = []
    buffered = 0

    def flush(parts: list[bytes]) -> None:
        pending.write(b"".join(parts))

    try:
        async for chunk in request.stream():
            buffer.append(chunk)
            buffered += len(chunk)
            if buffered >= WRITE_BATCH:
                await anyio.to_thread.run_sync(flush, buffer)
                buffer, buffered = [], 0
        if buffer:
            await anyio.to_thread.run_sync(flush, buffer)
        await anyio.to_thread.run_sync(pending.commit)
    except UploadMismatch as e:
        pending.abort()
        raise errors.HubError(400, "LfsVerificationFailed", f"Upload of {oid} rejected: {e}") from None
    except BaseException:
        pending.abort()
        raise
    return Response(status_code=200)


@router.get("/api/lfs/objects/{oid}")
async def download_object(request: Request, oid: str) -> Response:
    if not is_oid(oid):
        raise errors.bad_request(f"Invalid LFS oid {oid!r}.")
    _check_signature(request, oid)
    objects = hub_of(request).objects
    size = objects.size(oid)
    if size is None:
        raise errors.HubError(404, "EntryNotFound", f"LFS object {oid} does not exist.")
    return StreamingResponse(
        file_stream(lambda: objects.open(oid), 0, size),
        headers={"Content-Length": str(size), "Accept-Ranges": "none"},
        media_type="application/octet-stream",
    )


@router.post("/api/lfs/verify")
async def verify(request: Request) -> Response:
    if principal(request) is None:
        raise errors.unauthorized("LFS verify needs the token that asked for the upload.")
    body = await request.json()
    oid, size = str(body.get("oid", "")), body.get("size")
    stored = hub_of(request).objects.size(oid) if is_oid(oid) else None
    if stored is None:
        return _lfs_error(404, f"Object {oid} was not uploaded.")
    if stored != size:
        return _lfs_error(422, f"Object {oid} has size {stored}, not {size}.")
    return Response(content="{}", media_type=LFS_JSON)
