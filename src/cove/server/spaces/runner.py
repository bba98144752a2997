"""Process supervision: each Space's processes run as a user of their own, in a cgroup with
memory and CPU limits, in their own session so that stopping one stops all it started."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import resource
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("cove.spaces")

# Space users: uid = gid = base + the repository's id (never a real account's id).
SPACE_UID_BASE = 200_000
CGROUP_ROOT = Path("/sys/fs/cgroup")
CPU_PERIOD_US = 100_000


class SpacesDirError(RuntimeError):
    """The Spaces folder cannot be used safely; the message says what to change."""


@dataclass(frozen=True)
class Identity:
    """Who a Space's processes run as; uid None when the server is not root (unisolated)."""

    uid: int | None
    gid: int | None

    @classmethod
    def for_repo(cls, repo_id: int, base: int = SPACE_UID_BASE) -> Identity:
        if os.geteuid() != 0:
            return cls(None, None)
        return cls(base + repo_id, base + repo_id)

    def popen_args(self) -> dict:
        """subprocess arguments that drop to this user, with no supplementary groups."""
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def isolated() -> bool:
    return os.geteuid() == 0


def own_dir(path: Path, who: Identity, mode: int = 0o700) -> Path:
    """`path` as a folder owned by `who` with `mode` (created if missing)."""
    path.mkdir(parents=True, exist_ok=True)
    if who.uid is not None:
        os.chown(path, who.uid, who.gid)
    os.chmod(path, mode)
    return path


def chown_tree(root: Path, uid: int, gid: int) -> None:
    """chown everything under `root` to uid:gid; see `_each_entry` for links."""
    for dir_fd, name in _each_entry(root):
        os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)


def make_public_readonly(root: Path) -> None:
    """Root owns everything under `root`; everyone may read (and run) it, nobody else may
    change it."""
    for dir_fd, name in _each_entry(root):
        os.chown(name, 0, 0, dir_fd=dir_fd, follow_symlinks=False)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
        except OSError:  # a symbolic link (or a socket): its mode means nothing
            continue
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
                os.fchmod(fd, 0o755 if stat.S_ISDIR(mode) or mode & 0o111 else 0o644)
        finally:
            os.close(fd)


def _each_entry(root: Path):
    """(dir_fd, name) of `root` and of everything under it, walked through folder handles
    that never follow a symbolic link: a Space's process that swaps a folder for a link
    while root walks its files cannot turn root's chown or chmod onto another path."""
    for top, dirs, files, dir_fd in os.fwalk(root, follow_symlinks=False):
        if top == str(root):
            yield dir_fd, "."
        for name in dirs + files:
            yield dir_fd, name


def prepare_spaces_dir(spaces_dir: Path, data_dir: Path) -> None:
    """Make the Spaces folder usable by Space users and the Hub's data unreadable to them.

    The Spaces folder is 0711 (traversable, not listable); every parent must let other users
    through (o+x). When isolated, the data folder becomes 0711 and its other entries 0700 or
    0600, so that a Space can reach its own folders under it but read nothing of the Hub's.
    """
    spaces_dir.mkdir(parents=True, exist_ok=True)
    if not isolated():
        return
    os.chmod(spaces_dir, 0o711)
    for sub in ("envs", "work", "home"):
        (spaces_dir / sub).mkdir(exist_ok=True)
        os.chmod(spaces_dir / sub, 0o711)
    for parent in spaces_dir.parents:
        if parent == data_dir:
            continue  # made 0711 below
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            raise SpacesDirError(
                f"The Spaces folder {spaces_dir} is not reachable by Space users: {parent} is "
                f"mode {stat.S_IMODE(mode):04o} (others may not pass through it). Set "
                "COVE_SPACES_DIR to a folder whose parents are all o+x (for example "
                "/srv/cove-spaces), or serve with --no-spaces."
            )
    os.chmod(data_dir, 0o711)
    for entry in data_dir.iterdir():
        if entry == spaces_dir or spaces_dir.is_relative_to(entry):
            continue
        st = entry.lstat()
        if stat.S_ISDIR(st.st_mode):
            os.chmod(entry, stat.S_IMODE(st.st_mode) & 0o700)
        elif stat.S_ISREG(st.st_mode):
            os.chmod(entry, stat.S_IMODE(st.st_mode) & 0o700)


