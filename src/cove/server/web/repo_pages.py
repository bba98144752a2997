"""A repository's pages: card, files, a file, history, a commit's diff, settings.

Paths as the Hub's: /{owner}/{name}[/tree|blob/{rev}/{path}|/commits/{rev}|/commit/{sha}],
with /datasets/ or /spaces/ in front for those kinds. Reads go through `Hub.find_repo` with
the visitor's principal, so a private repository is a 404 page to anyone who may not read it.
"""

from __future__ import annotations

import difflib
import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import BinaryIO

from dulwich.objects import Commit
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from cove.server import errors
from cove.server.cards import front_matter
from cove.server.db import Repository
from cove.server.deps import clean_path, resolve_revision
from cove.server.gitrepo import Entry, GitRepo, parse_lfs_pointer
from cove.server.hub import Hub, Principal
from cove.server.web import fileinfo
from cove.server.web import render as rendering
from cove.server.web.core import (
    KINDS,
    PageRoute,
    checked_form,
    hub_of,
    param,
    redirect,
    render,
    repo_href,
    rev_part,
    sign_in_first,
    visitor,
)

router = APIRouter(route_class=PageRoute, include_in_schema=False)
REPO = "/{kind:kind}{owner:owner}/{name}"
COMMITS_PAGE = 30
TEXT_LIMIT = 1024 * 1024  # larger files get a download link instead of their text
DIFF_LIMIT = 256 * 1024


@dataclass
class CommitView:
    id: str
    title: str
    message: str
    author: str
    date: datetime

    @classmethod
    def of(cls, c: Commit) -> CommitView:
        message = c.message.decode("utf-8", "replace")
        title, _, rest = message.partition("\n")
        return cls(c.id.decode(), title, rest.strip(),
                   c.author.decode("utf-8", "replace").split(" <", 1)[0],
                   datetime.fromtimestamp(c.commit_time, timezone.utc).replace(tzinfo=None))


@dataclass
class RepoContext:
    """A repository page's common facts: the repository, the visitor, the revision."""

    repo: Repository
    who: Principal | None
    can_write: bool

    @property
    def href(self) -> str:
        return repo_href(self.repo.type, self.repo.repo_id)


def load(request: Request, kind: str, owner: str, name: str) -> RepoContext:
    """The repository the page names, as the visitor may see it (else RepoNotFound, a 404)."""
    hub = hub_of(request)
    who = visitor(request).who
    with hub.session() as s:
        repo = hub.find_repo(s, KINDS[kind], f"{param(owner)}/{param(name)}", who)
    can_write = who is not None and hub.owns_namespace(repo.namespace, who)
    return RepoContext(repo, who, can_write)


@contextmanager
def opened(hub: Hub, repo: Repository) -> Iterator[GitRepo]:
    git = hub.git(repo)
    try:
        yield git
    finally:
        git.close()


def open_entry(hub: Hub, git: GitRepo, entry: Entry) -> BinaryIO:
    """A file's bytes, from git or (for an LFS pointer) from the object store."""
    if entry.lfs is None:
        return io.BytesIO(git.read_blob(entry.oid))
    local = hub.objects.local_path(entry.lfs.oid)
    if local is not None:
        return open(local, "rb")
    if hub.objects.size(entry.lfs.oid) is None:
        raise errors.HubError(500, "LfsObjectMissing",
                              f"The LFS object of {entry.path} is missing from storage.")
    return hub.objects.open(entry.lfs.oid)


def refs_of(git: GitRepo) -> dict[str, list[str]]:
    return {"branches": sorted(r.removeprefix("refs/heads/") for r in git.refs("refs/heads/")),
            "tags": sorted(r.removeprefix("refs/tags/") for r in git.refs("refs/tags/"))}


