"""The OpenAPI document (`/openapi.json`) and the interactive docs (`/docs`), served offline.

Routers document their errors with `error_responses`; `install` finishes the document (the
token scheme, 400 in place of FastAPI's 422) and serves Swagger UI from a local package, since
a self-hosted server may have no way to reach a CDN.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, TypeAdapter
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

TOKEN_SCHEME = "token"
# Under /static, a name no account can take (hub.RESERVED), so no repository URL is shadowed.
SWAGGER_ASSETS = "/static/swagger-ui"
# Operations that never look at the token: signed URLs carry their own authorization.
NO_TOKEN: dict[str, Any] = {"security": []}


class HubErrorBody(BaseModel):
    """The body of every error; some errors add fields (a 409 on create adds `url`)."""

    model_config = ConfigDict(extra="allow")
    error: str


ERROR_HEADERS = {
    "X-Error-Code": {
        "description": "Machine-readable error code (RepoNotFound, EntryNotFound, ...): "
        "clients map errors by it, not by status.",
        "schema": {"type": "string"},
        "required": True,
    },
    "X-Error-Message": {
        "description": "The error message, on one latin-1 line.",
        "schema": {"type": "string"},
        "required": True,
    },
}

_MEANING = {
    400: "Invalid parameters or body (BadRequest, InvalidPath, InvalidRepoName), or NUL in "
    "the URL.",
    401: "The token is invalid, or this needs a token (Unauthorized).",
    403: "The token may not do this: read-only, or another account's namespace (Forbidden).",
    404: "RepoNotFound (also for a private repository the caller may not see), "
    "RevisionNotFound or EntryNotFound.",
    409: "It already exists (Conflict).",
    412: "The branch moved since `parentCommit` (PreconditionFailed).",
    416: "The Range lies outside the file (RangeNotSatisfiable).",
    422: "An LFS object was not uploaded, or has another size.",
    500: "An LFS object the repository refers to is missing from storage (LfsObjectMissing).",
    501: "Not supported by this server yet (NotImplemented).",
}


def error_responses(*statuses: int, **meanings: str) -> dict[int | str, dict[str, Any]]:
    """The `responses=` of a route that can answer `statuses`; 400 is always among them.

    `meanings` overrides a status's description, keyed `s404=...` (keywords cannot be numbers).
    """
    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted({400, *statuses}):
        out[status] = {
            "model": HubErrorBody,
            "description": meanings.get(f"s{status}", _MEANING[status]),
            "headers": ERROR_HEADERS,
        }
    return out


def inline_schema(adapter: TypeAdapter) -> dict[str, Any]:
    """The JSON schema of `adapter`'s type for `openapi_extra`, its definitions inlined.

    Pydantic refers to nested models as `#/$defs/...`, which inside the OpenAPI document
    would point at its root; discriminator mappings hold such refs too, so they go (each
    branch's `const` key tells the branches apart all the same).
    """
    schema = adapter.json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return inline(defs[ref.removeprefix("#/$defs/")])
            return {
                k: inline(v) for k, v in node.items()
                if not (k == "discriminator" and isinstance(v, dict) and "propertyName" in v)
            }
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    return inline(schema)


def _document(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    for operations in doc.get("paths", {}).values():
        for operation in operations.values():
            # FastAPI's own 422: validation errors are answered as 400 BadRequest (app.py),
            # which every route lists. A 422 of the route's own stays.
            responses = operation["responses"]
            if "HTTPValidationError" in str(responses.get("422", {}).get("content")):
                del responses["422"]
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    doc["components"]["securitySchemes"] = {
        TOKEN_SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "description": "An access token (`cove admin token create`). Optional for "
            "reading public repositories; a write token for any change.",
        }
    }
    doc["security"] = [{TOKEN_SCHEME: []}, {}]  # the empty requirement: anonymous works too
    app.openapi_schema = doc
    return doc


def install(app: FastAPI) -> None:
    """Serve `app.openapi_url` with the finished document and Swagger UI at `/docs`.

    Call after the routers are included: the asset mount must come after every repository
    route so that it never answers for one.
    """
    app.version = metadata.version("cove")
    app.openapi = lambda: _document(app)  # type: ignore[method-assign]
    app.mount(SWAGGER_ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} API",
            swagger_js_url=f"{root}{SWAGGER_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{SWAGGER_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{SWAGGER_ASSETS}/favicon-32x32.png",
            # Swagger UI would otherwise send the document to validator.swagger.io.
            swagger_ui_parameters={"validatorUrl": None},
        )
