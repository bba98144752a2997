"""Repositories: create, delete, move, info (at a revision), and the search listings."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response
from pydantic import Field
from sqlalchemy import asc, desc
from starlette.concurrency import run_in_threadpool

from cove.server import errors
from cove.server.cards import CardError, card_facts, front_matter
from cove.server.db import Repository
from cove.server.deps import (
    CursorParam,
    RepoIdParam,
    RepoTypeParam,
    RequestBody,
    RevisionParam,
    base_url,
    hub_of,
    iso,
    load_repo,
    next_page,
    principal,
    resolve_revision,
    sibling_json,
)
from cove.server.hub import REPO_TYPES, URL_PREFIX, Hub
from cove.server.openapi import error_responses
from cove.server.search import RepoQuery

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
SortKey = Literal[
    "downloads", "likes", "lastModified", "last_modified", "createdAt", "created_at",
    "trendingScore", "trending_score", "id",
]
MAX_PAGE = 1000
RepoKind = Literal["model", "dataset", "space"]
_FULL_ID = r"^[^/]+/[^/]+$"


class RepoPayload(RequestBody):
    """Names a repository; `name` may also be the full `namespace/name`."""

    name: str = Field(min_length=1)
    organization: str | None = None
    type: RepoKind | None = None


class NewRepo(RepoPayload):
    visibility: Literal["public", "private", "protected"] | None = None
    private: bool | None = None  # clients before `visibility`
    sdk: Literal["gradio", "streamlit", "docker", "static"] | None = None


class MoveRepo(RequestBody):
    fromRepo: str = Field(pattern=_FULL_ID, description="`namespace/name`")
    toRepo: str = Field(pattern=_FULL_ID, description="`namespace/name`")
    type: RepoKind | None = None


class YamlCheck(RequestBody):
    content: str | None = None
    repoType: str | None = None


def _payload(body: RepoPayload) -> tuple[str, str, str]:
    """(type, namespace, name) of a create/delete request body."""
    organization, name = body.organization, body.name
    if "/" in name:  # some clients send the full id as the name
        organization, name = name.rsplit("/", 1)
    return body.type or "model", organization or "", name


@router.post(
    "/api/repos/create",
    responses=error_responses(
        401, 403, 409, s409="It exists already; the body's `url` names it (exist_ok)."
    ),
)
async def create_repo(request: Request, body: NewRepo) -> dict:
    """Create a repository, with an initial commit of a default `.gitattributes`."""
    hub = hub_of(request)
    who = principal(request)
    if who is None:
        raise errors.unauthorized("You must use a write token to create a repository.")
    rtype, namespace, name = _payload(body)
    namespace = namespace or who.name
    if body.visibility:
        private = body.visibility in ("private", "protected")
    else:
        private = bool(body.private)
    url = f"{base_url(request)}/{URL_PREFIX[rtype]}{namespace}/{name}"
    try:
        await run_in_threadpool(hub.create_repo, rtype, namespace, name, who, private, body.sdk)
    except errors.HubError as e:
        if e.status == 409:
            # exist_ok=True in the client reads the url from this body.
            e.extra = {"url": url}
        raise
    return {"url": url, "name": f"{namespace}/{name}", "id": f"{namespace}/{name}"}


@router.delete("/api/repos/delete", responses=error_responses(401, 403, 404))
async def delete_repo(request: Request, body: RepoPayload) -> dict:
    """Delete a repository and its files."""
    rtype, namespace, name = _payload(body)
    who = principal(request)
    if who is None:
        raise errors.unauthorized("You must use a write token to delete a repository.")
    repo, _ = load_repo(request, rtype, f"{namespace or who.name}/{name}", write=True)
    hub_of(request).delete_repo(repo)
    return {}


@router.post("/api/repos/move", responses=error_responses(401, 403, 404, 409))
async def move_repo(request: Request, body: MoveRepo) -> dict:
    """Rename a repository, or move it to another namespace."""
    repo, who = load_repo(request, body.type or "model", body.fromRepo, write=True)
    hub_of(request).move_repo(repo, body.toRepo, who)
    return {}


@router.post("/api/validate-yaml", responses=error_responses())
async def validate_yaml(body: YamlCheck) -> dict:
    """Check a card's YAML front matter (called whenever README.md is committed)."""
    try:
        front_matter(body.content or "")
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
        spaces = getattr(request.app.state, "spaces", None)
        if spaces is not None:
            out["runtime"] = spaces.runtime(repo)  # space_info().runtime
    if card is not None:
        out["cardData"] = card
    if siblings:
        out["siblings"] = [sibling_json(e, blobs) for e in files]
        if blobs:
            out["usedStorage"] = sum(e.size for e in files)
    return out


