"""Server settings: where data lives and how to reach the metadata database."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

# Size from which a file goes to LFS even when no .gitattributes pattern names it (as the Hub).
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024

# The patterns a new repository's .gitattributes sends to LFS.
DEFAULT_LFS_PATTERNS = [
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gguf", "*.gz", "*.h5",
    "*.joblib", "*.lfs.*", "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx",
    "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar",
    "*.safetensors", "saved_model/**/*", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm",
    "*.xz", "*.zip", "*.zst", "*tfevents*",
]


@dataclass
class Settings:
    """Everything the server needs to know; built from arguments and COVE_* variables."""

    data_dir: Path
    database_url: str = ""
    secret: bytes = field(default=b"", repr=False)
    upload_url_ttl: int = 3600  # seconds a signed LFS upload URL stays valid
    serving: bool = True  # the inference endpoints (/v1, OpenAI-compatible): server/serving/
    # Running Space apps (server/spaces/); `cove serve --no-spaces` or COVE_SPACES=0 turn it off.
    spaces: bool = field(default_factory=lambda: _env_flag("COVE_SPACES", True))
    # Where Spaces' environments, working copies and homes live (COVE_SPACES_DIR); default
    # <data_dir>/spaces. Every parent must be traversable (o+x) by the Spaces' users.
    spaces_dir: Path | None = field(
        default_factory=lambda: Path(os.environ["COVE_SPACES_DIR"])
        if os.environ.get("COVE_SPACES_DIR") else None
    )
    # The web sign-up page (/join); `cove serve --no-join` or COVE_ALLOW_JOIN=0 turn it off.
    allow_join: bool = field(default_factory=lambda: _env_flag("COVE_ALLOW_JOIN", True))

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.database_url:
            self.database_url = os.environ.get("COVE_DATABASE_URL") or (
                f"sqlite:///{self.data_dir / 'cove.db'}"
            )
        if not self.secret:
            self.secret = _load_or_create_secret(self.data_dir / "secret.key")
        self.spaces_dir = Path(self.spaces_dir or self.data_dir / "spaces").resolve()

    @property
    def repos_dir(self) -> Path:
        return self.data_dir / "repos"

    @property
    def lfs_dir(self) -> Path:
        return self.data_dir / "lfs"


def _env_flag(name: str, default: bool) -> bool:
    """A yes/no COVE_* variable: 0, false, no and off (any case) mean no."""
    value = os.environ.get(name)
    if value is None:
        return default
    return value.lower() not in ("0", "false", "no", "off")


def _load_or_create_secret(path: Path) -> bytes:
    """The key that signs upload URLs; created once, readable by the owner only."""
    if path.exists():
        return path.read_bytes()
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)  # never overwrite a key another process created first
    except FileExistsError:
        pass
    os.unlink(tmp)
    return path.read_bytes()
