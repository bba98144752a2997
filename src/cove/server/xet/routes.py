"""Xet over HTTP: the Hub's CAS token endpoints and the CAS API, in the Hub's own process.

What huggingface_hub 2.x with hf_xet 1.8 calls, in order:
- upload: `GET /api/{t}/{repo}/xet-write-token/{rev}` (rev may be the string `None`), reading
  JSON `{accessToken, exp, casUrl}`; then on `casUrl` with the token as Bearer:
  `GET /v1/chunks/default/{chunk}` (the spec says `default-merkledb`: both are accepted),
  `POST /v1/xorb-grants/...` (not served: its 404 sends the client to) `POST
  /v1/xorbs/default/{xorb}`, `POST /v2/shards` (404, so) `POST /v1/shards`; then the Hub's
  NDJSON commit with `lfsFile {oid: sha256}`.
- download: HEAD `resolve` → `X-Xet-Hash` and `Link: <read-token URL>; rel="xet-auth"` →
  read token (headers `X-Xet-Cas-Url`, `X-Xet-Access-Token`, `X-Xet-Token-Expiration`) →
  `GET /v2/reconstructions/{file}` (404, so) `GET /v1/reconstructions/{file}` → `Range` GETs
  of the presigned `fetch_info` URLs, which this server answers too.
Routes that are not served must answer 404 (not 405), or the client does not fall back.
The CAS URL is the server's base URL: these paths live beside the OpenAI API's /v1 routes.
"""

from __future__ import annotations

import hmac
import json
import re
import time
from typing import Annotated

import anyio
from fastapi import APIRouter, Header, Path, Query, Request, Response

from cove.server import errors
from cove.server.deps import RepoIdParam, RepoTypeParam, base_url, hub_of, load_repo
from cove.server.openapi import error_responses
from cove.server.xet import tokens
from cove.server.xet.hashing import str_to_hash
from cove.server.xet.shard import ShardError
from cove.server.xet.store import MissingXorb, XetStore
from cove.server.xet.xorb import MAX_XORB_BYTES, XorbError

router = APIRouter(tags=["xet"])
FETCH_TTL = 3600  # seconds a presigned xorb range URL stays valid
MAX_SHARD_BYTES = 64 * 1024 * 1024
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")

HashParam = Annotated[str, Path(description="A Xet hash in the spec's string form (64 hex).")]


def xet_of(request: Request) -> XetStore:
    return hub_of(request).xet


def _raw_hash(text: str) -> bytes:
    try:
        return str_to_hash(text)
    except ValueError:
        raise errors.bad_request(f"Invalid Xet hash {text!r}.") from None


# -- the Hub side: tokens -----------------------------------------------------------------
def _token_route(op: str):
    async def token(
        request: Request, rtype: RepoTypeParam, repo_id: RepoIdParam,
        revision: Annotated[str, Path(description="Ignored: a token covers the repository.")],
    ) -> Response:
        repo, _ = await anyio.to_thread.run_sync(
            lambda: load_repo(request, rtype, repo_id, write=op == "write")
        )
        access, exp = tokens.issue(hub_of(request).settings.secret, repo.id, op)
        cas = base_url(request)
        body = {"accessToken": access, "exp": exp, "casUrl": cas}
        # The Rust side reads the JSON, huggingface_hub's download side the headers.
        headers = {"X-Xet-Cas-Url": cas, "X-Xet-Access-Token": access,
                   "X-Xet-Token-Expiration": str(exp)}
        return Response(json.dumps(body), media_type="application/json", headers=headers)

    token.__doc__ = f"A short-lived CAS token to {op} this repository's Xet files, and the CAS URL."
    return token


for _op in tokens.OPS:
    router.add_api_route(
        "/api/{rtype:rtype}/{repo_id:repo}/xet-" + _op + "-token/{revision}",
        _token_route(_op), methods=["GET"], name=f"xet_{_op}_token",
        responses={200: {"description": "`{accessToken, exp, casUrl}`, also as headers."},
                   **error_responses(401, 403, 404)},
    )


