"""The models this Hub serves: loaded on first use, kept in an LRU, unloaded when idle.

A model is named as OpenAI names one, by a string: a repository id on this Hub
(`alice/smollm2-sft`, at `main`), `alice/smollm2-sft@revision`, or an alias of a local model
(`cove serve-model PATH` serves one under its file name). Every repository lookup goes through
the Hub's own read rules (`Hub.find_repo`: a private repository is "not found" to a caller who
cannot read it), then the model is read from the server's own storage (git blobs and LFS
objects, linked into a snapshot folder under `data/serving/`), never over HTTP.

What a repository serves follows from its files at that commit (`Facts`): its task is the
card's `pipeline_tag`, else `sentence-similarity` for a sentence-transformers repository
(modules.json), `text-generation` for a causal LM (config.json architectures ending in
`ForCausalLM`/`LMHeadModel`, or only `.gguf` files: the GGUF is converted once, dequantised to
float32; `owner/name:Q8_0` picks among several by a part of the file name, as llama.cpp's `-hf`
does), else the task the architectures' head serves. A text-generation model runs on one
continuous-batching `Engine` per loaded model (in its own thread); every other task on its
cove pipeline, one call at a time.

Loaded models are kept in an LRU under two bounds: at most `max_models` of them
(COVE_SERVING_MAX_MODELS, default 2) and at most `memory_budget` bytes (COVE_SERVING_MEMORY_GB,
default half the machine's memory) of weights and KV caches. Before a load the least recently
used idle models are unloaded until the new one's weight files fit; one with requests in
flight is never unloaded, so the bounds can be exceeded while all are busy; a model whose
weights alone exceed the budget is refused (503). A model unused for `idle_seconds` is
unloaded at the next lookup. A caller that would rather not wait (`wait=False`) gets
ModelLoading (503) while the model loads in the background. Loads are serialised.

torch and the models are imported only when a model loads: the server core stays torch-free.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cove.server import errors
from cove.server.cards import card_facts
from cove.server.db import Repository
from cove.server.hub import Hub, Principal

log = logging.getLogger(__name__)

CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
# GGUF file types, most precise first: which file `owner/name` serves among several.
_GGUF_PRECISION = ("f32", "bf16", "f16", "q8", "q6", "q5", "q4", "q3", "q2")


@dataclass(frozen=True)
class Source:
    """Where a model's files are: a repository at a commit, or a local folder or file."""

    name: str  # the repository id or the alias
    key: str  # a path-safe key for the snapshot and conversion folders
    repo: Repository | None = None
    sha: str | None = None
    path: Path | None = None
    gguf_tag: str = ""  # from `owner/name:TAG`


@dataclass(frozen=True)
class Facts:
    """What a model's files say it serves."""

    task: str | None  # the pipeline task; None when nothing says
    architectures: tuple[str, ...] = ()
    gguf: str | None = None  # the GGUF file a text-generation model loads from

    @property
    def openai_kind(self) -> str | None:
        """"generate" (chat and completions), "embed" (embeddings) or None."""
        return {"text-generation": "generate", "sentence-similarity": "embed"}.get(self.task)


def _facts(names: set[str], read: Callable[[str], bytes | None], gguf_tag: str = "") -> Facts:
    card = card_facts(read("README.md"), "model") if "README.md" in names else None
    archs: tuple[str, ...] = ()
    if "config.json" in names:
        try:
            archs = tuple(str(a) for a in json.loads(read("config.json") or b"{}")
                          .get("architectures") or [])
        except (ValueError, AttributeError):
            pass
    ggufs = sorted(n for n in names if n.lower().endswith(".gguf") and "/" not in n)
    gguf = None
    if "config.json" not in names and ggufs:
        if gguf_tag:
            ggufs = [n for n in ggufs if gguf_tag.lower() in n.lower()]
        gguf = min(ggufs, key=_gguf_rank) if ggufs else None
    task = card.pipeline_tag if card and card.pipeline_tag else None
    if task == "feature-extraction" and "modules.json" in names:
        task = "sentence-similarity"  # pooled embeddings, as HF serves a BGE-like model
    if task is None:
        if "modules.json" in names:
            task = "sentence-similarity"
        elif gguf is not None or any(a.endswith(CAUSAL_SUFFIXES) for a in archs):
            task = "text-generation"
    return Facts(task, archs, gguf)