BlobsFlag = Annotated[
    bool, Query(description="Sizes, blob ids and LFS facts of the siblings.")
]


@router.get("/api/{rtype:rtype}/{repo_id:repo}", responses=error_responses(401, 404))
def repo_info(
    request: Request, rtype: RepoTypeParam, repo_id: RepoIdParam, blobs: BlobsFlag = False
) -> dict:
    """A repository's facts and files at main."""
    repo, _ = load_repo(request, rtype, repo_id)
    return info_json(request, hub_of(request), repo, None, True, blobs)


@router.get(
    "/api/{rtype:rtype}/{repo_id:repo}/revision/{revision}",
    responses=error_responses(401, 404),
)
def repo_info_at(
    request: Request, rtype: RepoTypeParam, repo_id: RepoIdParam, revision: RevisionParam,
    blobs: BlobsFlag = False,
) -> dict:
    """A repository's facts and files at a revision."""
    repo, _ = load_repo(request, rtype, repo_id)
    return info_json(request, hub_of(request), repo, revision, True, blobs)


@router.get(
    "/api/{rtype:rtype}",
    responses=error_responses(401, 404, s404="No such route: the kind is not one of the three."),
)
def list_repos(
    request: Request,
    response: Response,
    rtype: RepoTypeParam,
    search: Annotated[
        list[str] | None, Query(description="Part of the id, any case (repeatable: all).")
    ] = None,
    author: Annotated[str | None, Query(description="The namespace.")] = None,
    filter: Annotated[
        list[str] | None, Query(description="Tags, comma-separated or repeated: all of them.")
    ] = None,
    pipeline_tag: Annotated[str | None, Query(description="Models of this task.")] = None,
    sort: Annotated[SortKey | None, Query(description="Sort key; default: creation order.")] = None,
    direction: Annotated[
        int | None, Query(description="1 for ascending; anything else descending.")
    ] = None,
    limit: Annotated[
        int | None, Query(ge=1, description=f"Page size; at most {MAX_PAGE} are answered.")
    ] = None,
    cursor: CursorParam = None,
    full: Annotated[bool, Query(description="With siblings and card data.")] = False,
    cardData: Annotated[bool, Query(description="With card data.")] = False,
    expand: Annotated[
        list[str] | None, Query(description="Fields to add: `siblings`, `cardData`.")
    ] = None,
    expand_brackets: Annotated[
        list[str] | None, Query(alias="expand[]", description="As `expand`.")
    ] = None,
) -> list[dict]:
    """Search repositories the caller can see; paginated with a `Link` header."""
    hub = hub_of(request)
    who = principal(request)
    filters = [f for value in filter or [] for f in value.split(",") if f]
    stmt = RepoQuery(REPO_TYPES[rtype], who, search=list(search or []), author=author,
                     tags=filters, pipeline_tag=pipeline_tag).select()
    if sort:
        order = asc if direction == 1 else desc
        stmt = stmt.order_by(order(SORT_COLUMNS[sort]), order(Repository.id))
    else:
        stmt = stmt.order_by(Repository.id)
    limit = min(limit or MAX_PAGE, MAX_PAGE)
    offset = cursor or 0
    with hub.session() as s:
        rows = s.scalars(stmt.offset(offset).limit(limit + 1)).all()
    if len(rows) > limit:
        rows = rows[:limit]
        response.headers["Link"] = next_page(request, "cursor", offset + limit)
    fields = (expand or []) + (expand_brackets or [])
    with_siblings = full or "siblings" in fields
    out = []
    for repo in rows:
        item = info_json(request, hub, repo, None, with_siblings, False)
        if not (full or cardData or "cardData" in fields):
            item.pop("cardData", None)
        out.append(item)
    return out