def _chips(card: dict | None) -> list[tuple[str, str, str]]:
    """(label, value, listing filter URL) for the card's metadata, as the Hub's chips."""
    if not card:
        return []
    out = []

    def add(label: str, value, key: str | None) -> None:
        for v in value if isinstance(value, list) else [value]:
            if v is not None and not isinstance(v, (dict, list)):
                out.append((label, str(v), f"?{key}={v}" if key else ""))

    for label, field, key in (("Task", "pipeline_tag", "pipeline_tag"),
                              ("Task", "task_categories", "pipeline_tag"),
                              ("Library", "library_name", "library"),
                              ("License", "license", "license"),
                              ("Language", "language", "language"),
                              ("Dataset", "datasets", None), ("Base model", "base_model", None),
                              ("Tag", "tags", "other")):
        if field in card:
            add(label, card[field], key)
    return out


@router.get("/models/{owner:owner}/{name}", response_class=HTMLResponse)
def model_alias(owner: str, name: str) -> RedirectResponse:
    """GET on the inference API's path shows the model's page (POST there runs the model)."""
    return RedirectResponse(f"/{owner}/{name}", status_code=301)


@router.get(REPO, response_class=HTMLResponse)
def repo_page(request: Request, kind: str, owner: str, name: str) -> HTMLResponse:
    """The repository's card (README.md at main) with its metadata chips and facts."""
    ctx = load(request, kind, owner, name)
    hub = hub_of(request)
    readme = None
    with opened(hub, ctx.repo) as git:
        sha = git.resolve("main")
        entry = git.entry(sha, "README.md") if sha else None
        if entry is not None and entry.type == "file" and entry.size <= TEXT_LIMIT:
            with open_entry(hub, git, entry) as f:
                readme = f.read().decode("utf-8", "replace")
        refs = refs_of(git)
    card = ctx.repo.card_data
    if readme is not None and card is None:
        try:
            card = front_matter(readme)
        except ValueError:
            card = None
    body = (rendering.markdown(rendering.strip_front_matter(readme), ctx.href)
            if readme else None)
    return render(request, "repo.html", ctx=ctx, tab="card", card=body, chips=_chips(card),
                  refs=refs, rev="main", repo_id=ctx.repo.repo_id, task=_task(request, ctx))


def _task(request: Request, ctx: RepoContext) -> str | None:
    """The widget's task: the card's pipeline_tag, else what the serving registry reads from
    the files (modules.json, a causal LM's config, a GGUF file; no torch), when serving is on."""
    registry = getattr(request.app.state, "serving", None)
    if ctx.repo.type != "model" or ctx.repo.pipeline_tag or registry is None:
        return ctx.repo.pipeline_tag
    try:
        return registry.facts(registry.resolve(ctx.repo.repo_id, ctx.who)).task
    except errors.HubError:
        return None


def _tree(request: Request, kind: str, owner: str, name: str, rev: str,
          path: str = "") -> HTMLResponse:
    ctx = load(request, kind, owner, name)
    hub = hub_of(request)
    rev = param(rev)
    path = clean_path(path) if path else ""
    with opened(hub, ctx.repo) as git:
        sha = resolve_revision(git, ctx.repo, rev)
        try:
            entries = list(git.list(sha, path))
        except KeyError:
            raise errors.entry_not_found(ctx.repo.repo_id, path, sha) from None
        last = git.last_changes(sha, path)
        refs = refs_of(git)
        head = CommitView.of(git.commit(sha))
    rows = [(e, CommitView.of(last[e.path.rsplit("/", 1)[-1]])
             if e.path.rsplit("/", 1)[-1] in last else None) for e in entries]
    rows.sort(key=lambda r: (r[0].type != "directory", r[0].path.lower()))
    return render(request, "tree.html", ctx=ctx, tab="files", rev=rev, path=path, rows=rows,
                  refs=refs, head=head, crumbs=_crumbs(path))


