"""A Space's page, /spaces/{owner}/{name}: its app in a frame, the status badge, the build or
run logs, and its owners' restart and pause.

The app is the Space's own server, reverse-proxied by the Space runner (server/spaces/) under
`manager.app_prefix(repo)`; the frame loads `{prefix}/`. While the Space builds or starts, a
small script (cove.js) polls /api/spaces/{id}/runtime and reloads the page when the stage moves.

Logs go to those who may write to the Space only (the issue asks "its logs to the owner"). The
Hub shows a public Space's logs to anyone; Cove does not, because a Space's output can hold what
its secrets let it read, and a visitor needs only the stage. Others see the stage and a note.

The page's routes come before the repository pages' (web.install), so that /spaces/{o}/{n}
is this page and its Files and Commits tabs stay the repository pages'. When the server runs
no Spaces (`cove serve --no-spaces`), the Space's card is shown as any repository's.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from cove.server import errors
from cove.server.web.core import (
    PageRoute,
    checked_form,
    hub_of,
    redirect,
    render,
    sign_in_first,
)
from cove.server.web.repo_pages import load, repo_page

router = APIRouter(route_class=PageRoute, include_in_schema=False)
SPACE = "/spaces/{owner:owner}/{name}"
LOG_TAIL = 64 * 1024  # the end of a long log is the part that says what went wrong

# The Hub's stages (huggingface_hub's SpaceStage) as its page words them, and a badge style.
STAGES = {
    "NO_APP_FILE": ("No application file", "error"),
    "CONFIG_ERROR": ("Config error", "error"),
    "BUILDING": ("Building", "busy"),
    "BUILD_ERROR": ("Build error", "error"),
    "APP_STARTING": ("Starting", "busy"),
    "RUNNING": ("Running", "ok"),
    "RUNNING_BUILDING": ("Running (rebuilding)", "ok"),
    "RUNNING_APP_STARTING": ("Running (restarting)", "ok"),
    "RUNTIME_ERROR": ("Runtime error", "error"),
    "DELETING": ("Deleting", "idle"),
    "STOPPED": ("Stopped", "idle"),
    "PAUSED": ("Paused", "idle"),
    "SLEEPING": ("Sleeping", "idle"),
}
# Stages that change by themselves: the page polls the runtime while in one.
MOVING = {"BUILDING", "APP_STARTING", "RUNNING_BUILDING", "RUNNING_APP_STARTING"}
# Stages whose app answers: the frame is shown.
SERVING = {"RUNNING", "RUNNING_BUILDING", "RUNNING_APP_STARTING"}
# Which log tells what is going on, by stage.
LOG_OF = {"BUILDING": "build", "BUILD_ERROR": "build", "CONFIG_ERROR": "build",
          "APP_STARTING": "run", "RUNTIME_ERROR": "run"}


def stage_label(stage: str | None) -> tuple[str, str]:
    """(words, badge style) of a stage; an unknown one is shown as it is named."""
    if stage is None:
        return "Unknown", "idle"
    return STAGES.get(stage, (stage.replace("_", " ").capitalize(), "idle"))


def _tail(text: str) -> str:
    """The log's last LOG_TAIL characters, from a line's start."""
    if len(text) <= LOG_TAIL:
        return text
    cut = text[-LOG_TAIL:]
    return "… (earlier lines left out)\n" + cut[cut.find("\n") + 1:]


@router.get(SPACE, response_class=HTMLResponse)
async def space_page(request: Request, owner: str, name: str) -> Response:
    """The App tab: the app in a frame, its stage, and (to its owners) the logs. A visit
    wakes a sleeping Space, as on the Hub: the page then shows it building or starting."""
    manager = getattr(request.app.state, "spaces", None)
    if manager is None:
        return await run_in_threadpool(repo_page, request, "spaces/", owner, name)
    ctx = await run_in_threadpool(load, request, "spaces/", owner, name)
    repo = ctx.repo
    if manager.runtime(repo).get("stage") == "SLEEPING":
        await manager.wake(repo)
    runtime = manager.runtime(repo)
    stage = runtime.get("stage")
    logs = None
    which = LOG_OF.get(stage, "run")
    if ctx.can_write:
        logs = {kind: _tail(manager.logs(repo, kind)) for kind in ("build", "run")}
    return render(
        request, "space.html", ctx=ctx, tab="app", stage=stage,
        stage_label=stage_label(stage), moving=stage in MOVING, serving=stage in SERVING,
        app_src=manager.app_prefix(repo) + "/", logs=logs, which_log=which,
        error_message=runtime.get("errorMessage"),
    )


@router.post(SPACE + "/runtime", response_class=HTMLResponse)
async def space_control(request: Request, owner: str, name: str) -> Response:
    """An owner's Restart (which also resumes a paused Space) or Pause, from the App tab."""
    form = await checked_form(request)
    ctx = await run_in_threadpool(load, request, "spaces/", owner, name)
    if ctx.who is None:
        return sign_in_first(request)
    hub_of(request).check_write(ctx.repo.namespace, ctx.who, ctx.repo.repo_id)
    manager = getattr(request.app.state, "spaces", None)
    if manager is None:
        raise errors.HubError(404, "SpacesDisabled", "This Hub does not run Spaces.")
    action = form.get("action")
    if action == "restart":
        await manager.restart(ctx.repo)
    elif action == "pause":
        await manager.pause(ctx.repo)
    else:
        raise errors.bad_request("Unknown action: restart or pause.")
    return redirect(request, ctx.href)