def _gguf_rank(name: str) -> tuple[int, str]:
    lowered = re.split(r"[.\-_]", name.lower())
    for i, kind in enumerate(_GGUF_PRECISION):
        if any(part.startswith(kind) for part in lowered):
            return i, name
    return len(_GGUF_PRECISION), name


class ModelLoading(Exception):
    """The model is being loaded and the caller asked not to wait (HTTP 503)."""

    def __init__(self, model: str, estimated_seconds: float) -> None:
        super().__init__(f"Model {model} is currently loading")
        self.model, self.estimated_seconds = model, estimated_seconds


@dataclass
class ServedModel:
    """One loaded model: an engine (text generation) or a pipeline (every other task)."""

    name: str
    key: str
    task: str
    label: str = ""  # its name in /metrics
    engine: Any = None
    tokenizer: Any = None
    pipeline: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)  # the pipeline's
    last_used: float = field(default_factory=time.monotonic)

    def busy(self) -> bool:
        return self.engine is not None and self.engine.has_work()

    @property
    def nbytes(self) -> int:
        """The memory its tensors hold: weights and buffers, and the engine's KV cache."""
        model = self.engine.model if self.engine is not None else self.pipeline.model
        tensors = [*model.parameters(), *model.buffers()] if hasattr(model, "parameters") \
            else []
        cache = self.engine.cache.nbytes if self.engine is not None else 0
        return cache + sum(t.numel() * t.element_size() for t in tensors)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.stop(timeout=5)


