"""The models this Hub serves: loaded on first use, kept in an LRU, unloaded when idle.

A model is named as OpenAI names one, by a string: a repository id on this Hub
(`alice/smollm2-sft`, at `main`) or `alice/smollm2-sft@revision`. Every lookup goes through the
Hub's own read rules (`Hub.find_repo`: a private repository is "not found" to a caller who
cannot read it), then the model is read from the server's own storage (git blobs and LFS
objects, linked into a snapshot folder under `data/serving/`), never over HTTP.

What a repository serves follows from its files at that commit: a `config.json` whose
architectures end in `ForCausalLM`/`LMHeadModel` is a causal LM (chat and completions, one
continuous-batching `Engine` per loaded model, running in its own thread); a `modules.json`
(sentence-transformers) is an embedding model (the sentence-similarity pipeline).

Kept simple, on purpose: at most `max_models` loaded models (the least recently used idle one
is unloaded past that; one with requests in flight is never unloaded, so the count can be
exceeded while all are busy), and a model unused for `idle_seconds` is unloaded at the next
lookup. Not done: a byte budget (models are counted, not measured), loading several models at
once (loads are serialised), GGUF-only repositories, a 503 for clients that would rather not
wait while a model loads.

torch and the models are imported only when a model loads: the server core stays torch-free.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cove.server import errors
from cove.server.db import Repository
from cove.server.hub import Hub, Principal

CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


@dataclass
class ServedModel:
    """One loaded model: an engine (causal LMs) or a pipeline (embeddings)."""

    repo_id: str
    sha: str
    kind: str  # "generate" | "embed"
    engine: Any = None
    tokenizer: Any = None
    pipeline: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)  # the pipeline's
    last_used: float = field(default_factory=time.monotonic)

    def busy(self) -> bool:
        return self.engine is not None and self.engine.has_work()

    def close(self) -> None:
        if self.engine is not None:
            self.engine.stop(timeout=5)


class Registry:
    def __init__(self, hub: Hub, max_models: int | None = None,
                 idle_seconds: float | None = None, max_batch_size: int = 16) -> None:
        self.hub = hub
        self.max_models = max_models or int(os.environ.get("COVE_SERVING_MAX_MODELS", 2))
        self.idle_seconds = idle_seconds or float(
            os.environ.get("COVE_SERVING_IDLE_SECONDS", 900))
        self.max_batch_size = max_batch_size
        self.root = hub.settings.data_dir / "serving"
        self._models: OrderedDict[tuple[str, str, str], ServedModel] = OrderedDict()
        self._lock = threading.Lock()  # the dict
        self._load_lock = threading.Lock()  # one load at a time
        self._kinds: dict[tuple[str, str], str | None] = {}  # (storage_key, sha) -> kind

    # -- lookups (blocking: call from a worker thread) ------------------------------------

    def resolve(self, model: str, who: Principal | None) -> tuple[Repository, str]:
        """The repository and commit `model` names, as `who` may read them; RepoNotFound
        (404) otherwise, as the Hub API answers."""
        repo_id, _, revision = model.partition("@")
        if repo_id.count("/") != 1 or not all(repo_id.split("/")):
            raise errors.HubError(404, "RepoNotFound", f"The model {model!r} does not exist: "
                                  "name a model repository on this Hub as 'owner/name'.")
        with self.hub.session() as s:
            repo = self.hub.find_repo(s, "model", repo_id, who)
            s.expunge(repo)
        if not revision and repo.sha:
            return repo, repo.sha
        git = self.hub.git(repo)
        try:
            sha = git.resolve(revision or "main")
        finally:
            git.close()
        if sha is None:
            raise errors.revision_not_found(repo.repo_id, revision or "main")
        return repo, sha

    def kind_of(self, repo: Repository, sha: str) -> str | None:
        """"generate", "embed", or None when the repository serves neither."""
        key = (repo.storage_key, sha)
        if key not in self._kinds:
            git = self.hub.git(repo)
            try:
                files = {e.path: e for e in git.files(sha)}
                kind = None
                if "modules.json" in files:
                    kind = "embed"
                elif "config.json" in files and not files["config.json"].lfs:
                    try:
                        config = json.loads(git.read_blob(files["config.json"].oid))
                        archs = config.get("architectures") or []
                    except (ValueError, AttributeError):
                        archs = []
                    if any(str(a).endswith(CAUSAL_SUFFIXES) for a in archs):
                        kind = "generate"
            finally:
                git.close()
            self._kinds[key] = kind
        return self._kinds[key]

    def served(self, who: Principal | None, limit: int = 1000) -> list[Repository]:
        """The model repositories `who` can read that this Hub can serve."""
        from sqlalchemy import select

        with self.hub.session() as s:
            repos = s.scalars(select(Repository).where(Repository.type == "model",
                                                       Repository.sha.is_not(None))
                              .order_by(Repository.namespace, Repository.name)
                              .limit(limit)).all()
            for r in repos:
                s.expunge(r)
        return [r for r in repos if self.hub.can_read(r, who) and self.kind_of(r, r.sha)]

    def get(self, model: str, who: Principal | None, kind: str) -> ServedModel:
        """The loaded model `model` names, loading it if needed; 404 when the repository is
        missing or unreadable to `who`, ValueError when it is not a `kind` model."""
        repo, sha = self.resolve(model, who)
        found = self.kind_of(repo, sha)
        if found != kind:
            what = {"generate": "a causal language model (config.json architectures "
                                "ending in ForCausalLM)",
                    "embed": "a sentence-embedding model (sentence-transformers modules.json)"}
            raise ValueError(f"The model {repo.repo_id!r} is not {what[kind]}.")
        key = (repo.repo_id, sha, kind)
        self._evict_idle()
        with self._lock:
            served = self._models.get(key)
            if served is not None:
                self._models.move_to_end(key)
                served.last_used = time.monotonic()
                return served
        with self._load_lock:
            with self._lock:
                if key in self._models:
                    return self._models[key]
            served = self._load(repo, sha, kind)
            with self._lock:
                self._models[key] = served
                self._evict_over_count()
        return served

    # -- loading and unloading --------------------------------------------------------------

    def _load(self, repo: Repository, sha: str, kind: str) -> ServedModel:
        folder = self._snapshot(repo, sha)
        served = ServedModel(repo.repo_id, sha, kind)
        if kind == "generate":
            from cove.models import AutoModelForCausalLM
            from cove.server.serving.engine import Engine
            from cove.tokenizers import AutoTokenizer

            model = AutoModelForCausalLM.from_pretrained(str(folder))
            served.tokenizer = AutoTokenizer.from_pretrained(str(folder))
            served.engine = Engine(model, served.tokenizer, max_batch_size=self.max_batch_size)
            served.engine.start()
        else:
            from cove.pipelines import pipeline

            served.pipeline = pipeline("sentence-similarity", model=str(folder))
            served.tokenizer = served.pipeline.tokenizer
        return served

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

    def loaded(self) -> list[tuple[str, str, str]]:
        with self._lock:
            return list(self._models)

    def close(self) -> None:
        with self._lock:
            models = list(self._models.values())
            self._models.clear()
        for m in models:
            m.close()
