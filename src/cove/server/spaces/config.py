"""What decides how a Space runs: its README front matter and requirement files, and the
runner's own options (COVE_SPACES_* variables)."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field

from cove.server.cards import CardError, front_matter

SDKS = ("gradio", "streamlit", "static")
# The package each SDK installs (HF installs the same, pinned to `sdk_version`).
SDK_PACKAGES = {"gradio": "gradio", "streamlit": "streamlit"}
# A requirement line naming the `cove` distribution: satisfied by the server's own
# installation, never by the index (another project publishes a `cove` there).
_COVE_LINE = re.compile(r"^\s*cove\s*(\[[^\]]*\])?\s*([<>=!~].*)?$", re.IGNORECASE)
_VERSION = re.compile(r"^[0-9][0-9A-Za-z.+!-]*$")


class SpaceConfigError(ValueError):
    """The Space's configuration cannot run here; `stage` says how HF reports it."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


@dataclass(frozen=True)
class SpaceConfig:
    """How one Space runs, read from its files at a commit."""

    sdk: str
    sdk_version: str | None
    app_file: str
    python_version: str | None
    requirements: list[str]  # the lines installed from the index (cove left out)
    uses_cove: bool  # requirements.txt names `cove`: the server's installation is shared
    packages: list[str]  # packages.txt: Debian packages
    warnings: list[str] = field(default_factory=list)

    def install_lines(self) -> list[str]:
        """Everything pip installs: the SDK (pinned to sdk_version), then the Space's lines."""
        if self.sdk not in SDK_PACKAGES:
            return list(self.requirements)
        sdk = SDK_PACKAGES[self.sdk]
        pin = f"{sdk}=={self.sdk_version}" if self.sdk_version else sdk
        return [pin, *self.requirements]


def parse_config(
    readme: bytes | None, requirements: bytes | None, packages: bytes | None, repo_sdk: str | None
) -> SpaceConfig:
    """The Space's config from its README.md, requirements.txt and packages.txt."""
    try:
        meta = front_matter(readme.decode("utf-8", "replace")) if readme else None
    except CardError as e:
        raise SpaceConfigError("CONFIG_ERROR", str(e)) from None
    meta = meta or {}
    sdk = str(meta.get("sdk") or repo_sdk or "").strip().lower()
    if sdk == "docker":
        raise SpaceConfigError(
            "CONFIG_ERROR",
            "Docker Spaces are not supported by Cove: use sdk: gradio, streamlit or static "
            "in README.md.",
        )
    if sdk not in SDKS:
        raise SpaceConfigError(
            "CONFIG_ERROR",
            f"Unknown or missing sdk {sdk!r} in README.md: use gradio, streamlit or static.",
        )
    version = meta.get("sdk_version")
    sdk_version = str(version).strip() if version not in (None, "") else None
    if sdk_version is not None and not _VERSION.match(sdk_version):
        raise SpaceConfigError("CONFIG_ERROR", f"Invalid sdk_version {sdk_version!r}.")
    default_app = "index.html" if sdk == "static" else "app.py"
    app_file = str(meta.get("app_file") or default_app).strip().lstrip("/")
    if ".." in app_file.split("/") or not app_file:
        raise SpaceConfigError("CONFIG_ERROR", f"Invalid app_file {app_file!r}.")
    warnings = []
    python_version = meta.get("python_version")
    python_version = str(python_version).strip() if python_version is not None else None
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if python_version and python_version != here and not python_version.startswith(here + "."):
        # Only the server's Python version is available: the app runs on it (most Spaces
        # declare 3.10 and run unchanged on later versions), with this warning in the log.
        warnings.append(
            f"python_version {python_version} is not available on this Hub: running on "
            f"Python {here}."
        )
    lines, uses_cove = [], False
    for raw in (requirements or b"").decode("utf-8", "replace").splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        if _COVE_LINE.match(line):
            uses_cove = True
            continue
        lines.append(line)
    pkgs = [
        p.strip() for p in (packages or b"").decode("utf-8", "replace").splitlines()
        if p.strip() and not p.strip().startswith("#")
    ]
    return SpaceConfig(sdk, sdk_version, app_file, python_version, lines, uses_cove, pkgs,
                       warnings)


def _float_env(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{name}={value!r}: expected a number") from None


@dataclass
class RunnerOptions:
    """The runner's limits and choices; each from a COVE_SPACES_* variable."""

    memory_gb: float = field(default_factory=lambda: _float_env("COVE_SPACES_MEMORY_GB", 8))
    cpus: float = field(default_factory=lambda: _float_env("COVE_SPACES_CPUS", 2))
    # Seconds an app has to answer HTTP on its port before it is stopped (RUNTIME_ERROR).
    start_timeout: float = field(
        default_factory=lambda: _float_env("COVE_SPACES_START_TIMEOUT", 120)
    )
    # Default idle time before a Space sleeps (HF's free hardware: 48 hours).
    sleep_time: int = field(
        default_factory=lambda: int(_float_env("COVE_SPACES_SLEEP_TIME", 48 * 3600))
    )
    # The interpreter Spaces run on; default: the server's Python version, found where
    # Spaces' users may run it (see builder.find_python).
    python: str = field(default_factory=lambda: os.environ.get("COVE_SPACES_PYTHON", ""))
    # Space users are uid = gid = base + repository id: Hubs sharing a machine need bases
    # far apart, or their Spaces share users.
    uid_base: int = field(
        default_factory=lambda: int(_float_env("COVE_SPACES_UID_BASE", 200_000))
    )
    # Install packages.txt with apt-get (as root) when set; otherwise only reported.
    apt: bool = field(
        default_factory=lambda: os.environ.get("COVE_SPACES_APT", "0").lower()
        in ("1", "true", "yes", "on")
    )
    # The Hub's URL as Spaces reach it (HF_ENDPOINT); `cove serve` sets it from its port.
    hub_url: str = field(default_factory=lambda: os.environ.get("COVE_SPACES_HUB_URL", ""))

    @property
    def python_version(self) -> str:
        return f"{sys.version_info.major}.{sys.version_info.minor}"
