"""The FastAPI application: error headers everywhere, one router per resource."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from cove.server.config import Settings
from cove.server.errors import HubError, error_response
from cove.server.hub import Hub
from cove.server.routing import RawPathMiddleware


def create_app(settings: Settings, hub: Hub | None = None) -> FastAPI:
    hub = hub or Hub(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        hub.recover()
        yield

    app = FastAPI(
        title="Cove Hub", lifespan=lifespan, docs_url="/api/docs", redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.hub = hub

    @app.exception_handler(HubError)
    async def _hub_error(request: Request, exc: HubError):
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "NotFound", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
        return error_response(HubError(exc.status_code, code, str(exc.detail)))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return error_response(HubError(400, "BadRequest", f"Invalid request: {exc.errors()}"))

    from cove.server.routers import accounts, files, lfs, refs, repos, tree, upload

    for module in (accounts, repos, refs, tree, upload, lfs, files):
        app.include_router(module.router)
    app.add_middleware(RawPathMiddleware)
    return app
