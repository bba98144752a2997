"""The FastAPI application: error headers everywhere, one router per resource."""

from __future__ import annotations

from contextlib import asynccontextmanager
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from cove.server import openapi
from cove.server.config import Settings
from cove.server.errors import HubError, error_response, validation_message
from cove.server.hub import Hub
from cove.server.routing import RawPathMiddleware


def create_app(settings: Settings, hub: Hub | None = None) -> FastAPI:
    """The Hub's ASGI application on `settings` (or on an existing `hub`)."""
    hub = hub or Hub(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        hub.recover()
        spaces = getattr(app.state, "spaces", None)
        if spaces is not None:
            await spaces.start()
        yield
        if spaces is not None:
            await spaces.close()  # no Space process outlives the server
        registry = getattr(app.state, "serving", None)
        if registry is not None:
            registry.close()

    app = FastAPI(
        title="Cove Hub",
        description="A self-hosted Hugging Face Hub: the HF Hub HTTP protocol, as the "
        "`huggingface_hub` client speaks it. Every error carries `X-Error-Code`.",
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url=None,  # served by openapi.install, from local assets
        redoc_url=None,
        # JSON bodies are read whatever their content type, as before FastAPI parsed them.
        strict_content_type=False,
        # Operation ids are the route names (one method per route), for client generators.
        generate_unique_id_function=lambda route: route.name,
    )
    app.state.hub = hub

    @app.exception_handler(HubError)
    async def _hub_error(request: Request, exc: HubError):
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        # The status's name as the code: BadRequest, NotFound, MethodNotAllowed, ...
        phrase = next((s.phrase for s in HTTPStatus if s == exc.status_code), "HTTP Error")
        code = phrase.replace(" ", "").replace("-", "")
        # Keep the exception's own headers: a 405 names the Allowed methods.
        headers = dict(exc.headers or {})
        return error_response(HubError(exc.status_code, code, str(exc.detail), headers=headers))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return error_response(HubError(400, "BadRequest", validation_message(exc.errors())))

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception):
        # Starlette logs the traceback after this answer; the client still gets the headers.
        return error_response(HubError(500, "InternalError", "Internal server error."))

    if settings.spaces:
        # Before the repository routes: /api/spaces/hardware is no Space's id.
        from cove.server import spaces

        spaces.install(app, hub)
    from cove.server.routers import accounts, files, lfs, refs, repos, tree, upload

    for module in (accounts, repos, refs, tree, upload, lfs, files):
        app.include_router(module.router)
    from cove.server.xet import routes as xet_routes  # the CAS: /v1/xorbs, /v1/shards, ...

    app.include_router(xet_routes.router)
    if settings.serving:
        # The inference endpoints; torch and the models load only on a first request.
        from cove.server.serving import metrics as serving_metrics
        from cove.server.serving import openai as openai_api
        from cove.server.serving import tasks as tasks_api
        from cove.server.serving.registry import Registry

        app.include_router(openai_api.router)
        app.include_router(tasks_api.router)
        app.include_router(serving_metrics.router)
        app.state.serving = Registry(hub)
    openapi.install(app)
    # The pages last: the API and the docs win any path both could match.
    from cove.server import web

    web.install(app)
    # Added last, so outermost: it runs before the Spaces proxy's middleware too.
    app.add_middleware(RawPathMiddleware)
    return app
