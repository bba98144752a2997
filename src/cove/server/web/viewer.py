"""The dataset viewer: /datasets/{owner}/{name}/viewer, a page of rows of one split's file."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from cove.server import errors
from cove.server.deps import resolve_revision
from cove.server.web import tables
from cove.server.web.core import PageRoute, hub_of, render
from cove.server.web.repo_pages import load, open_entry, opened, refs_of

router = APIRouter(route_class=PageRoute, include_in_schema=False)


@router.get("/datasets/{owner:owner}/{name}/viewer", response_class=HTMLResponse)
def viewer(request: Request, owner: str, name: str, split: str | None = None,
           file: int = 0, p: int = 0) -> HTMLResponse:
    """Rows of a split's data file at main, `tables.PAGE_ROWS` per page, with column types."""
    ctx = load(request, "datasets/", owner, name)
    hub = hub_of(request)
    page = max(p, 0)
    data = None
    problem = None
    with opened(hub, ctx.repo) as git:
        sha = resolve_revision(git, ctx.repo, "main")
        found = tables.splits(git.files(sha))
        refs = refs_of(git)
        split = split if split in found else next(iter(found), None)
        files = found.get(split, [])
        if files:
            if not 0 <= file < len(files):
                raise errors.bad_request(f"The split {split} has {len(files)} file(s).")
            entry = files[file]
            try:
                with open_entry(hub, git, entry) as f:
                    data = tables.read_page(f, tables.file_format(entry.path),
                                            page * tables.PAGE_ROWS)
            except (ValueError, OSError) as e:  # pyarrow's errors are ValueErrors
                problem = f"Could not read {entry.path}: {e}"
    return render(request, "viewer.html", ctx=ctx, tab="viewer", rev="main", refs=refs,
                  splits=found, split=split, files=files, file=file, data=data, page=page,
                  problem=problem, page_rows=tables.PAGE_ROWS)