def _crumbs(path: str) -> list[tuple[str, str]]:
    """(name, path so far) of each folder of `path`, for the breadcrumb."""
    parts = [p for p in path.split("/") if p]
    return [(p, "/".join(parts[: i + 1])) for i, p in enumerate(parts)]


@router.get(REPO + "/tree/{rev}", response_class=HTMLResponse)
def tree_root(request: Request, kind: str, owner: str, name: str, rev: str) -> HTMLResponse:
    """The files at the top of a revision, with sizes, LFS badges and last commits."""
    return _tree(request, kind, owner, name, rev)


@router.get(REPO + "/tree/{rev}/{path:path}", response_class=HTMLResponse)
def tree_folder(request: Request, kind: str, owner: str, name: str, rev: str,
                path: str) -> HTMLResponse:
    """The files in a folder of a revision."""
    return _tree(request, kind, owner, name, rev, path)


@router.get(REPO + "/blob/{rev}/{path:path}", response_class=HTMLResponse)
def blob(request: Request, kind: str, owner: str, name: str, rev: str,
         path: str) -> HTMLResponse:
    """One file: highlighted text, a weights file's tensor table, an image, or a link."""
    ctx = load(request, kind, owner, name)
    hub = hub_of(request)
    rev, path = param(rev), clean_path(path)
    text = weights = None
    problem = None
    with opened(hub, ctx.repo) as git:
        sha = resolve_revision(git, ctx.repo, rev)
        entry = git.entry(sha, path)
        if entry is None or entry.type != "file":
            raise errors.entry_not_found(ctx.repo.repo_id, path, sha)
        refs = refs_of(git)
        lower = path.lower()
        try:
            if lower.endswith(".safetensors"):
                with open_entry(hub, git, entry) as f:
                    weights = fileinfo.safetensors_header(f)
            elif lower.endswith(".gguf"):
                local = hub.objects.local_path(entry.lfs.oid) if entry.lfs else None
                if local is None:
                    problem = "This GGUF file is not stored locally; download it to read it."
                else:
                    weights = fileinfo.gguf_header(str(local))
            elif not fileinfo.is_image(path) and entry.size <= TEXT_LIMIT:
                with open_entry(hub, git, entry) as f:
                    data = f.read()
                if b"\0" not in data[:8192]:
                    text = data.decode("utf-8", "replace")
        except (ValueError, KeyError, OSError) as e:
            problem = f"Could not read this file's header: {e}"
    highlighted = rendering.code(text, path) if text is not None else None
    resolve = f"{ctx.href}/resolve/{rev_part(rev)}/{path}"
    return render(request, "blob.html", ctx=ctx, tab="files", rev=rev, path=path, entry=entry,
                  refs=refs, code=highlighted, lines=len(text.splitlines()) if text else 0,
                  weights=weights, image=fileinfo.is_image(path), problem=problem,
                  resolve=resolve, crumbs=_crumbs(path))


@router.get(REPO + "/commits/{rev}", response_class=HTMLResponse)
def commits(request: Request, kind: str, owner: str, name: str, rev: str,
            p: int = 0) -> HTMLResponse:
    """The history of a revision, newest first, COMMITS_PAGE at a time."""
    ctx = load(request, kind, owner, name)
    rev, page = param(rev), max(p, 0)
    with opened(hub_of(request), ctx.repo) as git:
        sha = resolve_revision(git, ctx.repo, rev)
        refs = refs_of(git)
        shown: list[CommitView] = []
        more = False
        for i, c in enumerate(git.history(sha)):
            if i < page * COMMITS_PAGE:
                continue
            if len(shown) == COMMITS_PAGE:
                more = True
                break
            shown.append(CommitView.of(c))
    return render(request, "commits.html", ctx=ctx, tab="commits", rev=rev, refs=refs,
                  commits=shown, page=page, more=more)


@dataclass
class FileDiff:
    path: str
    status: str  # "added" | "deleted" | "modified"
    diff: object | None  # highlighted unified diff, for text files
    note: str = ""


