"""Git LFS: the batch API, signed upload URLs, and verify.

The client PUTs the bytes to `href` with no headers at all, so each upload URL carries its own
authorization: an HMAC over (oid, size, expiry) with the server's secret.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Annotated, Any, Literal
from urllib.parse import urlencode

import anyio
from fastapi import APIRouter, Body, Path, Query, Request, Response
from starlette.responses import StreamingResponse

from cove.server import errors
from cove.server.deps import RepoIdParam, RequestBody, base_url, hub_of, load_repo, principal
from cove.server.openapi import NO_TOKEN, error_responses
from cove.server.routers.files import file_stream, iterate_in_thread
from cove.server.storage import UploadMismatch, is_oid

router = APIRouter()
LFS_JSON = "application/vnd.git-lfs+json"
WRITE_BATCH = 8 * 1024 * 1024  # bytes gathered before one write+hash in a worker thread

OidParam = Annotated[str, Path(pattern=r"^[0-9a-f]{64}$", description="The object's sha256.")]


class LfsObject(RequestBody):
    oid: str
    size: int


class LfsRef(RequestBody):
    name: str


class LfsBatch(RequestBody):
    """A Git LFS batch request; `transfers` offered beyond `basic` are answered with basic."""

    operation: Literal["upload", "download"]
    transfers: list[str] | None = None
    objects: list[LfsObject] = []
    hash_algo: str | None = None
    ref: LfsRef | None = None


class LfsVerify(RequestBody):
    oid: str
    size: int


_BATCH_ANSWER: dict[str, Any] = {
    "type": "object",
    "required": ["transfer", "objects"],
    "properties": {
        "transfer": {"const": "basic"},
        "hash_algo": {"const": "sha256"},
        "objects": {"type": "array", "items": {"type": "object", "properties": {
            "oid": {"type": "string"},
            "size": {"type": "integer"},
            "authenticated": {"type": "boolean"},
            "actions": {"type": "object", "description": "upload and verify, or download: "
                        "absent when there is nothing to transfer."},
            "error": {"type": "object", "properties": {"code": {"type": "integer"},
                                                        "message": {"type": "string"}}},
        }}},
    },
}


def _sign(secret: bytes, oid: str, size: int, expires: int) -> str:
    return hmac.new(secret, f"{oid}:{size}:{expires}".encode(), hashlib.sha256).hexdigest()


def _lfs_error(status: int, message: str) -> errors.HubError:
    # Git LFS clients read `message`, huggingface_hub reads `error`: both are there.
    return errors.HubError(status, "LfsError", message, extra={"message": message})


async def _batch(request: Request, rtype: str, repo_id: str, body: LfsBatch) -> Response:
    repo, _ = load_repo(request, rtype, repo_id, write=body.operation == "upload")
    hub = hub_of(request)
    settings = hub.settings
    expires = int(time.time()) + settings.upload_url_ttl
    root = base_url(request)
    objects = []
    for obj in body.objects:
        oid, size = obj.oid, obj.size
        if not is_oid(oid) or size < 0:
            objects.append({"oid": oid, "size": size,
                            "error": {"code": 422, "message": "Invalid oid or size"}})
            continue
        stored = _stored_size(hub, oid)
        item: dict = {"oid": oid, "size": size, "authenticated": True}
        query = urlencode({"size": size, "expires": expires,
                           "sig": _sign(settings.secret, oid, size, expires)})
        href = f"{root}/api/lfs/objects/{oid}?{query}"
        if body.operation == "upload":
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


def _stored_size(hub, oid: str) -> int | None:
    """The size of the object, stored as such or as a file uploaded through Xet."""
    size = hub.objects.size(oid)
    if size is None:
        xet_file = hub.xet.file_by_sha256(oid)
        size = xet_file.size if xet_file else None
    return size


def _batch_kind(rtype: str):
    async def batch(
        request: Request,
        repo_id: RepoIdParam,
        body: Annotated[LfsBatch, Body(media_type=LFS_JSON)],
    ) -> Response:
        """Where to upload (or download) LFS objects: signed URLs, one per object."""
        return await _batch(request, rtype, repo_id, body)

    return batch


for _prefix, _kind in (("/datasets", "dataset"), ("/spaces", "space"), ("", "model")):
    router.add_api_route(
        _prefix + "/{repo_id:repo}.git/info/lfs/objects/batch", _batch_kind(_kind),
        methods=["POST"], name=f"lfs_batch_{_kind}", response_class=Response,
        responses={
            200: {"description": "Per-object actions or errors.",
                  "content": {LFS_JSON: {"schema": _BATCH_ANSWER}}},
            **error_responses(401, 403, 404),
        },
    )

SizeQuery = Annotated[int | None, Query(description="Signed: the object's size.")]
ExpiresQuery = Annotated[int | None, Query(description="Signed: epoch seconds of expiry.")]
SigQuery = Annotated[str | None, Query(description="The URL's signature.")]
_UNSIGNED = "The URL is not signed, its signature is wrong, or it has expired."


def _check_signature(
    request: Request, oid: str, size: int | None, expires: int | None, sig: str | None
) -> int:
    if size is None or expires is None or sig is None:
        raise errors.HubError(403, "InvalidSignature", "This LFS URL is not signed.")
    expected = _sign(hub_of(request).settings.secret, oid, size, expires)
    # Bytes: compare_digest refuses str with non-ASCII characters (a TypeError, so a 500).
    if not hmac.compare_digest(expected.encode(), sig.encode()):
        raise errors.HubError(403, "InvalidSignature", "This LFS URL's signature is invalid.")
    if expires < time.time():
        raise errors.HubError(403, "ExpiredSignature", "This LFS URL has expired: ask the batch API for a new one.")
    return size


@router.put(
    "/api/lfs/objects/{oid}", responses=error_responses(403, s403=_UNSIGNED), openapi_extra={
        **NO_TOKEN,
        "requestBody": {"required": True, "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
    },
)
async def upload_object(
    request: Request, oid: OidParam, size: SizeQuery = None, expires: ExpiresQuery = None,
    sig: SigQuery = None,
) -> Response:
    """Upload an object's bytes to the signed URL the batch API gave; checked, then stored."""
    size = _check_signature(request, oid, size, expires, sig)
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


