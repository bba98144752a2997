"""Repositories: create, delete, move, info (at a revision), and the search listings."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from sqlalchemy import asc, desc, func, or_, select
from starlette.concurrency import run_in_threadpool

from cove.server import errors
from cove.server.cards import CardError, card_facts, front_matter
from cove.server.db import Repository, RepoTag
from cove.server.deps import (
    base_url,
    hub_of,
    iso,
    load_repo,
    principal,
    resolve_revision,
    sibling_json,
    truthy,
)
from cove.server.hub import REPO_TYPES, URL_PREFIX, Hub

router = APIRouter()

SORT_COLUMNS = {
    "downloads": Repository.downloads,
    "likes": Repository.likes,
    "lastModified": Repository.last_modified,
    "last_modified": Repository.last_modified,
    "createdAt": Repository.created_at,
    "created_at": Repository.created_at,
    # No trending computation yet: trending follows downloads.
    "trendingScore": Repository.downloads,
    "trending_score": Repository.downloads,
    "id": Repository.name,
}
MAX_PAGE = 1000


def _payload(body: dict) -> tuple[str, str, str]:
    """(type, namespace, name) of a create/delete request body."""
    name = body.get("name")
    if not isinstance(name, str) or not name:
        raise errors.bad_request("Missing repository 'name'.")
    organization = body.get("organization")
    if "/" in name:  # some clients send the full id as the name
        organization, name = name.rsplit("/", 1)
    rtype = body.get("type") or "model"
    if rtype not in ("model", "dataset", "space"):
        raise errors.bad_request(f"Invalid repository type {rtype!r}.")
    return rtype, organization or "", name


@router.post("/api/repos/create")
async def create_repo(request: Request) -> dict:
    hub = hub_of(request)
    who = principal(request)
    if who is None:
        raise errors.unauthorized("You must use a write token to create a repository.")
    body = await request.json()
    rtype, namespace, name = _payload(body)
    namespace = namespace or who.name
    visibility = body.get("visibility")
    private = visibility in ("private", "protected") if visibility else bool(body.get("private"))
    sdk = body.get("sdk")
    if rtype == "space" and sdk not in (None, "gradio", "streamlit", "docker", "static"):
        raise errors.bad_request(f"Invalid Space SDK {sdk!r}: use gradio, streamlit, docker or static.")
    url = f"{base_url(request)}/{URL_PREFIX[rtype]}{namespace}/{name}"
    try:
        await run_in_threadpool(hub.create_repo, rtype, namespace, name, who, private, sdk)
    except errors.HubError as e:
        if e.status == 409:
            # exist_ok=True in the client reads the url from this body.
            e.extra = {"url": url}
        raise
    return {"url": url, "name": f"{namespace}/{name}", "id": f"{namespace}/{name}"}


@router.delete("/api/repos/delete")
async def delete_repo(request: Request) -> dict:
    body = await request.json()
    rtype, namespace, name = _payload(body)
    who = principal(request)
    if who is None:
        raise errors.unauthorized("You must use a write token to delete a repository.")
    repo, _ = load_repo(request, rtype, f"{namespace or who.name}/{name}", write=True)
    hub_of(request).delete_repo(repo)
    return {}


@router.post("/api/repos/move")
async def move_repo(request: Request) -> dict:
    body = await request.json()
    src, dst = body.get("fromRepo"), body.get("toRepo")
    if not (isinstance(src, str) and isinstance(dst, str) and "/" in src and "/" in dst):
        raise errors.bad_request("Moving needs 'fromRepo' and 'toRepo' as 'namespace/name'.")
    rtype = body.get("type") or "model"
    repo, who = load_repo(request, rtype, src, write=True)
    hub_of(request).move_repo(repo, dst, who)
    return {}


@router.post("/api/validate-yaml")
async def validate_yaml(request: Request) -> dict:
    body = await request.json()
    try:
        front_matter(body.get("content") or "")
    except CardError as e:
        return {"errors": [{"message": str(e)}], "warnings": []}
    return {"errors": [], "warnings": []}


def info_json(
    request: Request,
    hub: Hub,
    repo: Repository,
    revision: str | None = None,
    siblings: bool = True,
    blobs: bool = False,
) -> dict:
    """The repository as the Hub's info endpoints describe it (at `revision`, default main)."""
    facts = None
    sha = repo.sha
    files = []
    if revision is not None or siblings:
        git = hub.git(repo)
        try:
            sha = resolve_revision(git, repo, revision or "main")
            if siblings:
                files = git.files(sha)
            if sha != repo.sha:
                entry = git.entry(sha, "README.md")
                facts = card_facts(git.read_blob(entry.oid) if entry else None, repo.type)
        finally:
            git.close()
    card = facts.card_data if facts else repo.card_data
    tags = facts.tags if facts else list(repo.tags or [])
    out: dict = {
        "_id": str(repo.id),
        "id": repo.repo_id,
        "author": repo.namespace,
        "sha": sha,
        "lastModified": iso(repo.last_modified),
        "createdAt": iso(repo.created_at),
        "private": repo.private,
        "gated": False,
        "disabled": False,
        "downloads": repo.downloads,
        "likes": repo.likes,
        "tags": tags,
    }
    if repo.type == "model":
        out["modelId"] = repo.repo_id
        out["pipeline_tag"] = facts.pipeline_tag if facts else repo.pipeline_tag
        out["library_name"] = facts.library_name if facts else repo.library_name
    if repo.type == "space":
        out["sdk"] = repo.sdk
    if card is not None:
        out["cardData"] = card
    if siblings:
        out["siblings"] = [sibling_json(e, blobs) for e in files]
        if blobs:
            out["usedStorage"] = sum(e.size for e in files)
    return out


