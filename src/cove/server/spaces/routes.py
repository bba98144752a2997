"""The Spaces API as huggingface_hub calls it: runtime, restart, pause, sleep time, secrets,
variables, hardware and the build and run logs (server-sent events)."""

from __future__ import annotations

import json
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from pydantic import Field
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from cove.server import errors
from cove.server.db import Repository
from cove.server.deps import RepoIdParam, RequestBody, load_repo
from cove.server.openapi import error_responses

router = APIRouter(tags=["spaces"])
HARDWARE = [{"name": "cpu-basic", "prettyName": "CPU basic", "cpu": "2 vCPU", "ram": "16 GB",
             "accelerator": None, "unitCostMicroUSD": 0, "unitCostUSD": 0.0,
             "unitLabel": "hour"}]


class SleepTime(RequestBody):
    seconds: int = Field(ge=-1, description="Idle seconds before the Space sleeps; -1: never.")


class KeyValue(RequestBody):
    key: str = Field(min_length=1, max_length=200)
    value: str = ""
    description: str | None = None


class Key(RequestBody):
    key: str = Field(min_length=1, max_length=200)


class Flavor(RequestBody):
    flavor: str
    sleepTimeSeconds: int | None = None


def _manager(request: Request):
    manager = getattr(request.app.state, "spaces", None)
    if manager is None:
        raise errors.HubError(404, "SpacesDisabled", "This Hub does not run Spaces "
                              "(started with --no-spaces).")
    return manager


async def _space(request: Request, repo_id: str, write: bool = False) -> Repository:
    repo, _ = await run_in_threadpool(load_repo, request, "spaces", repo_id, write)
    return repo


@router.get("/api/spaces/hardware", responses=error_responses())
def list_hardware() -> list[dict]:
    """The hardware Spaces may ask for: this Hub's CPUs only."""
    return HARDWARE


@router.get("/api/spaces/{repo_id:repo}/runtime", responses=error_responses(401, 404))
async def get_runtime(request: Request, repo_id: RepoIdParam) -> dict:
    """The Space's stage, hardware and sleep time."""
    return _manager(request).runtime(await _space(request, repo_id))


@router.post("/api/spaces/{repo_id:repo}/restart", responses=error_responses(401, 403, 404))
async def restart(
    request: Request, repo_id: RepoIdParam,
    factory: Annotated[bool, Query(description="Rebuild the environment from scratch.")] = False,
) -> dict:
    """Rebuild and start the Space (a paused one resumes)."""
    repo = await _space(request, repo_id, write=True)
    return await _manager(request).restart(repo, factory)


@router.post("/api/spaces/{repo_id:repo}/pause", responses=error_responses(401, 403, 404))
async def pause(request: Request, repo_id: RepoIdParam) -> dict:
    """Stop the Space until its owner restarts it (visits do not wake it)."""
    repo = await _space(request, repo_id, write=True)
    return await _manager(request).pause(repo)


@router.post("/api/spaces/{repo_id:repo}/sleeptime", responses=error_responses(400, 401, 403, 404))
async def sleep_time(request: Request, repo_id: RepoIdParam, body: SleepTime) -> dict:
    """Seconds without visits after which the Space sleeps."""
    repo = await _space(request, repo_id, write=True)
    seconds = 2**31 - 1 if body.seconds == -1 else body.seconds
    return await _manager(request).set_sleep_time(repo, seconds)


@router.post("/api/spaces/{repo_id:repo}/hardware", responses=error_responses(400, 401, 403, 404))
async def request_hardware(request: Request, repo_id: RepoIdParam, body: Flavor) -> dict:
    """Only `cpu-basic` exists here: the Hub's own CPUs."""
    repo = await _space(request, repo_id, write=True)
    if body.flavor != "cpu-basic":
        raise errors.bad_request(f"Hardware {body.flavor!r} is not available on this Hub: "
                                 "Spaces run on its CPUs (cpu-basic).")
    manager = _manager(request)
    if body.sleepTimeSeconds is not None:
        return await manager.set_sleep_time(repo, body.sleepTimeSeconds)
    return manager.runtime(repo)


def _kind_routes(kind: Literal["secret", "variable"]) -> None:
    plural = f"{kind}s"

    @router.get(f"/api/spaces/{{repo_id:repo}}/{plural}", name=f"list_space_{plural}",
                responses=error_responses(401, 403, 404))
    async def listing(request: Request, repo_id: RepoIdParam) -> dict:
        repo = await _space(request, repo_id, write=True)
        return await run_in_threadpool(_manager(request).variables, repo, kind)

    @router.post(f"/api/spaces/{{repo_id:repo}}/{plural}", name=f"add_space_{kind}",
                 responses=error_responses(400, 401, 403, 404))
    async def add(request: Request, repo_id: RepoIdParam, body: KeyValue) -> dict:
        repo = await _space(request, repo_id, write=True)
        manager = _manager(request)
        try:
            await manager.set_variable(repo, kind, body.key, body.value, body.description)
        except ValueError as e:
            raise errors.bad_request(str(e)) from None
        return {} if kind == "secret" else await run_in_threadpool(manager.variables, repo, kind)

    @router.delete(f"/api/spaces/{{repo_id:repo}}/{plural}", name=f"delete_space_{kind}",
                   responses=error_responses(401, 403, 404))
    async def delete(request: Request, repo_id: RepoIdParam, body: Key) -> dict:
        repo = await _space(request, repo_id, write=True)
        manager = _manager(request)
        await manager.delete_variable(repo, kind, body.key)
        return {} if kind == "secret" else await run_in_threadpool(manager.variables, repo, kind)


_kind_routes("secret")
_kind_routes("variable")


@router.get("/api/spaces/{repo_id:repo}/logs/{kind}", responses=error_responses(401, 403, 404))
async def logs(request: Request, repo_id: RepoIdParam, kind: Literal["build", "run"]):
    """The build or run log as server-sent events, one `data: {"data", "timestamp"}` per
    line; the stream follows the log while its build or run goes on."""
    repo = await _space(request, repo_id, write=True)
    buffer = _manager(request).log_buffer(repo, kind)

    async def events():
        async for stamp, line in buffer.follow():
            if await request.is_disconnected():
                return
            yield f"data: {json.dumps({'data': line + chr(10), 'timestamp': stamp})}\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
