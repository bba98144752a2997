"""Branches, tags, the refs listing and commit history."""

from __future__ import annotations

from datetime import datetime, timezone
from urllib.parse import urlencode

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from cove.server import errors
from cove.server.deps import base_url, hub_of, load_repo, resolve_revision
from cove.server.gitrepo import RefConflict
from cove.server.hub import validate_name
from cove.server.routing import unslash

router = APIRouter()
COMMITS_PAGE = 50


async def _json(request: Request) -> dict:
    body = await request.body()
    if not body.strip():
        return {}
    try:
        data = await request.json()
    except ValueError:
        raise errors.bad_request("The body must be JSON.") from None
    return data if isinstance(data, dict) else {}


def _ref_name(value: str, what: str) -> str:
    name = unslash(value)
    for part in name.split("/"):
        validate_name(part, what)
    return name


@router.post("/api/{rtype:rtype}/{repo_id:repo}/branch/{branch}")
async def create_branch(request: Request, rtype: str, repo_id: str, branch: str) -> dict:
    body = await _json(request)
    repo, _ = load_repo(request, rtype, repo_id, write=True)
    hub = hub_of(request)
    name = _ref_name(branch, "branch name")

    def work() -> None:
        with hub.write_lock(repo):
            git = hub.git(repo)
            try:
                start = resolve_revision(git, repo, body.get("startingPoint") or "main")
                if not git.set_ref(f"refs/heads/{name}", start):
                    raise errors.conflict(f"Branch {name} already exists in {repo.repo_id}.")
            finally:
                git.close()

    await run_in_threadpool(work)
    return {}


@router.delete("/api/{rtype:rtype}/{repo_id:repo}/branch/{branch}")
def delete_branch(request: Request, rtype: str, repo_id: str, branch: str) -> dict:
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


@router.post("/api/{rtype:rtype}/{repo_id:repo}/tag/{revision}")
async def create_tag(request: Request, rtype: str, repo_id: str, revision: str) -> dict:
    body = await _json(request)
    repo, who = load_repo(request, rtype, repo_id, write=True)
    hub = hub_of(request)
    tag = body.get("tag")
    if not isinstance(tag, str) or not tag:
        raise errors.bad_request("Missing 'tag' in the body.")
    tag = _ref_name(tag, "tag name")
    message = body.get("message")

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


@router.delete("/api/{rtype:rtype}/{repo_id:repo}/tag/{tag}")
def delete_tag(request: Request, rtype: str, repo_id: str, tag: str) -> dict:
    repo, _ = load_repo(request, rtype, repo_id, write=True)
    name = unslash(tag)
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


@router.get("/api/{rtype:rtype}/{repo_id:repo}/refs")
def list_refs(request: Request, rtype: str, repo_id: str) -> dict:
    repo, _ = load_repo(request, rtype, repo_id)
    git = hub_of(request).git(repo)
    try:
        def listing(prefix: str) -> list[dict]:
            return [
                {"name": ref.removeprefix(prefix), "ref": ref, "targetCommit": sha}
                for ref, sha in sorted(git.refs(prefix).items())
            ]

        out = {"branches": listing("refs/heads/"), "converts": [], "tags": listing("refs/tags/")}
        if request.query_params.get("include_prs") in ("1", "true", "True"):
            out["pullRequests"] = listing("refs/pr/")
        return out
    finally:
        git.close()


@router.get("/api/{rtype:rtype}/{repo_id:repo}/commits/{revision}")
def list_commits(request: Request, response: Response, rtype: str, repo_id: str,
                 revision: str) -> list[dict]:
    repo, _ = load_repo(request, rtype, repo_id)
    q = request.query_params
    try:
        page = int(q.get("p") or 0)
        limit = min(int(q.get("limit") or COMMITS_PAGE), 1000)
    except ValueError:
        raise errors.bad_request("'p' and 'limit' must be integers.") from None
    git = hub_of(request).git(repo)
    try:
        sha = resolve_revision(git, repo, revision)
        out = []
        for i, c in enumerate(git.history(sha)):
            if i < page * limit:
                continue
            if len(out) == limit:
                params = [(k, v) for k, v in q.multi_items() if k != "p"] + [("p", str(page + 1))]
                response.headers["Link"] = (
                    f'<{base_url(request)}{request.url.path}?{urlencode(params)}>; rel="next"'
                )
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
