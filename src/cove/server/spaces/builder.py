"""Environments and working copies: a virtual environment per set of requirements (cached),
and the repository's main tree checked out for the app."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import site
import stat
import sys
from collections.abc import Callable
from pathlib import Path

from cove.server.spaces.config import RunnerOptions, SpaceConfig
from cove.server.spaces.runner import (
    Identity,
    chown_tree,
    isolated,
    make_public_readonly,
    own_dir,
)

ENV_FORMAT = 1  # bump when the way environments are built changes: old ones are not reused
COMPLETE = ".cove-env.json"  # written last: an environment without it is incomplete
# The server environment's variables a build may see: the package index's configuration.
_BUILD_PASSTHROUGH = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "HTTP_PROXY",
                      "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy")


class BuildError(RuntimeError):
    """The environment could not be built; the build log says why."""


def find_python(options: RunnerOptions) -> str:
    """An interpreter of the server's Python version that Space users may run.

    The server's own may sit where they cannot reach (pyenv under /root, mode 0700); then a
    system interpreter of the same version serves (its compiled packages are compatible).
    """
    if options.python:
        return options.python
    version = options.python_version
    base = Path(sys.base_prefix) / "bin" / f"python{version}"
    candidates = [base, Path(sys.executable)]
    candidates += [Path(d) / f"python{version}" for d in ("/usr/local/bin", "/usr/bin")]
    for path in candidates:
        if path.exists() and (not isolated() or _reachable_by_others(path)):
            return str(path)
    raise BuildError(
        f"No Python {version} interpreter that Space users may run: the server's "
        f"({sys.base_prefix}) sits in a folder closed to other users. Install python{version} "
        "system-wide or set COVE_SPACES_PYTHON to one."
    )


def _reachable_by_others(path: Path) -> bool:
    real = path.resolve()
    if not real.stat().st_mode & stat.S_IXOTH:
        return False
    return all(p.stat().st_mode & stat.S_IXOTH for p in real.parents)


def env_key(config: SpaceConfig, python: str, namespace: str) -> str:
    """The cache key of a Space's environment.

    Environments are shared only within a namespace: a build runs the packages' own code as
    the building Space's user, which must not be able to plant code in other owners' Spaces.
    """
    facts = {
        "format": ENV_FORMAT, "python": python, "namespace": namespace, "sdk": config.sdk,
        "sdk_version": config.sdk_version, "install": config.install_lines(),
        "cove": config.uses_cove,
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:32]


class Builder:
    """Builds and caches environments under `<spaces dir>/envs/<key>`."""

    def __init__(self, spaces_dir: Path, options: RunnerOptions) -> None:
        self.envs_dir = spaces_dir / "envs"
        self.options = options
        self._locks: dict[str, asyncio.Lock] = {}

    def cached(self, key: str) -> Path | None:
        path = self.envs_dir / key
        return path if (path / COMPLETE).exists() else None

    def forget(self, key: str) -> None:
        """Drop a cached environment (a factory reboot)."""
        shutil.rmtree(self.envs_dir / key, ignore_errors=True)

    async def ensure(
        self,
        key: str,
        config: SpaceConfig,
        python: str,
        who: Identity,
        home: Path,
        log: Callable[[str], None],
        run: Callable,
    ) -> Path:
        """The environment for `key`, built when missing; `run(argv, env, cwd)` runs a build
        step as the Space's user and answers its exit status."""
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            path = self.cached(key)
            if path is not None:
                log(f"Using the cached environment {key}.")
                return path
            path = self.envs_dir / key
            # A venv is not relocatable (scripts name its path): it is built in place, and
            # counts only once COMPLETE is written; an interrupted build is removed first.
            await asyncio.to_thread(shutil.rmtree, path, True)
            own_dir(path, who, 0o700)
            env = _build_env(home, path)
            log(f"Creating the environment {key} (Python {self.options.python_version}).")
            if await run([python, "-m", "venv", str(path)], env, home) != 0:
                raise BuildError("creating the virtual environment failed")
            requirements = path / "cove-requirements.txt"
            requirements.write_text("".join(line + "\n" for line in config.install_lines()))
            if who.uid is not None:
                os.chown(requirements, who.uid, who.gid)
            if config.install_lines():
                log("Installing: " + ", ".join(config.install_lines()))
                argv = [str(path / "bin" / "python"), "-m", "pip", "install", "--no-input",
                        "--progress-bar", "off", "-r", str(requirements)]
                if await run(argv, env, home) != 0:
                    raise BuildError("pip install failed")
            if config.uses_cove:
                _share_server_packages(path, log)
            if isolated():  # root's from now on: read-only for every Space
                await asyncio.to_thread(make_public_readonly, path)
            marker = path / (COMPLETE + ".tmp")
            marker.write_text(json.dumps({"key": key, "install": config.install_lines(),
                                          "cove": config.uses_cove}))
            os.chmod(marker, 0o644)
            os.replace(marker, path / COMPLETE)
            log("Environment ready.")
            return path


def _build_env(home: Path, venv: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith("PIP_") or k in _BUILD_PASSTHROUGH}
    env.update(HOME=str(home), LANG="C.UTF-8", PYTHONUNBUFFERED="1",
               PATH=f"{venv}/bin:/usr/local/bin:/usr/bin:/bin",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def _share_server_packages(venv: Path, log: Callable[[str], None]) -> None:
    """`cove` in requirements.txt: the server's own installation (cove, torch, ...) joins
    the Space's path after its own packages, read-only, through a .pth file."""
    dirs = [d for d in site.getsitepackages() if Path(d).is_dir()]
    site_dir = next((venv / "lib").glob("python*/site-packages"))
    lines = "".join(f"import site; site.addsitedir({d!r})\n" for d in dirs)
    (site_dir / "cove-server.pth").write_text(lines)
    for d in dirs:
        if isolated() and not _reachable_by_others(Path(d)):
            log(f"Warning: the server's packages at {d} are closed to Space users: "
                "`import cove` will fail in the app.")
    log("cove: shared from the server's installation (" + ", ".join(dirs) + ").")


def checkout(files: list[tuple[str, Callable[[], bytes]]], dest: Path, who: Identity) -> None:
    """Write the working copy `dest` afresh: (path, read) pairs, then hand it to `who`.

    Built next to `dest` and swapped in, so a running app never sees half a tree.
    """
    tmp = dest.with_name(dest.name + ".new")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # Closed before anything is written: no other Space's user may enter it at any moment.
    os.chmod(tmp, 0o700)
    for rel, read in files:
        target = tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(read())
    if who.uid is not None:
        chown_tree(tmp, who.uid, who.gid)
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
