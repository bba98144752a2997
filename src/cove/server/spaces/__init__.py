"""Spaces: building and running Space apps (Gradio, Streamlit, static) behind the Hub.

`install(app, hub)` mounts the API and the reverse proxy (middleware, ahead of the routes)
and puts the `SpaceManager` at `app.state.spaces`; the app's lifespan calls
`manager.start()` and `manager.close()`.
"""

from __future__ import annotations

from fastapi import FastAPI

from cove.server.hub import Hub
from cove.server.spaces.manager import SpaceManager


def install(app: FastAPI, hub: Hub) -> SpaceManager:
    """Mount the Spaces API and proxy on `app`; answers the manager (not started yet)."""
    from cove.server.spaces import proxy, routes

    manager = SpaceManager(hub)
    app.state.spaces = manager
    app.include_router(routes.router)
    # Middleware added later wraps it: RawPathMiddleware (app.py) still sees every request.
    app.add_middleware(proxy.SpacesProxy, manager=manager)
    return manager
