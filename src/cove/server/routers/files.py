"""Downloads: `HEAD|GET /{prefix}{repo_id}/resolve/{revision}/{path}` with byte ranges."""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Iterator
from typing import Annotated
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Header, Request, Response
from starlette.responses import StreamingResponse

from cove.server import errors
from cove.server.deps import (
    RepoIdParam,
    RepoPathParam,
    RevisionParam,
    base_url,
    clean_path,
    hub_of,
    load_repo,
    resolve_revision,
)
from cove.server.openapi import error_responses

router = APIRouter()

CHUNK = 4 * 1024 * 1024  # large reads: fewer event-loop round trips per GiB
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, end inclusive) of a single `bytes=` range; None for the whole file."""
    if not header:
        return None
    m = _RANGE.match(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None  # unsupported forms (several ranges) get the whole file
    if m.group(1):
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) else size - 1
    else:  # suffix range: the last N bytes
        start, end = max(size - int(m.group(2)), 0), size - 1
    end = min(end, size - 1)
    if start > end or start >= size:
        raise errors.HubError(
            416, "RangeNotSatisfiable", f"Range {header} outside a file of {size} bytes",
            headers={"Content-Range": f"bytes */{size}"},
        )
    return start, end


RangeHeader = Annotated[
    str | None,
    Header(alias="Range",
           description="`bytes=a-b`, `bytes=a-` or `bytes=-n`: one range, answered with 206."),
]


def _resolve_kind(rtype: str):
    async def resolve(
        request: Request,
        repo_id: RepoIdParam,
        revision: RevisionParam,
        path: RepoPathParam,
        range_: RangeHeader = None,
    ) -> Response:
        """A file's bytes (GET) or only its headers (HEAD), at a revision."""
        return await _resolve(request, rtype, repo_id, revision, path, range_)

    return resolve


async def _resolve(
    request: Request, rtype: str, repo_id: str, revision: str, path: str, range_: str | None
) -> Response:
    hub = hub_of(request)
    path = clean_path(path)

    def lookup():  # one trip to a worker thread for all the blocking work (SQL, git)
        repo, _ = load_repo(request, rtype, repo_id)
        git = hub.git(repo)
        try:
            sha = resolve_revision(git, repo, revision)
            entry = git.entry(sha, path)
            if entry is None or entry.type != "file":
                raise errors.entry_not_found(repo.repo_id, path, sha)
            data = None if entry.lfs else git.read_blob(entry.oid)
        finally:
            git.close()
        # An LFS file uploaded through Xet: no object, its bytes are rebuilt from xorbs.
        xet_file = (
            hub.xet.file_by_sha256(entry.lfs.oid)
            if entry.lfs and hub.objects.size(entry.lfs.oid) is None else None
        )
        if request.method == "GET":
            hub.count_download(repo, path, request.client.host if request.client else "?")
        return repo, sha, entry, data, xet_file

    repo, sha, entry, data, xet_file = await anyio.to_thread.run_sync(lookup)
    size = entry.size
    etag = entry.lfs.oid if entry.lfs else entry.oid
    name = path.rsplit("/", 1)[-1]
    headers = {
        "X-Repo-Commit": sha,
        "ETag": f'"{etag}"',
        "X-Linked-Etag": f'"{etag}"',
        "X-Linked-Size": str(size),
        "Accept-Ranges": "bytes",
        "Content-Disposition": f"inline; filename*=UTF-8''{quote(name)}",
        "Cache-Control": "private, max-age=0, must-revalidate",
        # A pushed .html or .svg opened at this URL must not run as the Hub's own page (the
        # web pages' session cookie): it runs sandboxed, in an origin of its own, if at all.
        "Content-Security-Policy": "sandbox",
        "X-Content-Type-Options": "nosniff",
    }
    if xet_file is not None:
        # Xet clients download through CAS; the others read the bytes below.
        token_url = f"{base_url(request)}/api/{rtype}s/{repo.repo_id}/xet-read-token/{sha}"
        headers["X-Xet-Hash"] = xet_file.hash
        headers["Link"] = f'<{token_url}>; rel="xet-auth"'
    media = mimetypes.guess_type(name)[0] or "application/octet-stream"
    local = None
    if entry.lfs and xet_file is None:
        local = hub.objects.local_path(entry.lfs.oid)
        if local is None and hub.objects.size(entry.lfs.oid) is None:
            raise errors.HubError(
                500, "LfsObjectMissing",
                f"The LFS object of {path} ({entry.lfs.oid}) is missing from storage.",
            )
    rng = _parse_range(range_, size)
    start, end = rng if rng else (0, size - 1)
    length = end - start + 1 if size else 0
    headers["Content-Length"] = str(length)
    status = 206 if rng else 200
    if rng:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers, media_type=media)
    if data is not None:
        return Response(data[start : end + 1], status_code=status, headers=headers, media_type=media)
    if xet_file is not None:
        return StreamingResponse(
            iterate_in_thread(hub.xet.stream(xet_file, start, length)),
            status_code=status, headers=headers, media_type=media,
        )
    opener = (lambda: open(local, "rb")) if local else (lambda: hub.objects.open(entry.lfs.oid))
    return StreamingResponse(
        file_stream(opener, start, length), status_code=status, headers=headers, media_type=media
    )


async def iterate_in_thread(pieces: Iterator[bytes]):
    """The items of a blocking iterator, each produced off the event loop."""
    while (piece := await anyio.to_thread.run_sync(next, pieces, None)) is not None:
        yield piece


async def file_stream(opener, start: int, length: int):
    """The bytes [start, start+length) of the file `opener()` returns, read off the loop."""
    f = await anyio.to_thread.run_sync(opener)
    try:
        if start:
            await anyio.to_thread.run_sync(f.seek, start)
        left = length
        while left > 0:
            chunk = await anyio.to_thread.run_sync(f.read, min(CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk
    finally:
        f.close()


_FILE_HEADERS = {
    name: {"description": meaning, "schema": {"type": "string"}}
    for name, meaning in (
        ("X-Repo-Commit", "The 40-hex commit the revision resolved to."),
        ("ETag", "The git blob sha1, or the sha256 of an LFS file."),
        ("X-Linked-Etag", "As ETag."),
        ("X-Linked-Size", "The file's size in bytes."),
        ("Accept-Ranges", "`bytes`."),
        ("Content-Length", "The size of the answered bytes."),
    )
}
_FILE = {"schema": {"type": "string", "format": "binary"}}
_RESOLVE_RESPONSES = {
    200: {"description": "The file (no body for HEAD).", "content": {"*/*": _FILE},
          "headers": _FILE_HEADERS},
    206: {"description": "The requested range of the file.", "content": {"*/*": _FILE},
          "headers": {**_FILE_HEADERS, "Content-Range": {"schema": {"type": "string"}}}},
    **error_responses(401, 404, 416, 500),
}

# Datasets and spaces first: "/datasets/x/resolve/..." must not be read as the model "datasets/x".
for _prefix, _kind in (("/datasets", "dataset"), ("/spaces", "space"), ("", "model")):
    for _method in ("GET", "HEAD"):  # one route per method: one operation id each
        router.add_api_route(
            _prefix + "/{repo_id:repo}/resolve/{revision}/{path:path}",
            _resolve_kind(_kind),
            methods=[_method],
            name=f"resolve_{_kind}_{_method.lower()}",
            response_class=Response,
            responses=_RESOLVE_RESPONSES,
        )