@router.get("/api/{rtype:rtype}/{repo_id:repo}")
def repo_info(request: Request, rtype: str, repo_id: str, blobs: str | None = None) -> dict:
    repo, _ = load_repo(request, rtype, repo_id)
    return info_json(request, hub_of(request), repo, None, True, truthy(blobs))


@router.get("/api/{rtype:rtype}/{repo_id:repo}/revision/{revision}")
def repo_info_at(
    request: Request, rtype: str, repo_id: str, revision: str, blobs: str | None = None
) -> dict:
    repo, _ = load_repo(request, rtype, repo_id)
    return info_json(request, hub_of(request), repo, revision, True, truthy(blobs))


@router.get("/api/{rtype:rtype}")
def list_repos(request: Request, rtype: str, response: Response) -> list[dict]:
    hub = hub_of(request)
    who = principal(request)
    q = request.query_params
    rt = REPO_TYPES[rtype]
    stmt = select(Repository).where(Repository.type == rt)
    visible = [who.name, *who.orgs] if who else []
    stmt = stmt.where(or_(Repository.private.is_(False), Repository.namespace.in_(visible)))
    if q.get("author"):
        stmt = stmt.where(Repository.namespace == q["author"])
    for term in q.getlist("search"):
        pattern = f"%{term.lower()}%"
        stmt = stmt.where(
            func.lower(Repository.namespace + "/" + Repository.name).like(pattern)
        )
    filters = [f for value in q.getlist("filter") for f in value.split(",") if f]
    if rt == "model" and q.get("pipeline_tag"):
        stmt = stmt.where(Repository.pipeline_tag == q["pipeline_tag"])
    for tag in filters:
        stmt = stmt.where(Repository.id.in_(select(RepoTag.repo_id).where(RepoTag.tag == tag)))
    sort = q.get("sort")
    if sort:
        column = SORT_COLUMNS.get(sort)
        if column is None:
            raise errors.bad_request(
                f"Invalid sort {sort!r}: use one of {', '.join(sorted(SORT_COLUMNS))}."
            )
        order = asc if q.get("direction") == "1" else desc
        stmt = stmt.order_by(order(column), order(Repository.id))
    else:
        stmt = stmt.order_by(Repository.id)
    try:
        limit = min(int(q.get("limit") or MAX_PAGE), MAX_PAGE)
        offset = int(q.get("cursor") or 0)
    except ValueError:
        raise errors.bad_request("'limit' and 'cursor' must be integers.") from None
    with hub.session() as s:
        rows = s.scalars(stmt.offset(offset).limit(limit + 1)).all()
    if len(rows) > limit:
        rows = rows[:limit]
        params = [(k, v) for k, v in q.multi_items() if k != "cursor"]
        params.append(("cursor", str(offset + limit)))
        response.headers["Link"] = f'<{base_url(request)}{request.url.path}?{urlencode(params)}>; rel="next"'
    full = truthy(q.get("full"))
    expand = q.getlist("expand") or q.getlist("expand[]")
    with_siblings = full or "siblings" in expand
    out = []
    for repo in rows:
        item = info_json(request, hub, repo, None, with_siblings, False)
        if not (full or truthy(q.get("cardData")) or "cardData" in expand):
            item.pop("cardData", None)
        out.append(item)
    return out