@router.get(REPO + "/commit/{sha}", response_class=HTMLResponse)
def commit(request: Request, kind: str, owner: str, name: str, sha: str) -> HTMLResponse:
    """One commit: its message and, file by file, what it changed."""
    ctx = load(request, kind, owner, name)
    with opened(hub_of(request), ctx.repo) as git:
        full = resolve_revision(git, ctx.repo, sha)
        c = git.commit(full)
        files = [_file_diff(git, path, old, new) for path, old, new in git.changes(full)]
        parents = [p.decode() for p in c.parents]
    return render(request, "commit.html", ctx=ctx, tab="commits", commit=CommitView.of(c),
                  files=files, parents=parents, rev=full)


def _file_diff(git: GitRepo, path: str, old: str | None, new: str | None) -> FileDiff:
    status = "added" if old is None else "deleted" if new is None else "modified"
    before = git.read_blob(old) if old else b""
    after = git.read_blob(new) if new else b""
    pointers = [parse_lfs_pointer(b) for b in (before, after) if b]
    if any(pointers):
        sizes = " → ".join(f"{p[1]:,} bytes (sha256 {p[0][:12]}…)" for p in pointers if p)
        return FileDiff(path, status, None, f"LFS file: {sizes}")
    if len(before) + len(after) > DIFF_LIMIT or b"\0" in before[:8192] + after[:8192]:
        return FileDiff(path, status, None, "Binary or large file: no diff shown.")
    lines = difflib.unified_diff(
        before.decode("utf-8", "replace").splitlines(keepends=True),
        after.decode("utf-8", "replace").splitlines(keepends=True),
        fromfile=f"a/{path}" if old else "/dev/null", tofile=f"b/{path}" if new else "/dev/null",
    )
    return FileDiff(path, status, rendering.diff("".join(lines)))


@router.get(REPO + "/settings", response_class=HTMLResponse)
def settings_page(request: Request, kind: str, owner: str, name: str) -> Response:
    ctx = load(request, kind, owner, name)
    if ctx.who is None:
        return sign_in_first(request)
    if not ctx.can_write:
        raise errors.forbidden(f"You cannot change the settings of {ctx.repo.repo_id}.")
    return render(request, "settings.html", ctx=ctx, tab="settings", error=None)


@router.post(REPO + "/settings", response_class=HTMLResponse)
async def settings_change(request: Request, kind: str, owner: str, name: str) -> Response:
    """Visibility, rename/move, or delete (after typing the full id), by the form's action."""
    form = await checked_form(request)
    ctx = await run_in_threadpool(load, request, kind, owner, name)
    if ctx.who is None:
        return sign_in_first(request)
    hub = hub_of(request)
    hub.check_write(ctx.repo.namespace, ctx.who, ctx.repo.repo_id)
    action = form.get("action")
    repo = ctx.repo
    try:
        if action == "visibility":
            await run_in_threadpool(hub.set_private, repo, form.get("visibility") == "private")
            return redirect(request, ctx.href + "/settings")
        if action == "rename":
            new_id = str(form.get("new_id", "")).strip()
            if new_id.count("/") != 1:
                raise errors.bad_request("The new id is owner/name.")
            await run_in_threadpool(hub.move_repo, repo, new_id, ctx.who)
            return redirect(request, repo_href(repo.type, new_id))
        if action == "delete":
            if str(form.get("confirm", "")).strip() != repo.repo_id:
                raise errors.bad_request(f"Type {repo.repo_id} to confirm the deletion.")
            await run_in_threadpool(hub.delete_repo, repo)
            return redirect(request, f"/{repo.namespace}")
        raise errors.bad_request("Unknown action.")
    except errors.HubError as e:
        if e.status >= 500:
            raise
        return render(request, "settings.html", status=e.status, ctx=ctx, tab="settings",
                      error=e.message)
