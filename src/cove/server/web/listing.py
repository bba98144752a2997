"""The home page and the listings: /, /models, /datasets, /spaces (search, facets, sort)."""

from __future__ import annotations

from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import desc

from cove.server import search
from cove.server.db import Repository
from cove.server.hub import REPO_TYPES
from cove.server.web.core import PageRoute, hub_of, render, visitor
from cove.server.web.space_pages import stage_label

router = APIRouter(route_class=PageRoute, include_in_schema=False)

PAGE_SIZE = 30
SORTS = {  # the Hub's sort names in its page URLs
    "trending": ("Trending", Repository.downloads),
    "downloads": ("Most downloads", Repository.downloads),
    "likes": ("Most likes", Repository.likes),
    "modified": ("Recently updated", Repository.last_modified),
    "created": ("Recently created", Repository.created_at),
}
# (facet, query parameter, label); a dataset's task is its task_categories tag.
FACETS = [("task", "pipeline_tag", "Tasks"), ("library", "library", "Libraries"),
          ("license", "license", "Licenses"), ("language", "language", "Languages"),
          ("other", "other", "Other tags")]


def _top(request: Request, repo_type: str, column, n: int = 8) -> list[Repository]:
    q = search.RepoQuery(repo_type, visitor(request).who)
    with hub_of(request).session() as s:
        return s.scalars(q.select().order_by(desc(column), desc(Repository.id)).limit(n)).all()


@router.get("/", response_class=HTMLResponse)
def home(request: Request) -> HTMLResponse:
    """A search box, the most downloaded models and datasets, and the latest updates."""
    return render(
        request, "home.html",
        trending_models=_top(request, "model", Repository.downloads),
        trending_datasets=_top(request, "dataset", Repository.downloads),
        recent=_top(request, "model", Repository.last_modified)
        + _top(request, "dataset", Repository.last_modified, 4),
    )


def _listing(request: Request, plural: str) -> HTMLResponse:
    repo_type = REPO_TYPES[plural]
    params = request.query_params
    chosen = {key: params.get(key) or None for _, key, _ in FACETS}
    tags = [f"license:{chosen['license']}"] if chosen["license"] else []
    tags += [f"language:{chosen['language']}"] if chosen["language"] else []
    tags += [chosen["other"]] if chosen["other"] else []
    pipeline_tag = chosen["pipeline_tag"]
    if pipeline_tag and repo_type != "model":
        tags.append(f"task_categories:{pipeline_tag}")
    text = (params.get("search") or "").strip()
    q = search.RepoQuery(
        repo_type, visitor(request).who, search=[text] if text else [],
        author=params.get("author") or None, tags=tags, pipeline_tag=pipeline_tag,
        library=chosen["library"],
    )
    sort = params.get("sort") if params.get("sort") in SORTS else "trending"
    try:
        page = max(int(params.get("p", "0")), 0)
    except ValueError:
        page = 0
    column = SORTS[sort][1]
    with hub_of(request).session() as s:
        total, facets = search.summary(s, q)
        rows = s.scalars(q.select().order_by(desc(column), desc(Repository.id))
                         .offset(page * PAGE_SIZE).limit(PAGE_SIZE)).all()

    def link(**change: str | int | None) -> str:
        """This listing's URL with some parameters changed (None removes one; p resets)."""
        merged = {k: v for k, v in params.items() if k != "p"}
        merged.update({k: v for k, v in change.items()})
        return f"/{plural}?" + urlencode({k: v for k, v in merged.items() if v not in (None, "")})

    return render(
        request, "listing.html", plural=plural, repo_type=repo_type, repos=rows, total=total,
        stages=_stages(request, rows) if repo_type == "space" else {},
        page=page, pages=(total + PAGE_SIZE - 1) // PAGE_SIZE, search=text, sort=sort,
        sorts=SORTS, facets=[(label, key, facets[name]) for name, key, label in FACETS],
        chosen=chosen, link=link,
    )


def _stages(request: Request, spaces: list[Repository]) -> dict[int, tuple[str, str]]:
    """Each listed Space's stage as its card shows it (none when the server runs no Spaces)."""
    manager = getattr(request.app.state, "spaces", None)
    if manager is None:
        return {}
    return {r.id: stage_label(manager.runtime(r).get("stage")) for r in spaces}


def _listing_page(plural: str):
    def page(request: Request) -> HTMLResponse:
        return _listing(request, plural)

    return page


for _plural in REPO_TYPES:
    router.add_api_route(f"/{_plural}", _listing_page(_plural), methods=["GET"],
                         response_class=HTMLResponse, name=f"web_{_plural}")
