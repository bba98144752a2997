"""Branches, tags, the refs listing and commit history."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from cove.server import errors
from cove.server.deps import (
    RepoIdParam,
    RepoTypeParam,
    RequestBody,
    RevisionParam,
    hub_of,
    load_repo,
    next_page,
    resolve_revision,
)
from cove.server.gitrepo import RefConflict
from cove.server.hub import validate_name
from cove.server.openapi import error_responses
from cove.server.routing import unslash

router = APIRouter()
COMMITS_PAGE = 50

BranchParam = Annotated[str, Path(description="The branch name, percent-encoded.")]


class NewBranch(RequestBody):
    startingPoint: str | None = None


class NewTag(RequestBody):
    tag: str
    message: str | None = None


def _ref_name(value: str, what: str) -> str:
    name = unslash(value)
    for part in name.split("/"):
        validate_name(part, what)
    return name


@router.post(
    "/api/{rtype:rtype}/{repo_id:repo}/branch/{branch}",
    responses=error_responses(401, 403, 404, 409),
)
async def create_branch(
    request: Request, rtype: RepoTypeParam, repo_id: RepoIdParam, branch: BranchParam,
    body: NewBranch | None = None,
) -> dict:
    """Create a branch at `startingPoint` (default main)."""
    start_at = (body.startingPoint if body else None) or "main"
    repo, _ = load_repo(request, rtype, repo_id, write=True)
    hub = hub_of(request)
    name = _ref_name(branch, "branch name")

    def work() -> None:
        with hub.write_lock(repo):
            git = hub.git(repo)
            try:
                start = resolve_revision(git, repo, start_at)
                if not git.set_ref(f"refs/heads/{name}", start):
                    raise errors.conflict(f"Branch {name} already exists in {repo.repo_id}.")
            finally:
                git.close()

    await run_in_threadpool(work)
    return {}


@router.delete(
    "/api/{rtype:rtype}/{repo_id:repo}/branch/{branch}",
    responses=error_responses(401, 403, 404, s403="Not allowed, or the branch is main."),
)
def delete_branch(
    request: Request, rtype: RepoTypeParam, repo_id: RepoIdParam, branch: BranchParam
) -> dict:
    """Delete a branch (not main)."""
    repo, _ = load_repo(request, rtype, repo_id, write=True)
    name = unslash(branch)
    if name == "main":
        raise errors.forbidden("The main branch cannot be deleted.")
    hub = hub_of(request)
    with hub.write_lock(repo):
        git = hub.git(repo)
        try:
            if f"refs/heads/{name}" not in git.refs("refs/heads/"):
                raise errors.revision_not_found(repo.repo_id, name)
            git.set_ref(f"refs/heads/{name}", None)
        finally:
            git.close()
    return {}


@router.post(
    "/api/{rtype:rtype}/{repo_id:repo}/tag/{revision}",
    responses=error_responses(401, 403, 404, 409),
)
async def create_tag(
    request: Request, rtype: RepoTypeParam, repo_id: RepoIdParam, revision: RevisionParam,
    body: NewTag,
) -> dict:
    """Tag a revision; with a `message`, an annotated tag."""
    repo, who = load_repo(request, rtype, repo_id, write=True)
    hub = hub_of(request)
    tag = _ref_name(body.tag, "tag name")
    message = body.message

    def work() -> None:
        with hub.write_lock(repo):
            git = hub.git(repo)
            try:
                target = resolve_revision(git, repo, revision)
                if message:
                    git.create_annotated_tag(tag, target, message, hub.author(who))
                elif not git.set_ref(f"refs/tags/{tag}", target):
                    raise RefConflict(tag)
            except RefConflict:
                raise errors.conflict(f"Tag {tag} already exists in {repo.repo_id}.") from None
            finally:
                git.close()

    await run_in_threadpool(work)
    return {}


# `{revision}` as in create_tag: one path template, so the document has one path for both.
@router.delete(
    "/api/{rtype:rtype}/{repo_id:repo}/tag/{revision}", responses=error_responses(401, 403, 404)
)
def delete_tag(
    request: Request, rtype: RepoTypeParam, repo_id: RepoIdParam,
    revision: Annotated[str, Path(description="The tag to delete, percent-encoded.")],
) -> dict:
    """Delete a tag."""
    repo, _ = load_repo(request, rtype, repo_id, write=True)
    name = unslash(revision)
    hub = hub_of(request)
    with hub.write_lock(repo):
        git = hub.git(repo)
        try:
            if f"refs/tags/{name}" not in git.refs("refs/tags/"):
                raise errors.revision_not_found(repo.repo_id, name)
            git.set_ref(f"refs/tags/{name}", None)
        finally:
            git.close()
    return {}


@router.get("/api/{rtype:rtype}/{repo_id:repo}/refs", responses=error_responses(401, 404))
def list_refs(
    request: Request, rtype: RepoTypeParam, repo_id: RepoIdParam,
    include_prs: Annotated[bool, Query(description="Also list pull requests.")] = False,
) -> dict:
    """Branches, tags (and pull requests) with the commit each points to."""
    repo, _ = load_repo(request, rtype, repo_id)
    git = hub_of(request).git(repo)
    try:
        def listing(prefix: str) -> list[dict]:
            return [
                {"name": ref.removeprefix(prefix), "ref": ref, "targetCommit": sha}
                for ref, sha in sorted(git.refs(prefix).items())
            ]

        out = {"branches": listing("refs/heads/"), "converts": [], "tags": listing("refs/tags/")}
        if include_prs:
            out["pullRequests"] = listing("refs/pr/")
        return out
    finally:
        git.close()


@router.get(
    "/api/{rtype:rtype}/{repo_id:repo}/commits/{revision}", responses=error_responses(401, 404)
)
def list_commits(
    request: Request, response: Response, rtype: RepoTypeParam, repo_id: RepoIdParam,
    revision: RevisionParam,
    p: Annotated[int, Query(ge=0, description="The page (from the `Link` header).")] = 0,
    limit: Annotated[
        int, Query(ge=1, description="Commits per page; at most 1000 are answered.")
    ] = COMMITS_PAGE,
) -> list[dict]:
    """The history of a revision, newest first, a page at a time."""
    repo, _ = load_repo(request, rtype, repo_id)
    page, limit = p, min(limit, 1000)
    git = hub_of(request).git(repo)
    try:
        sha = resolve_revision(git, repo, revision)
        out = []
        for i, c in enumerate(git.history(sha)):
            if i < page * limit:
                continue
            if len(out) == limit:
                response.headers["Link"] = next_page(request, "p", page + 1)
                break
            message = c.message.decode("utf-8", "replace")
            title, _, rest = message.partition("\n")
            author = c.author.decode("utf-8", "replace").split(" <", 1)[0]
            out.append({
                "id": c.id.decode(),
                "title": title,
                "message": rest.strip(),
                "date": datetime.fromtimestamp(c.commit_time, timezone.utc)
                .strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                "authors": [{"user": author}],
            })
        return out
    finally:
        git.close()