# -- the CAS ------------------------------------------------------------------------------
def _claims(request: Request, op: str) -> tokens.Claims:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise errors.unauthorized("A CAS token is required (from the Hub's xet-*-token route).")
    claims = tokens.verify(hub_of(request).settings.secret, token.strip())
    if claims is None:
        raise errors.unauthorized("Invalid or expired CAS token: fetch a new one from the Hub.")
    if not claims.allows(op):
        raise errors.forbidden("This CAS token is read-only: uploads need a write token.")
    return claims


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise errors.HubError(413, "PayloadTooLarge", f"The body exceeds {limit} bytes.")
    parts, size = [], 0
    async for piece in request.stream():
        size += len(piece)
        if size > limit:
            raise errors.HubError(413, "PayloadTooLarge", f"The body exceeds {limit} bytes.")
        parts.append(piece)
    return b"".join(parts)


@router.get("/v1/chunks/{prefix}/{chunk_hash}", response_class=Response,
            responses=error_responses(400, 401, 404))
async def query_chunk(request: Request, prefix: str, chunk_hash: HashParam) -> Response:
    """Global deduplication: a shard listing the xorb that holds this chunk, or 404."""
    _claims(request, "read")
    if prefix not in ("default", "default-merkledb"):
        raise errors.HubError(404, "NotFound", f"Unknown prefix {prefix!r}.")
    shard = await anyio.to_thread.run_sync(xet_of(request).dedup, _raw_hash(chunk_hash))
    if shard is None:
        raise errors.HubError(404, "NotFound", "Chunk not known to global deduplication.")
    return Response(shard, media_type="application/octet-stream")


@router.post("/v1/xorbs/{prefix}/{xorb_hash}", responses=error_responses(400, 401, 403, 404))
async def upload_xorb(request: Request, prefix: str, xorb_hash: HashParam) -> dict:
    """Store a xorb once its format, every chunk hash and its own hash are verified."""
    _claims(request, "write")
    if prefix != "default":
        raise errors.HubError(404, "NotFound", f"Unknown prefix {prefix!r}.")
    raw = _raw_hash(xorb_hash)
    body = await _body(request, MAX_XORB_BYTES)
    try:
        inserted = await anyio.to_thread.run_sync(xet_of(request).put_xorb, raw, body)
    except XorbError as e:
        raise errors.HubError(400, "InvalidXorb", f"Xorb {xorb_hash} refused: {e}") from None
    return {"was_inserted": inserted}


@router.get("/v1/xorbs/{prefix}/{xorb_hash}", response_class=Response,
            responses=error_responses(403, 404, 416))
async def fetch_xorb_range(
    request: Request, prefix: str, xorb_hash: HashParam,
    start: Annotated[int, Query(ge=0)], end: Annotated[int, Query(ge=0)],
    exp: Annotated[int, Query()], sig: Annotated[str, Query()],
    range_: Annotated[str | None, Header(alias="Range")] = None,
) -> Response:
    """Bytes of a xorb, from a presigned URL of a reconstruction's `fetch_info`."""
    if prefix != "default":
        raise errors.HubError(404, "NotFound", f"Unknown prefix {prefix!r}.")
    expected = tokens.sign_range(hub_of(request).settings.secret, xorb_hash, start, end, exp)
    if not hmac.compare_digest(expected.encode(), sig.encode("utf-8", "replace")) or exp < time.time():
        raise errors.HubError(403, "InvalidSignature", "This xorb URL is not valid (or expired).")
    first, last = start, end
    if range_:
        m = _RANGE.match(range_.strip())
        if not m:
            raise errors.HubError(416, "RangeNotSatisfiable", f"Unsupported range {range_}.")
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) else end
        if first < start or last > end or first > last:
            raise errors.HubError(416, "RangeNotSatisfiable",
                                  f"Range {range_} is outside the signed bytes {start}-{end}.")
    store = xet_of(request)
    xorb = await anyio.to_thread.run_sync(store.xorb, xorb_hash)
    if xorb is None or end >= xorb.size:
        raise errors.HubError(404, "NotFound", f"Xorb {xorb_hash} is not stored.")
    data = await anyio.to_thread.run_sync(store.read_xorb_range, xorb, first, last)
    return Response(data, status_code=206, media_type="application/octet-stream",
                    headers={"Content-Range": f"bytes {first}-{last}/{xorb.size}"})


