"""The SpaceManager: each Space's stage, its build and run, sleep, pause and crash backoff.

Spaces come up lazily: after a server start each Space sleeps until its first visit through
the proxy (or a restart, or a push to its main branch), so a Hub with many Spaces starts fast
and runs only those in use. All state lives on the server's event loop; the Hub's threads
reach it through `Hub.main_listeners` and `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import itertools
import logging
import re
import shutil
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import event, select

from cove.server import errors
from cove.server.db import Repository, SpaceSetting, SpaceVariable, utcnow
from cove.server.hub import Hub, Principal
from cove.server.spaces import runner
from cove.server.spaces.builder import Builder, BuildError, checkout, env_key, find_python
from cove.server.spaces.config import RunnerOptions, SpaceConfig, SpaceConfigError, parse_config
from cove.server.spaces.runner import Cgroup, Identity, SpacesDirError
from cove.server.spaces.upstream import Pool, UpstreamError

log = logging.getLogger("cove.spaces")

# Stages where nothing is under way: wait_running returns on them.
SETTLED = {"RUNNING", "BUILD_ERROR", "RUNTIME_ERROR", "CONFIG_ERROR", "NO_APP_FILE", "PAUSED"}
BACKOFF_FIRST = 10.0  # seconds before the first restart of a crashed app; doubles each time
BACKOFF_MAX = 600.0
STABLE_AFTER = 600.0  # an app that ran this long before crashing starts a fresh backoff
LOG_LINES = 5000
ERROR_TAIL = 30  # lines of the run log in a RUNTIME_ERROR's errorMessage
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,199}$")


class LogBuffer:
    """A log's last lines with their times; readers may follow it until it is closed."""

    def __init__(self, closed: bool = False) -> None:
        self.lines: collections.deque[tuple[str, str]] = collections.deque(maxlen=LOG_LINES)
        self.count = 0  # lines ever appended
        self.closed = closed  # nothing more will come: followers stop at the end
        self._changed = asyncio.Event()

    def append(self, text: str) -> None:
        # Whole seconds: huggingface_hub's fetch_space_logs stops at the first line stamped
        # after the response's Date + 1 s, and the server's Date lags the clock by up to a
        # second (refreshed once a second), so finer stamps could hide the newest lines.
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        for line in text.splitlines() or [""]:
            self.lines.append((stamp, line))
            self.count += 1
        self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def text(self) -> str:
        return "".join(line + "\n" for _, line in self.lines)

    def tail(self, n: int) -> str:
        return "\n".join(line for _, line in list(self.lines)[-n:])

    async def follow(self) -> AsyncIterator[tuple[str, str]]:
        """(timestamp, line) of every line kept, then of new ones until the log closes."""
        seen = self.count - len(self.lines)
        while True:
            first = self.count - len(self.lines)
            for i, item in enumerate(list(self.lines)[max(0, seen - first):]):
                yield item
                seen = max(seen, first) + i + 1
            seen = max(seen, self.count)
            if self.closed:
                return
            await self._changed.wait()


@dataclass
class Space:
    """One Space's runtime state (in memory; its settings live in SQL)."""

    repo_id: int
    full_id: str
    sdk: str | None
    sleep_time: int | None = None
    paused: bool = False
    stage: str = "SLEEPING"
    error: str | None = None
    sha: str | None = None  # the commit being built or run
    config: SpaceConfig | None = None
    port: int | None = None
    proc: runner.Process | None = None
    cgroup: Cgroup | None = None
    task: asyncio.Task | None = None
    failures: int = 0
    last_visit: float = field(default_factory=time.monotonic)
    running_since: float = 0.0
    active: int = 0  # proxied requests and WebSockets open now: no sleep while any is
    # Closed until a build or a run writes to them: nothing to follow yet.
    build_log: LogBuffer = field(default_factory=lambda: LogBuffer(closed=True))
    run_log: LogBuffer = field(default_factory=lambda: LogBuffer(closed=True))
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    env_key: str | None = None  # the environment it runs in