class Cgroup:
    """A cgroup v1 pair (memory, cpu) for one Space; None from `create` where the hierarchy
    is missing or not writable (then `rlimits` stand in)."""

    def __init__(self, dirs: dict[str, Path]) -> None:
        self.dirs = dirs

    @classmethod
    def create(cls, name: str, memory_bytes: int, cpus: float, who: Identity) -> Cgroup | None:
        own = _own_cgroups()
        dirs = {}
        try:
            if "memory" not in own or "cpu" not in own:
                return None
            for controller in ("memory", "cpu"):
                path = own[controller] / name
                path.mkdir(exist_ok=True)
                dirs[controller] = path
            (dirs["memory"] / "memory.limit_in_bytes").write_text(str(memory_bytes))
            (dirs["cpu"] / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
            (dirs["cpu"] / "cpu.cfs_quota_us").write_text(str(int(cpus * CPU_PERIOD_US)))
            # The Space's first process moves itself in (see `wrap`): it may write its own
            # pid to these files, and nothing else of the cgroup.
            for path in dirs.values():
                if who.uid is not None:
                    os.chown(path / "cgroup.procs", who.uid, who.gid)
        except OSError as e:
            log.warning("cgroup limits unavailable (%s); using rlimits instead", e)
            cls(dirs).remove()
            return None
        return cls(dirs)

    def wrap(self, argv: list[str]) -> list[str]:
        """`argv` started through a shell that first joins this cgroup, then execs it."""
        procs = [str(p / "cgroup.procs") for p in self.dirs.values()]
        script = ('for f in "$1" "$2"; do echo $$ > "$f" || '
                  '{ echo "cove: cannot join the cgroup $f" >&2; exit 111; }; done; '
                  'shift 2; exec "$@"')
        return ["/bin/sh", "-c", script, "sh", *procs, *argv]

    def pids(self) -> list[int]:
        out = set()
        for path in self.dirs.values():
            try:
                out.update(int(p) for p in (path / "cgroup.procs").read_text().split())
            except OSError:
                pass
        return sorted(out)

    def kill_all(self) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def remove(self) -> None:
        for path in self.dirs.values():
            try:
                path.rmdir()
            except OSError:
                pass


def _own_cgroups() -> dict[str, Path]:
    """controller -> this process's cgroup v1 folder, for the writable ones."""
    out = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            if controller in ("memory", "cpu"):
                folder = CGROUP_ROOT / controller / path.lstrip("/")
                if folder.is_dir() and os.access(folder, os.W_OK):
                    out[controller] = folder
    return out


def rlimits(memory_bytes: int) -> None:
    """Fallback limits, applied in the child before exec (no cgroup): data segment size."""
    resource.setrlimit(resource.RLIMIT_DATA, (memory_bytes, memory_bytes))


_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _child_setup(memory_bytes: int | None) -> None:
    """In the child, after it became the Space's user and before exec: it dies with the
    server (SIGKILL when the server's thread exits, even killed), and where no cgroup limits
    it, rlimits do. Kept to two system calls: the server has threads, whose locks a forked
    child must not wait for."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if memory_bytes is not None:
        rlimits(memory_bytes)


def sweep_cgroups(prefix: str) -> None:
    """Remove the cgroups named `prefix*` a killed server left, with whatever runs in them."""
    for folder in _own_cgroups().values():
        for path in folder.glob(prefix + "*"):
            if path.is_dir():
                Cgroup({"stale": path}).kill_all()
                for _ in range(50):
                    try:
                        path.rmdir()
                        break
                    except OSError:
                        time.sleep(0.02)


class Process:
    """A child process for the event loop: its output as a StreamReader, an awaitable exit.

    Started with subprocess.Popen, since the loop's own subprocess support (uvloop's) cannot
    change the user; the exit is polled, so no thread waits per running app.
    """

    def __init__(self, popen: subprocess.Popen, stdout: asyncio.StreamReader) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.stdout = stdout

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    async def wait(self) -> int:
        while (code := self.popen.poll()) is None:
            await asyncio.sleep(0.2)
        return code


async def spawn(
    argv: list[str],
    cwd: Path,
    env: dict[str, str],
    who: Identity,
    cgroup: Cgroup | None,
    memory_bytes: int,
) -> Process:
    """Start `argv` as `who`, stdout and stderr together in one pipe, in a new session."""
    if cgroup is not None:
        argv = cgroup.wrap(argv)
    limit = None if cgroup is not None else memory_bytes
    popen = subprocess.Popen(
        argv, cwd=str(cwd), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=lambda: _child_setup(limit),
        **who.popen_args(),
    )
    reader = asyncio.StreamReader(limit=1 << 20)
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), popen.stdout)
    return Process(popen, reader)


async def stop(proc: Process, cgroup: Cgroup | None, grace: float = 5) -> None:
    """SIGTERM to the process's whole session, SIGKILL after `grace` seconds, then whatever
    is left in its cgroup (a process that left the session)."""
    if proc.returncode is None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except asyncio.TimeoutError:
            pass
    _signal_group(proc.pid, signal.SIGKILL)
    if proc.returncode is None:
        await proc.wait()
    if cgroup is not None:
        cgroup.kill_all()
        for _ in range(50):
            if not cgroup.pids():
                break
            await asyncio.sleep(0.02)
        cgroup.remove()


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