class Registry:
    def __init__(self, hub: Hub, max_models: int | None = None,
                 idle_seconds: float | None = None, max_batch_size: int = 16,
                 memory_budget: int | None = None) -> None:
        self.hub = hub
        self.max_models = max_models or int(os.environ.get("COVE_SERVING_MAX_MODELS", 2))
        gigabytes = os.environ.get("COVE_SERVING_MEMORY_GB")
        self.memory_budget = memory_budget or (int(float(gigabytes) * 2**30) if gigabytes
                                               else _physical_memory() // 2)
        # each text-generation model's KV cache (its slots are allocated whole)
        self.cache_bytes = int(float(os.environ.get("COVE_SERVING_KV_GB", 2)) * 2**30)
        self.idle_seconds = idle_seconds or float(
            os.environ.get("COVE_SERVING_IDLE_SECONDS", 900))
        self.max_batch_size = max_batch_size
        self.root = hub.settings.data_dir / "serving"
        self._aliases: dict[str, Path] = {}
        self._models: OrderedDict[tuple[str, str], ServedModel] = OrderedDict()
        self._lock = threading.Lock()  # the dict
        self._load_lock = threading.Lock()  # one load at a time
        self._facts: dict[str, Facts] = {}  # Source.key -> Facts
        self._loading: set[tuple[str, str]] = set()
        self._failed: dict[tuple[str, str], Exception] = {}  # background loads' errors
        from cove.server.serving.metrics import ServingMetrics

        self.metrics = ServingMetrics(self._live, lambda: len(self._loading))

    def add_local(self, alias: str, path: str | os.PathLike) -> None:
        """Serve the model at `path` (a folder, or a .gguf file) as `alias`, to every caller."""
        path = Path(path).resolve()
        if not path.exists():
            raise FileNotFoundError(f"No such model folder or file: {path}")
        if path.is_file() and path.suffix.lower() != ".gguf":
            raise ValueError(f"{path} is a file but not a .gguf: name a model folder or a GGUF.")
        source = self._local(alias, path)
        if self.facts(source).task is None and self._inferred_task(self.facts(source)) is None:
            raise ValueError(f"{path} holds no model Cove can serve (no config.json with "
                             "known architectures, no modules.json, no .gguf file).")
        self._aliases[alias] = path

    # -- lookups (blocking: call from a worker thread) ------------------------------------

    def resolve(self, model: str, who: Principal | None) -> Source:
        """Where `model` is, as `who` may read it; RepoNotFound (404) otherwise, as the Hub
        API answers."""
        if model in self._aliases:
            return self._local(model, self._aliases[model])
        name, _, revision = model.partition("@")
        repo_id, _, tag = name.partition(":")
        if repo_id.count("/") != 1 or not all(repo_id.split("/")):
            served = f" (served here: {', '.join(sorted(self._aliases))})" if self._aliases \
                else ""
            raise errors.HubError(404, "RepoNotFound", f"The model {model!r} does not exist: "
                                  f"name a model repository on this Hub as 'owner/name'{served}.")
        with self.hub.session() as s:
            repo = self.hub.find_repo(s, "model", repo_id, who)
            s.expunge(repo)
        sha = repo.sha if not revision else None
        if sha is None:
            git = self.hub.git(repo)
            try:
                sha = git.resolve(revision or "main")
            finally:
                git.close()
            if sha is None:
                raise errors.revision_not_found(repo.repo_id, revision or "main")
        return Source(repo.repo_id, f"{repo.storage_key}/{sha}", repo=repo, sha=sha,
                      gguf_tag=tag)

    def facts(self, source: Source) -> Facts:
        cache_key = f"{source.key}:{source.gguf_tag}"
        if cache_key not in self._facts:
            if source.repo is None:
                assert source.path is not None
                folder = source.path if source.path.is_dir() else source.path.parent
                names = ({p.name for p in folder.iterdir() if p.is_file()}
                         if source.path.is_dir() else {source.path.name})

                def read(name: str) -> bytes | None:
                    return (folder / name).read_bytes()

                self._facts[cache_key] = _facts(names, read, source.gguf_tag)
            else:
                git = self.hub.git(source.repo)
                try:
                    files = {e.path: e for e in git.files(source.sha)}

                    def read(name: str) -> bytes | None:
                        e = files[name]
                        return None if e.lfs else git.read_blob(e.oid)

                    self._facts[cache_key] = _facts(set(files), read, source.gguf_tag)
                finally:
                    git.close()
        return self._facts[cache_key]

    def task_of(self, source: Source) -> str | None:
        """The task `source` serves (inferring it from the architectures if nothing says)."""
        facts = self.facts(source)
        return facts.task or self._inferred_task(facts)

    @staticmethod
    def _inferred_task(facts: Facts) -> str | None:
        if not facts.architectures:
            return None
        from cove.pipelines import _infer_task  # torch: only for a model about to load

        try:
            return _infer_task(list(facts.architectures), "the model")
        except ValueError:
            return None

    def served(self, who: Principal | None, limit: int = 1000) -> list[Source]:
        """The models `who` can read that answer OpenAI's API (chat, completions, embeddings):
        the local aliases, then the repositories."""
        from sqlalchemy import select

        with self.hub.session() as s:
            repos = s.scalars(select(Repository).where(Repository.type == "model",
                                                       Repository.sha.is_not(None))
                              .order_by(Repository.namespace, Repository.name)
                              .limit(limit)).all()
            for r in repos:
                s.expunge(r)
        sources = [self._local(a, p) for a, p in sorted(self._aliases.items())]
        sources += [Source(r.repo_id, f"{r.storage_key}/{r.sha}", repo=r, sha=r.sha)
                    for r in repos if self.hub.can_read(r, who)]
        return [s for s in sources if self.facts(s).openai_kind]

    def get(self, model: str, who: Principal | None, accept: tuple[str, ...] | None = None,
            wait: bool = True) -> ServedModel:
        """The loaded model `model` names, loading it for its task if needed; 404 when the
        repository is missing or unreadable to `who`, ValueError when its task is not one of
        `accept` (None: any task Cove can serve). With `wait=False` a model not loaded yet
        starts loading in the background and ModelLoading is raised meanwhile."""
        source = self.resolve(model, who)
        task = self.task_of(source)
        if task is None:
            raise ValueError(f"The model {source.name!r} has no task Cove can serve: give its "
                             "card a pipeline_tag.")
        if accept is not None and task not in accept:
            raise ValueError(f"The model {source.name!r} serves {task}, not "
                             f"{' or '.join(accept)}.")
        return self._get(source, task, wait)

    def _get(self, source: Source, task: str, wait: bool) -> ServedModel:
        key = (f"{source.key}:{source.gguf_tag}", task)
        self._evict_idle()
        with self._lock:
            served = self._models.get(key)
            if served is not None:
                self._models.move_to_end(key)
                served.last_used = time.monotonic()
                return served
            if key in self._failed:  # a background load failed: say why, once
                raise self._failed.pop(key)
            if not wait:
                if key not in self._loading:
                    self._loading.add(key)  # claimed here, so one thread loads it
                    threading.Thread(target=self._load_in_background, args=(source, task, key),
                                     daemon=True, name="cove-model-load").start()
                raise ModelLoading(source.name, 20.0)
        return self._load_into(source, task, key)

    def _load_into(self, source: Source, task: str, key: tuple[str, str]) -> ServedModel:
        with self._load_lock:
            with self._lock:
                if key in self._models:
                    self._loading.discard(key)
                    return self._models[key]
                self._loading.add(key)
            try:
                served = self._load(source, task)
            finally:
                with self._lock:
                    self._loading.discard(key)
            with self._lock:
                self._models[key] = served
                self._evict_over_count()
        return served

    def _load_in_background(self, source: Source, task: str, key: tuple[str, str]) -> None:
        try:
            self._load_into(source, task, key)
        except Exception as exc:  # noqa: BLE001 - kept for the next request to report
            log.exception("loading %s failed", source.name)
            with self._lock:
                self._failed[key] = exc

    def _live(self) -> list[tuple[str, Any]]:
        """(metrics label, engine or None) of the loaded models."""
        with self._lock:
            return [(m.label, m.engine) for m in self._models.values()]

    # -- loading and unloading --------------------------------------------------------------

    def _local(self, alias: str, path: Path) -> Source:
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:16]
        return Source(alias, f"local/{digest}", path=path)

    def _load(self, source: Source, task: str) -> ServedModel:
        if source.repo is not None:
            folder = self._snapshot(source.repo, source.sha)
        else:
            folder = source.path if source.path.is_dir() else source.path.parent
        facts = self.facts(source)
        if facts.gguf is not None:
            folder = self._converted(source, folder, facts.gguf)
        self._make_room(source.name, _weights_bytes(folder))
        served = ServedModel(source.name, source.key, task, label=self._label(source))
        if task == "text-generation":
            from cove.models import AutoModelForCausalLM
            from cove.server.serving.engine import Engine
            from cove.tokenizers import AutoTokenizer

            model = AutoModelForCausalLM.from_pretrained(str(folder))
            served.tokenizer = AutoTokenizer.from_pretrained(str(folder))
            served.engine = Engine(model, served.tokenizer, max_batch_size=self.max_batch_size,
                                   metrics=self.metrics.for_model(served.label),
                                   max_cache_bytes=self.cache_bytes)
            served.engine.start()
        else:
            from cove.pipelines import pipeline

            served.pipeline = pipeline(task, model=str(folder))
            served.tokenizer = served.pipeline.tokenizer
        return served

    @staticmethod
    def _label(source: Source) -> str:
        """The model's name in /metrics, which anyone may read: a private repository's name is
        not shown, a hash of it stands in."""
        if source.repo is None or not source.repo.private:
            return source.name
        return "private-" + hashlib.sha256(source.name.encode()).hexdigest()[:12]

    def _converted(self, source: Source, folder: Path, gguf: str) -> Path:
        """The GGUF's Hugging Face folder (float32), converted once per file."""
        from cove.models.gguf import convert_gguf

        out = self.root / "converted" / source.key / Path(gguf).stem
        if not (out / "config.json").is_file():
            convert_gguf(folder / gguf, out, dtype="float32", overwrite=True)
        return out

    def _snapshot(self, repo: Repository, sha: str) -> Path:
        """The repository's files at `sha` in a folder (LFS objects hard-linked when the
        object store is local), made once per commit."""
        folder = self.root / repo.storage_key / sha
        if (folder / ".complete").exists():
            return folder
        tmp = folder.with_name(f"{sha}.tmp{os.getpid()}.{threading.get_ident()}")
        shutil.rmtree(tmp, ignore_errors=True)
        git = self.hub.git(repo)
        try:
            for entry in git.files(sha):
                target = tmp / entry.path
                target.parent.mkdir(parents=True, exist_ok=True)
                if entry.lfs is None:
                    target.write_bytes(git.read_blob(entry.oid))
                    continue
                local = self.hub.objects.local_path(entry.lfs.oid)
                if local is not None:
                    try:
                        os.link(local, target)
                        continue
                    except OSError:
                        pass
                with self.hub.objects.open(entry.lfs.oid) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, 4 * 1024 * 1024)
        finally:
            git.close()
        (tmp / ".complete").touch()
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
        return folder

    def _evict_idle(self) -> None:
        now = time.monotonic()
        with self._lock:
            idle = [k for k, m in self._models.items()
                    if now - m.last_used > self.idle_seconds and not m.busy()]
            dropped = [self._models.pop(k) for k in idle]
        for m in dropped:
            m.close()

    def _evict_over_count(self) -> None:  # with self._lock held
        while len(self._models) > self.max_models:
            victim = next((k for k, m in self._models.items() if not m.busy()), None)
            if victim is None or victim == next(reversed(self._models)):
                return  # all busy (or only the newest is left): over the count for now
            self._models.pop(victim).close()

    def _make_room(self, name: str, needed: int) -> None:
        """Unload least recently used idle models until `needed` more bytes fit the budget."""
        if needed > self.memory_budget:
            raise errors.HubError(503, "InsufficientMemory", (
                f"The model {name!r} needs {needed / 2**30:.1f} GiB for its weights, more than "
                f"the serving memory budget of {self.memory_budget / 2**30:.1f} GiB "
                "(COVE_SERVING_MEMORY_GB)."))
        dropped = []
        with self._lock:
            while sum(m.nbytes for m in self._models.values()) + needed > self.memory_budget:
                victim = next((k for k, m in self._models.items() if not m.busy()), None)
                if victim is None:
                    log.warning("serving memory budget exceeded: every loaded model is busy")
                    break
                dropped.append(self._models.pop(victim))
        for m in dropped:
            m.close()

    def loaded(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._models)

    def close(self) -> None:
        with self._lock:
            models = list(self._models.values())
            self._models.clear()
        for m in models:
            m.close()


def _weights_bytes(folder: Path) -> int:
    """The size of a model folder's weight files (safetensors, else PyTorch pickles): what
    loading it will take, roughly."""
    files = [p for p in folder.rglob("*.safetensors") if p.is_file()] or [
        p for p in folder.rglob("*") if p.suffix in (".bin", ".pt", ".pth") and p.is_file()]
    return sum(p.stat().st_size for p in files)


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: assume 16 GiB
        return 16 * 2**30