class SpaceManager:
    """Runs the Hub's Spaces; `app.state.spaces`."""

    def __init__(self, hub: Hub, options: RunnerOptions | None = None) -> None:
        self.hub = hub
        self.options = options or RunnerOptions()
        self.dir: Path = hub.settings.spaces_dir
        self.builder = Builder(self.dir, self.options)
        self.spaces: dict[int, Space] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self.unusable: str | None = None  # why Spaces cannot run here, if they cannot
        self.python = ""
        self._idle: asyncio.Task | None = None
        # The proxy's connections to the apps (and the start-up probes).
        self.upstreams = Pool()
        # The Spaces' rows as the proxy last read them, by (namespace, name), each with the
        # database generation it was read in: any commit to the Hub's database starts a new
        # one (visibility, a move, a delete, a push), so no row outlives a change. Writers in
        # other processes (`cove admin`) change accounts and tokens, never repositories.
        self._rows: dict[tuple[str, str], tuple[int, Repository]] = {}
        self._generations = itertools.count(1)  # next() is atomic: commits come from threads
        self._generation = 0
        event.listen(hub.sessions, "after_commit", self._committed)
        hub.main_listeners.append(self._on_main)
        # Cgroups are named per Spaces folder: several Hubs on one machine keep apart.
        tag = hashlib.sha256(str(self.dir).encode()).hexdigest()[:8]
        self._cgroup_prefix = f"cove-space-{tag}-"

    # -- life of the manager -------------------------------------------------------------
    async def start(self) -> None:
        """Prepare the Spaces folder (permissions) and start the sleep timer."""
        self.loop = asyncio.get_running_loop()
        if not runner.isolated():
            log.warning("Spaces run unisolated: the server is not root, so every Space runs "
                        "as the server's own user and can read the Hub's data folder.")
        try:
            runner.prepare_spaces_dir(self.dir, self.hub.settings.data_dir)
            # Space processes a killed server left behind in their cgroups end here.
            await asyncio.to_thread(runner.sweep_cgroups, self._cgroup_prefix)
            self.python = find_python(self.options)
        except (SpacesDirError, BuildError) as e:
            self.unusable = str(e)
            log.error("Spaces cannot run: %s", e)
        self._idle = asyncio.create_task(self._sleep_idle())

    async def close(self) -> None:
        """Stop every Space's processes (server shutdown)."""
        if self._idle:
            self._idle.cancel()
        await asyncio.gather(*(self._halt(s) for s in self.spaces.values()),
                             return_exceptions=True)
        self.upstreams.close()

    # -- the interface of the pages and the proxy ---------------------------------------
    def find(self, namespace: str, name: str,
             visitor: Callable[[], Principal | None]) -> Repository:
        """The Space `namespace/name` if the caller may see it, else RepoNotFound. The
        caller (`visitor()`, a token or session lookup) is asked for private Spaces only."""
        key = (namespace, name)
        hit = self._rows.get(key)
        if hit is not None and hit[0] == self._generation:
            repo = hit[1]
        else:
            generation = self._generation  # before the read: a commit meanwhile outdates it
            with self.hub.session() as s:
                repo = s.scalar(select(Repository).where(
                    Repository.type == "space", Repository.namespace == namespace,
                    Repository.name == name))
            if repo is None:
                raise errors.repo_not_found(f"{namespace}/{name}")
            self._rows[key] = (generation, repo)
        if repo.private and not self.hub.can_read(repo, visitor()):
            raise errors.repo_not_found(f"{namespace}/{name}")
        return repo

    def _committed(self, session) -> None:
        """After any commit to the Hub's database (any thread): the cached rows are old."""
        self._generation = next(self._generations)
        self._rows.clear()

    def runtime(self, repo: Repository) -> dict:
        """The Space's runtime as HF's SpaceRuntime JSON (`space_info().runtime`)."""
        space = self._space(repo)
        running = space.stage in ("RUNNING", "APP_STARTING")
        out = {
            "stage": space.stage,
            "hardware": {"current": "cpu-basic" if running else None, "requested": "cpu-basic"},
            "storage": None,
            "gcTimeout": self._sleep_time(space),
            "replicas": {"current": 1 if running else 0, "requested": 1},
            "devMode": False,
            "domains": [],
            "sdk": space.sdk,
            "sha": space.sha,
            "resources": {"cpus": self.options.cpus, "memoryGB": self.options.memory_gb},
        }
        if space.error:
            out["errorMessage"] = space.error
        return out

    def logs(self, repo: Repository, kind: str) -> str:
        """The build or run log's text (`kind` "build" or "run")."""
        return self.log_buffer(repo, kind).text()

    def log_buffer(self, repo: Repository, kind: str) -> LogBuffer:
        space = self._space(repo)
        if kind not in ("build", "run"):
            raise ValueError(f"unknown log {kind!r}: build or run")
        return space.build_log if kind == "build" else space.run_log

    @staticmethod
    def app_prefix(repo: Repository) -> str:
        """Where the proxied app lives: `{prefix}/`."""
        return f"/spaces/{repo.namespace}/{repo.name}/app"

    async def wait_running(self, repo: Repository, timeout: float) -> dict:
        """Wake the Space if it sleeps, then wait until it settles (RUNNING or an error);
        answers its runtime, TimeoutError when it is still building or starting."""
        space = await self.wake(repo)
        deadline = time.monotonic() + timeout
        while space.stage not in SETTLED:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"Space {space.full_id} is still {space.stage} after "
                                   f"{timeout:g} s")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(space.changed.wait(), left)
        return self.runtime(repo)

    async def wake(self, repo: Repository) -> Space:
        """A visit: the Space's idle timer restarts, and a sleeping Space starts."""
        space = self._space(repo)
        space.last_visit = time.monotonic()
        if space.stage == "SLEEPING":
            self._launch(space)
        return space

    def begin_visit(self, repo: Repository) -> Callable[[], None]:
        """A proxied request or WebSocket begins: the Space does not sleep until the function
        this answers is called (at its end), and its idle time counts from then."""
        space = self._space(repo)
        space.active += 1
        space.last_visit = time.monotonic()
        ended = False

        def end() -> None:
            nonlocal ended
            if not ended:
                ended = True
                space.active -= 1
                space.last_visit = time.monotonic()

        return end

    def upstream(self, repo: Repository) -> tuple[int, bool] | None:
        """(port, whether the app expects the proxy's prefix kept) of a running app."""
        space = self._space(repo)
        if space.stage != "RUNNING" or space.port is None:
            return None
        return space.port, space.sdk == "streamlit"

    # -- owner's actions (the API) -------------------------------------------------------
    async def restart(self, repo: Repository, factory: bool = False) -> dict:
        """Rebuild (from scratch with `factory`) and start; a paused Space resumes."""
        space = self._space(repo)
        await asyncio.to_thread(self._save_setting, space, paused=False)
        space.paused = False
        space.failures = 0
        if factory and space.config is not None:
            await self._halt(space)
            key = env_key(space.config, self.python, repo.namespace)
            sharing = [s.full_id for s in self.spaces.values()
                       if s is not space and s.env_key == key and s.proc is not None]
            if sharing:  # removing it would break apps that import from it while running
                space.build_log.append("Factory reboot: the environment is kept, as running "
                                       "Spaces use it: " + ", ".join(sharing))
            else:
                await asyncio.to_thread(self.builder.forget, key)
        self._launch(space)
        return self.runtime(repo)

    async def pause(self, repo: Repository) -> dict:
        space = self._space(repo)
        await asyncio.to_thread(self._save_setting, space, paused=True)
        space.paused = True
        await self._halt(space)
        self._set(space, "PAUSED")
        return self.runtime(repo)

    async def set_sleep_time(self, repo: Repository, seconds: int) -> dict:
        space = self._space(repo)
        await asyncio.to_thread(self._save_setting, space, sleep_time=seconds)
        space.sleep_time = seconds
        return self.runtime(repo)

    def variables(self, repo: Repository, kind: str) -> dict[str, dict]:
        """The Space's variables or secrets (`kind`) as HF lists them; secrets without values."""
        with self.hub.session() as s:
            rows = s.scalars(select(SpaceVariable).where(
                SpaceVariable.repo_id == repo.id, SpaceVariable.kind == kind
            ).order_by(SpaceVariable.key)).all()
        out = {}
        for row in rows:
            item = {"description": row.description,
                    "updatedAt": row.updated_at.strftime("%Y-%m-%dT%H:%M:%S.000Z")}
            if kind == "variable":
                item["value"] = row.value
            out[row.key] = item
        return out

    async def set_variable(self, repo: Repository, kind: str, key: str, value: str,
                           description: str | None) -> None:
        """Add or replace a variable or secret; a running Space restarts to see it."""
        if not _KEY.match(key):
            raise ValueError(f"Invalid {kind} key {key!r}: letters, digits and '_', not "
                             "starting with a digit (an environment variable's name).")

        def write() -> None:
            with self.hub.session() as s:
                row = s.get(SpaceVariable, (repo.id, kind, key))
                if row is None:
                    row = SpaceVariable(repo_id=repo.id, kind=kind, key=key)
                    s.add(row)
                row.value = value
                if description is not None or row.description is None:
                    row.description = description
                row.updated_at = utcnow()
                s.commit()

        await asyncio.to_thread(write)
        self._restart_if_up(repo)

    async def delete_variable(self, repo: Repository, kind: str, key: str) -> None:
        def remove() -> None:
            with self.hub.session() as s:
                row = s.get(SpaceVariable, (repo.id, kind, key))
                if row is not None:
                    s.delete(row)
                    s.commit()

        await asyncio.to_thread(remove)
        self._restart_if_up(repo)

    def _restart_if_up(self, repo: Repository) -> None:
        space = self._space(repo)
        if space.stage not in ("SLEEPING", "PAUSED"):
            self._launch(space)

    # -- state ---------------------------------------------------------------------------
    def _space(self, repo: Repository) -> Space:
        space = self.spaces.get(repo.id)
        if space is None:
            with self.hub.session() as s:
                setting = s.get(SpaceSetting, repo.id)
            space = Space(repo.id, repo.repo_id, repo.sdk, sha=repo.sha)
            if setting is not None:
                space.sleep_time, space.paused = setting.sleep_time, setting.paused
            space.stage = "PAUSED" if space.paused else "SLEEPING"
            if self.unusable:
                space.stage, space.error = "CONFIG_ERROR", self.unusable
            elif (repo.sdk or "").lower() == "static" and not space.paused:
                # Nothing to build or start: its files are served from main as they are.
                try:
                    space.sha, space.config = self._read_config(space)
                    space.stage = "RUNNING" if space.config.sdk == "static" else "SLEEPING"
                except SpaceConfigError as e:
                    space.stage, space.error = e.stage, str(e)
            self.spaces[repo.id] = space
        space.full_id = repo.repo_id
        return space

    def _sleep_time(self, space: Space) -> int:
        return space.sleep_time if space.sleep_time is not None else self.options.sleep_time

    def _save_setting(self, space: Space, **values) -> None:
        with self.hub.session() as s:
            row = s.get(SpaceSetting, space.repo_id)
            if row is None:
                row = SpaceSetting(repo_id=space.repo_id, paused=False)
                s.add(row)
            for name, value in values.items():
                setattr(row, name, value)
            s.commit()

    def _set(self, space: Space, stage: str, error: str | None = None) -> None:
        space.stage, space.error = stage, error
        space.changed.set()
        space.changed = asyncio.Event()

    def _on_main(self, repo: Repository, sha: str) -> None:
        """Hub.refresh_main's listener (any thread): a push restarts the Space."""
        if repo.type != "space" or self.loop is None or self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self._pushed, repo, sha)

    def _pushed(self, repo: Repository, sha: str) -> None:
        space = self._space(repo)
        space.sha, space.failures = sha, 0
        if space.paused or self.unusable:
            return
        self._launch(space)

    # -- running -------------------------------------------------------------------------
    def _launch(self, space: Space) -> None:
        """(Re)start the Space's build and run, replacing whatever runs now."""
        if self.unusable:
            self._set(space, "CONFIG_ERROR", self.unusable)
            return
        previous = space.task
        self._set(space, "BUILDING")
        space.task = asyncio.create_task(self._lifecycle(space, previous))

    async def _halt(self, space: Space) -> None:
        """Stop the Space's task and its processes."""
        task, space.task = space.task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._stop_process(space)
        space.build_log.close()
        space.run_log.close()

    async def _stop_process(self, space: Space) -> None:
        proc, space.proc = space.proc, None
        if proc is not None:
            await runner.stop(proc, space.cgroup)
        elif space.cgroup is not None:
            space.cgroup.kill_all()
            space.cgroup.remove()
        if space.port is not None:
            self.upstreams.forget(space.port)
        space.cgroup, space.port = None, None

    async def _lifecycle(self, space: Space, previous: asyncio.Task | None) -> None:
        if previous is not None and not previous.done():
            previous.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await previous
        await self._stop_process(space)
        try:
            await self._build_and_run(space)
        except asyncio.CancelledError:
            await self._stop_process(space)
            raise
        except Exception as e:  # a bug here must show on the Space, not vanish in a task
            log.exception("Space %s failed", space.full_id)
            space.build_log.close()
            self._set(space, "RUNTIME_ERROR", f"Internal error of the Space runner: {e}")
            await self._stop_process(space)
            space.run_log.close()

    async def _build_and_run(self, space: Space) -> None:
        space.build_log.close()
        space.build_log = LogBuffer()
        blog = space.build_log
        try:
            sha, config = await asyncio.to_thread(self._read_config, space)
        except SpaceConfigError as e:
            blog.append(str(e))
            blog.close()
            self._set(space, e.stage, str(e))
            return
        space.sha, space.config = sha, config
        for warning in config.warnings:
            blog.append(f"Warning: {warning}")
        if config.sdk == "static":
            blog.append(f"Static Space: serving {config.app_file} and its files from {sha}.")
            blog.close()
            self._set(space, "RUNNING")
            return
        who = Identity.for_repo(space.repo_id, self.options.uid_base)
        home = runner.own_dir(self.dir / "home" / str(space.repo_id), who)
        space.cgroup = Cgroup.create(
            f"{self._cgroup_prefix}{space.repo_id}", self._memory_bytes(), self.options.cpus, who
        )
        try:
            if config.packages:
                await self._packages(config, blog)
            key = env_key(config, self.python, space.full_id.split("/")[0])

            space.env_key = key

            async def run(argv: list[str], env: dict[str, str], cwd: Path) -> int:
                return await self._run_step(space, argv, env, cwd, who, blog)

            env_dir = await self.builder.ensure(key, config, self.python, who, home,
                                                blog.append, run)
        except BuildError as e:
            blog.append(f"Build failed: {e}.")
            blog.close()
            self._set(space, "BUILD_ERROR", f"Build failed: {e}. The build log ends with:\n"
                      + blog.tail(ERROR_TAIL))
            return
        work = self.dir / "work" / str(space.repo_id)
        await asyncio.to_thread(self._checkout, space, sha, work, who)
        blog.append("Starting the app.")
        blog.close()
        await self._run_app(space, config, env_dir, work, home, who)

    async def _run_app(self, space: Space, config: SpaceConfig, env_dir: Path, work: Path,
                       home: Path, who: Identity) -> None:
        """Start the app; on a crash, start it again after a growing pause."""
        space.run_log.close()
        space.run_log = LogBuffer()
        while True:
            self._set(space, "APP_STARTING")
            port = _free_port()
            argv = self._command(space, config, env_dir, port)
            env = await asyncio.to_thread(self._app_env, space, config, env_dir, home, port)
            space.run_log.append(f"===== Application startup at {_now()} =====")
            space.proc = await runner.spawn(argv, work, env, who, space.cgroup,
                                            self._memory_bytes())
            space.port = port
            pump = asyncio.create_task(_pump(space.proc, space.run_log))
            started = await self._await_port(space, space.proc, port)
            if started:
                self._set(space, "RUNNING")
                since = space.running_since = time.monotonic()
                code = await space.proc.wait()
                if time.monotonic() - since >= STABLE_AFTER:
                    space.failures = 0
            else:
                code = space.proc.returncode
            # The output ends with the process, unless something it started holds it open.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(pump, 5)
            if code is not None:
                await runner.stop(space.proc, None, grace=0)  # what it left in its session
            if code is None:  # it never answered on its port
                await self._stop_process(space)
                message = (f"The app did not open its port within "
                           f"{self.options.start_timeout:g} s: stopped.")
                space.run_log.append(message)
                space.run_log.close()
                self._set(space, "RUNTIME_ERROR", message)
                return
            self.upstreams.forget(port)
            space.proc, space.port = None, None
            space.failures += 1
            delay = min(BACKOFF_FIRST * 2 ** (space.failures - 1), BACKOFF_MAX)
            space.run_log.append(f"The app exited with status {code}; restarting in "
                                 f"{delay:g} s.")
            self._set(space, "RUNTIME_ERROR",
                      f"Exit code: {code}. Reason: {space.run_log.tail(ERROR_TAIL)}")
            await asyncio.sleep(delay)

    async def _await_port(self, space: Space, proc, port: int) -> bool:
        """Whether the app answers HTTP on `port` before it exits or the timeout passes;
        on the timeout it is still running (returncode None)."""
        deadline = time.monotonic() + self.options.start_timeout
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                return False
            probe = self.upstreams.exchange(port)
            try:
                await asyncio.wait_for(
                    probe.request("GET", b"/", [(b"host", b"127.0.0.1:%d" % port)]), 2.0)
                return True
            except (UpstreamError, asyncio.TimeoutError):
                await asyncio.sleep(0.25)
            finally:
                probe.close()
        return False

    def _command(self, space: Space, config: SpaceConfig, env_dir: Path, port: int) -> list[str]:
        python = str(env_dir / "bin" / "python")
        if config.sdk == "streamlit":
            return [python, "-m", "streamlit", "run", config.app_file,
                    "--server.port", str(port), "--server.address", "127.0.0.1",
                    "--server.headless", "true", "--browser.gatherUsageStats", "false",
                    "--server.baseUrlPath", self._prefix(space).strip("/"),
                    # Behind the Hub's proxy, on the Hub's origin: its own CORS and XSRF
                    # checks would refuse the proxied browser (the Hub's origin != its own).
                    "--server.enableCORS", "false", "--server.enableXsrfProtection", "false",
                    "--server.fileWatcherType", "none"]
        return [python, config.app_file]

    def _prefix(self, space: Space) -> str:
        return f"/spaces/{space.full_id}/app"

    def _app_env(self, space: Space, config: SpaceConfig, env_dir: Path, home: Path,
                 port: int) -> dict[str, str]:
        """The app's environment: nothing of the server's, the Space's variables and
        secrets, then what a Space expects (which they cannot override)."""
        with self.hub.session() as s:
            rows = s.scalars(select(SpaceVariable).where(
                SpaceVariable.repo_id == space.repo_id)).all()
        env = {r.key: r.value for r in rows if r.kind == "variable"}
        env.update({r.key: r.value for r in rows if r.kind == "secret"})
        owner, _, name = space.full_id.partition("/")
        hub_url = self.options.hub_url or "http://127.0.0.1:8000"
        env.update(
            PATH=f"{env_dir}/bin:/usr/local/bin:/usr/bin:/bin", HOME=str(home),
            LANG="C.UTF-8", PYTHONUNBUFFERED="1",
            SPACE_ID=space.full_id, SPACE_AUTHOR_NAME=owner, SPACE_REPO_NAME=name,
            SPACE_HOST=urlsplit(hub_url).netloc, HF_ENDPOINT=hub_url,
        )
        if config.sdk == "gradio":
            env.update(GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port),
                       GRADIO_ROOT_PATH=self._prefix(space), GRADIO_ANALYTICS_ENABLED="False")
        return env

    async def _run_step(self, space: Space, argv: list[str], env: dict[str, str], cwd: Path,
                        who: Identity, blog: LogBuffer) -> int:
        """One build step as the Space's user, its output into the build log."""
        proc = await runner.spawn(argv, cwd, env, who, space.cgroup, self._memory_bytes())
        try:
            await _pump(proc, blog)
            return await proc.wait()
        finally:
            # Whatever the step left running (or all of it, when cancelled) goes too, also
            # what left its session: nothing of the Space may run while root seals its files.
            await runner.stop(proc, None, grace=0)
            if space.cgroup is not None:
                space.cgroup.kill_all()

    async def _packages(self, config: SpaceConfig, blog: LogBuffer) -> None:
        names = " ".join(config.packages)
        if not self.options.apt:
            blog.append(f"packages.txt lists Debian packages ({names}): not installed on this "
                        "Hub (its admin allows it with COVE_SPACES_APT=1).")
            return
        blog.append(f"Installing Debian packages: {names}")
        proc = await asyncio.create_subprocess_exec(
            "apt-get", "install", "-y", "--no-install-recommends", *config.packages,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive"},
        )
        await _pump(proc, blog)
        if await proc.wait() != 0:
            raise BuildError("apt-get install of packages.txt failed")

    def _memory_bytes(self) -> int:
        return int(self.options.memory_gb * 2**30)

    # -- the repository ------------------------------------------------------------------
    def _read_config(self, space: Space) -> tuple[str, SpaceConfig]:
        """The Space's main head and its config (in a worker thread)."""
        with self.hub.session() as s:
            repo = s.get(Repository, space.repo_id)
        if repo is None:
            raise SpaceConfigError("CONFIG_ERROR", "The Space's repository is gone.")
        git = self.hub.git(repo)
        try:
            sha = git.resolve("main")
            if sha is None:
                raise SpaceConfigError("NO_APP_FILE", "The Space has no main branch.")

            def read(path: str) -> bytes | None:
                entry = git.entry(sha, path)
                return git.read_blob(entry.oid) if entry and entry.type == "file" else None

            config = parse_config(read("README.md"), read("requirements.txt"),
                                  read("packages.txt"), repo.sdk)
            app = git.entry(sha, config.app_file)
            if app is None or app.type != "file":
                raise SpaceConfigError("NO_APP_FILE",
                                       f"No application file: {config.app_file} is missing "
                                       "from main.")
        finally:
            git.close()
        space.sdk = config.sdk
        return sha, config

    def _checkout(self, space: Space, sha: str, work: Path, who: Identity) -> None:
        with self.hub.session() as s:
            repo = s.get(Repository, space.repo_id)
        git = self.hub.git(repo)
        try:
            files = [(e.path, _reader(self.hub, git, e)) for e in git.files(sha)
                     if e.path != ".gitattributes"]
            checkout(files, work, who)
        finally:
            git.close()

    def read_file(self, repo: Repository, sha: str, path: str) -> bytes | None:
        """A file of the Space at `sha` (LFS and Xet files materialised); None when missing."""
        git = self.hub.git(repo)
        try:
            entry = git.entry(sha, path)
            if entry is None or entry.type != "file":
                return None
            return _reader(self.hub, git, entry)()
        finally:
            git.close()

    # -- sleep ---------------------------------------------------------------------------
    async def _sleep_idle(self) -> None:
        """Every few seconds: a running app idle past its sleep time is stopped (SLEEPING)."""
        while True:
            await asyncio.sleep(5)
            await self._forget_deleted()
            now = time.monotonic()
            for space in list(self.spaces.values()):
                if space.stage != "RUNNING" or space.sdk == "static" or space.active:
                    continue
                idle = now - max(space.last_visit, space.running_since)
                if idle > self._sleep_time(space):
                    space.run_log.append(f"===== Sleeping after {self._sleep_time(space)} s "
                                         "without visits =====")
                    await self._halt(space)
                    self._set(space, "SLEEPING")


    async def _forget_deleted(self) -> None:
        """Spaces whose repository was deleted: stopped, their folders removed."""
        ids = list(self.spaces)
        if not ids:
            return

        def existing() -> set[int]:
            with self.hub.session() as s:
                return set(s.scalars(select(Repository.id).where(Repository.id.in_(ids))))

        for repo_id in set(ids) - await asyncio.to_thread(existing):
            space = self.spaces.pop(repo_id)
            await self._halt(space)
            for folder in ("work", "home"):
                await asyncio.to_thread(shutil.rmtree, self.dir / folder / str(repo_id), True)


def _reader(hub: Hub, git, entry):
    """A function reading the file `entry`'s bytes: git blob, LFS object or Xet file."""
    if entry.lfs is None:
        return lambda: git.read_blob(entry.oid)
    oid = entry.lfs.oid

    def read() -> bytes:
        if hub.objects.size(oid) is not None:
            with hub.objects.open(oid) as f:
                return f.read()
        xet_file = hub.xet.file_by_sha256(oid)
        if xet_file is None:
            raise BuildError(f"the LFS object of {entry.path} ({oid}) is missing")
        return b"".join(hub.xet.stream(xet_file, 0, entry.size))

    return read


async def _pump(proc: runner.Process, log: LogBuffer) -> None:
    """Copy the process's output into `log`, line by line, until it closes."""
    while True:
        try:
            line = await proc.stdout.readline()
        except ValueError:  # a line longer than the limit: take what is there
            line = await proc.stdout.read(1 << 16)
        if not line:
            return
        log.append(line.decode("utf-8", "replace").rstrip("\n"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
