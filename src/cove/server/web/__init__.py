"""The Hub's web pages, on the Hugging Face URL scheme; mounted after the API by `install`.

One router per page group; every page route is a `core.PageRoute`, so errors answer as pages.
The API never imports this package.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from cove.server.web.core import HERE


def install(app: FastAPI) -> None:
    """Serve the pages and their static files; call after the API's routes are included,
    so that the API always wins a path both could match."""
    from cove.server.web import accounts, listing, repo_pages, space_pages, viewer

    app.mount("/static/web", StaticFiles(directory=HERE / "static"), name="web-static")
    # Fixed paths (/, /models, /login, ...) before the repository patterns, the profile last;
    # the Space page before the repository pages, whose pattern also reads /spaces/{o}/{n}.
    for module in (listing, accounts, viewer, space_pages, repo_pages):
        app.include_router(module.router)
    app.include_router(accounts.profile_router)