@router.post("/v1/shards", responses=error_responses(400, 401, 403))
async def upload_shard(request: Request) -> dict:
    """Register the files of a shard, each checked against the stored xorbs."""
    claims = _claims(request, "write")
    body = await _body(request, MAX_SHARD_BYTES)
    try:
        result = await anyio.to_thread.run_sync(xet_of(request).put_shard, body, claims.repo_id)
    except MissingXorb as e:
        raise errors.HubError(400, "XorbNotFound", f"Shard refused: {e}") from None
    except (ShardError, XorbError) as e:
        raise errors.HubError(400, "InvalidShard", f"Shard refused: {e}") from None
    return {"result": result}


@router.get("/v1/reconstructions/{file_hash}", responses=error_responses(400, 401, 404, 416))
async def reconstruction(
    request: Request, file_hash: HashParam,
    range_: Annotated[str | None, Header(alias="Range")] = None,
) -> dict:
    """How to rebuild a file (or a byte range of it): terms and presigned xorb ranges."""
    claims = _claims(request, "read")
    _raw_hash(file_hash)
    store = xet_of(request)

    def plan():
        f = store.file(file_hash)
        if f is None or not store.readable(claims.repo_id, file_hash):
            raise errors.HubError(404, "NotFound", f"File {file_hash} not found.")
        start, end = 0, f.size
        if range_:
            m = _RANGE.match(range_.strip())
            if not m:
                raise errors.HubError(416, "RangeNotSatisfiable", f"Unsupported range {range_}.")
            start = int(m.group(1))
            end = min(int(m.group(2)) + 1, f.size) if m.group(2) else f.size
            if start >= f.size or start >= end:
                raise errors.HubError(416, "RangeNotSatisfiable",
                                      f"Range {range_} outside a file of {f.size} bytes.",
                                      headers={"Content-Range": f"bytes */{f.size}"})
        return store.plan(f.terms, start, end)

    skip, runs = await anyio.to_thread.run_sync(plan)
    secret = hub_of(request).settings.secret
    exp = int(time.time()) + FETCH_TTL
    root = base_url(request)
    terms = [
        {"hash": x.hash, "unpacked_length": size, "range": {"start": first, "end": last}}
        for x, first, last, size in runs
    ]
    fetch = {}
    xorbs = {x.hash: x for x, *_ in runs}
    for name, spans in _merged_spans(runs).items():
        entries = fetch[name] = []
        for first, last in spans:
            lo, hi = xorbs[name].byte_range(first, last)
            sig = tokens.sign_range(secret, name, lo, hi, exp)
            entries.append({
                "range": {"start": first, "end": last},
                "url": f"{root}/v1/xorbs/default/{name}?start={lo}&end={hi}&exp={exp}&sig={sig}",
                "url_range": {"start": lo, "end": hi},
            })
    return {"offset_into_first_range": skip, "terms": terms, "fetch_info": fetch}


def _merged_spans(runs) -> dict[str, list[tuple[int, int]]]:
    """Per xorb, the chunk ranges the runs use, overlapping and touching ones merged: hf_xet
    joins adjacent terms of one xorb and looks for one fetch range holding them all."""
    ranges: dict[str, list[tuple[int, int]]] = {}
    for x, first, last, _ in runs:
        ranges.setdefault(x.hash, []).append((first, last))
    out = {}
    for name, spans in ranges.items():
        merged: list[list[int]] = []
        for first, last in sorted(spans):
            if merged and first <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], last)
            else:
                merged.append([first, last])
        out[name] = [(a, b) for a, b in merged]
    return out


async def not_served(request: Request) -> Response:
    """Newer CAS routes this server does not serve: a 404 sends hf_xet to the older route."""
    raise errors.HubError(404, "NotFound", f"{request.url.path} is not served by this CAS.")


# Explicit, because a web page's `/{owner}/{name}` would answer these paths with a 405.
for _path, _method in (("/v2/shards", "POST"), ("/v1/xorb-grants/{prefix}/{xorb_hash}", "POST"),
                       ("/v2/reconstructions/{file_hash}", "GET")):
    router.add_api_route(_path, not_served, methods=[_method], include_in_schema=False,
                         name="xet_not_served_" + _path.split("/")[2].replace("-", "_"))