@router.get(
    "/api/lfs/objects/{oid}", response_class=Response, openapi_extra=NO_TOKEN,
    responses={
        200: {"description": "The object's bytes.", "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
        **error_responses(403, 404, s403=_UNSIGNED),
    },
)
async def download_object(
    request: Request, oid: OidParam, size: SizeQuery = None, expires: ExpiresQuery = None,
    sig: SigQuery = None,
) -> Response:
    """Download an object from the signed URL the batch API gave."""
    _check_signature(request, oid, size, expires, sig)
    hub = hub_of(request)
    objects = hub.objects
    stored = objects.size(oid)
    if stored is not None:
        body = file_stream(lambda: objects.open(oid), 0, stored)
    elif (xet_file := await anyio.to_thread.run_sync(hub.xet.file_by_sha256, oid)) is not None:
        stored, body = xet_file.size, iterate_in_thread(hub.xet.stream(xet_file, 0, xet_file.size))
    else:
        raise errors.HubError(404, "EntryNotFound", f"LFS object {oid} does not exist.")
    return StreamingResponse(
        body,
        headers={"Content-Length": str(stored), "Accept-Ranges": "none"},
        media_type="application/octet-stream",
    )


@router.post(
    "/api/lfs/verify", response_class=Response,
    responses={
        200: {"description": "The object is stored with that size.",
              "content": {LFS_JSON: {"schema": {"type": "object"}}}},
        **error_responses(
            401, 404, 422, s404="The object was not uploaded (LfsError).",
            s422="The object is stored with another size (LfsError).",
        ),
    },
)
async def verify(request: Request, body: Annotated[LfsVerify, Body(media_type=LFS_JSON)]) -> Response:
    """Confirm an upload: the object is stored, with the announced size."""
    if principal(request) is None:
        raise errors.unauthorized("LFS verify needs the token that asked for the upload.")
    stored = hub_of(request).objects.size(body.oid) if is_oid(body.oid) else None
    if stored is None:
        raise _lfs_error(404, f"Object {body.oid} was not uploaded.")
    if stored != body.size:
        raise _lfs_error(422, f"Object {body.oid} has size {stored}, not {body.size}.")
    return Response(content="{}", media_type=LFS_JSON)
