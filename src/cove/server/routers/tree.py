"""Listing files: the tree of a revision (paginated) and paths-info."""

from __future__ import annotations

import json
from itertools import islice
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from cove.server import errors
from cove.server.deps import (
    CursorParam,
    RepoIdParam,
    RepoPathParam,
    RepoTypeParam,
    RevisionParam,
    clean_path,
    hub_of,
    load_repo,
    next_page,
    resolve_revision,
    tree_entry_json,
)
from cove.server.openapi import error_responses

router = APIRouter()
PAGE = 1000

RecursiveFlag = Annotated[bool, Query(description="List the whole subtree.")]
LimitParam = Annotated[
    int | None, Query(ge=1, description=f"Page size; at most {PAGE} are answered.")
]


def _tree(request: Request, response: Response, rtype: str, repo_id: str, revision: str,
          path: str, recursive: bool, cursor: int | None, limit: int | None) -> list[dict]:
    repo, _ = load_repo(request, rtype, repo_id)
    hub = hub_of(request)
    path = clean_path(path) if path else ""
    offset = cursor or 0
    limit = min(limit or PAGE, PAGE)
    git = hub.git(repo)
    try:
        sha = resolve_revision(git, repo, revision)
        try:
            entries = git.list(sha, path, recursive=recursive)
            page = list(islice(entries, offset, offset + limit + 1))
        except KeyError:
            raise errors.entry_not_found(repo.repo_id, path, sha) from None
    finally:
        git.close()
    if len(page) > limit:
        page = page[:limit]
        response.headers["Link"] = next_page(request, "cursor", offset + limit)
    xet = hub.xet.files_by_sha256([e.lfs.oid for e in page if e.lfs])
    return [tree_entry_json(e, xet) for e in page]


@router.get(
    "/api/{rtype:rtype}/{repo_id:repo}/tree/{revision}", responses=error_responses(401, 404)
)
def tree_root(
    request: Request, response: Response, rtype: RepoTypeParam, repo_id: RepoIdParam,
    revision: RevisionParam, recursive: RecursiveFlag = False, cursor: CursorParam = None,
    limit: LimitParam = None,
) -> list[dict]:
    """The files and folders at the root of a revision; paginated with a `Link` header."""
    return _tree(request, response, rtype, repo_id, revision, "", recursive, cursor, limit)


@router.get(
    "/api/{rtype:rtype}/{repo_id:repo}/tree/{revision}/{path:path}",
    responses=error_responses(401, 404),
)
def tree_path(
    request: Request, response: Response, rtype: RepoTypeParam, repo_id: RepoIdParam,
    revision: RevisionParam, path: RepoPathParam, recursive: RecursiveFlag = False,
    cursor: CursorParam = None, limit: LimitParam = None,
) -> list[dict]:
    """The files and folders under a folder of a revision; paginated with a `Link` header."""
    return _tree(request, response, rtype, repo_id, revision, path, recursive, cursor, limit)


_PATHS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "paths": {"type": "array", "items": {"type": "string"}},
        "expand": {"type": "boolean", "description": "Ignored: entries are always full."},
    },
}


@router.post(
    "/api/{rtype:rtype}/{repo_id:repo}/paths-info/{revision}",
    responses=error_responses(401, 404),
    openapi_extra={"requestBody": {"required": True, "content": {
        "application/x-www-form-urlencoded": {"schema": _PATHS},  # what the clients send
        "application/json": {"schema": _PATHS},
    }}},
)
async def paths_info(
    request: Request, rtype: RepoTypeParam, repo_id: RepoIdParam, revision: RevisionParam
) -> list[dict]:
    """The entries of the given paths; unknown paths are left out, as the Hub does."""
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            body = json.loads(await request.body())
        except ValueError:
            raise errors.bad_request("The body must be JSON.") from None
        paths = body.get("paths", []) if isinstance(body, dict) else None
        if not isinstance(paths, list):
            raise errors.bad_request("Expected {'paths': [...]} in the body.")
    else:
        form = await request.form()
        paths = form.getlist("paths")
    repo, _ = load_repo(request, rtype, repo_id)
    hub = hub_of(request)
    git = hub.git(repo)
    try:
        sha = resolve_revision(git, repo, revision)
        entries = [git.entry(sha, clean_path(str(p))) for p in paths]
    finally:
        git.close()
    entries = [e for e in entries if e is not None]
    xet = hub.xet.files_by_sha256([e.lfs.oid for e in entries if e.lfs])
    return [tree_entry_json(e, xet) for e in entries]
