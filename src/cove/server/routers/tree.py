"""Listing files: the tree of a revision (paginated) and paths-info."""

from __future__ import annotations

from itertools import islice
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response

from cove.server import errors
from cove.server.deps import (
    base_url,
    clean_path,
    hub_of,
    load_repo,
    resolve_revision,
    tree_entry_json,
    truthy,
)

router = APIRouter()
PAGE = 1000


def _tree(request: Request, response: Response, rtype: str, repo_id: str, revision: str,
          path: str) -> list[dict]:
    repo, _ = load_repo(request, rtype, repo_id)
    hub = hub_of(request)
    path = clean_path(path) if path else ""
    q = request.query_params
    try:
        offset = int(q.get("cursor") or 0)
        limit = min(int(q.get("limit") or PAGE), PAGE)
    except ValueError:
        raise errors.bad_request("'cursor' and 'limit' must be integers.") from None
    git = hub.git(repo)
    try:
        sha = resolve_revision(git, repo, revision)
        try:
            entries = git.list(sha, path, recursive=truthy(q.get("recursive")))
            page = list(islice(entries, offset, offset + limit + 1))
        except KeyError:
            raise errors.entry_not_found(repo.repo_id, path, sha) from None
    finally:
        git.close()
    if len(page) > limit:
        page = page[:limit]
        params = [(k, v) for k, v in q.multi_items() if k != "cursor"]
        params.append(("cursor", str(offset + limit)))
        response.headers["Link"] = (
            f'<{base_url(request)}{request.url.path}?{urlencode(params)}>; rel="next"'
        )
    return [tree_entry_json(e) for e in page]


@router.get("/api/{rtype:rtype}/{repo_id:repo}/tree/{revision}")
def tree_root(request: Request, response: Response, rtype: str, repo_id: str, revision: str):
    return _tree(request, response, rtype, repo_id, revision, "")


@router.get("/api/{rtype:rtype}/{repo_id:repo}/tree/{revision}/{path:path}")
def tree_path(request: Request, response: Response, rtype: str, repo_id: str, revision: str,
              path: str):
    return _tree(request, response, rtype, repo_id, revision, path)


@router.post("/api/{rtype:rtype}/{repo_id:repo}/paths-info/{revision}")
async def paths_info(request: Request, rtype: str, repo_id: str, revision: str) -> list[dict]:
    if request.headers.get("content-type", "").startswith("application/json"):
        body = await request.json()
        paths = body.get("paths") or []
    else:
        form = await request.form()
        paths = form.getlist("paths")
    repo, _ = load_repo(request, rtype, repo_id)
    git = hub_of(request).git(repo)
    try:
        sha = resolve_revision(git, repo, revision)
        out = []
        for p in paths:
            entry = git.entry(sha, clean_path(str(p)))
            if entry is not None:  # unknown paths are left out, as the Hub does
                out.append(tree_entry_json(entry))
        return out
    finally:
        git.close()
