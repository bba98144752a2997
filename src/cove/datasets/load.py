"""load_dataset and friends: packaged formats, local folders and Hub dataset repositories.

Data files are found (data_files.py), read batch by batch (packaged.py) and written once as
Arrow files into the cache:

    <cache root>/<name>/<config>/0.0.0/<hash>/<name>-<split>.arrow + dataset_info.json

The hash covers the resolved files (paths, sizes and mtimes of local files; the commit and
paths of Hub files), the format, the reader options and the features, so a change of the data
gives a fresh folder and an unchanged one is reused. The splits are then memory-mapped.

Data files may be local paths or globs, http(s) URLs (read by byte ranges; the Hub token goes
only to the Hub's own URLs) or `hf://datasets/<repo>[@<revision>]/<pattern>` paths. When the
Hub cannot be reached (offline mode, no connection), a Hub dataset loads from its most
recently prepared copy in the cache.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import queue
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import unquote

import httpx
import pyarrow as pa
from filelock import FileLock

from cove.datasets import data_files as df
from cove.datasets.errors import DataFilesNotFoundError, DatasetNotFoundError
from cove.datasets.features import Features
from cove.datasets.fingerprint import cache_root
from cove.datasets.info import DatasetInfo, SplitInfo
from cove.datasets.packaged import KINDS, default_options, read_batches
from cove.datasets.remote import is_remote, open_file
from cove.datasets.splits import parse_split, resolve_split
from cove.datasets.writer import write_arrow

if TYPE_CHECKING:
    from cove.datasets.arrow_dataset import Dataset
    from cove.datasets.dataset_dict import DatasetDict

logger = logging.getLogger(__name__)

DOWNLOAD_MODES = ("reuse_dataset_if_exists", "reuse_cache_if_exists", "force_redownload")
VERIFICATION_MODES = ("basic_checks", "all_checks", "no_checks")


class NonMatchingSplitsSizesError(ValueError):
    """The prepared splits do not have the numbers of rows the dataset card records."""


# -- where the files are --------------------------------------------------------------------


@dataclass
class _Source:
    """A local folder or a Hub dataset repository at one commit."""

    base: str  # local: an absolute folder; Hub: "" (repo paths are relative to its root)
    repo_id: str | None = None
    commit: str | None = None
    token: Any = None
    repo_files: list[str] = field(default_factory=list)
    _downloaded: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def is_hub(self) -> bool:
        return self.repo_id is not None

    def glob(self, pattern: str, under: str = "") -> list[str]:
        if is_remote(pattern):  # a URL is one file, read over HTTP
            return [pattern]
        if self.is_hub:
            pattern = f"{under.strip('/')}/{pattern}" if under else pattern
            return df.match_paths(pattern.lstrip("/"), self.repo_files)
        return df.glob_local(pattern, os.path.join(self.base, under) if under else self.base)

    def all_files(self, under: str = "") -> list[str]:
        """Relative paths of every file (under the folder `under`)."""
        if self.is_hub:
            prefix = under.strip("/") + "/" if under.strip("/") else ""
            return [p[len(prefix):] for p in self.repo_files if p.startswith(prefix)]
        root = os.path.join(self.base, under)
        if not os.path.isdir(root):
            raise DataFilesNotFoundError(f"The data_dir {root!r} is not a folder.")
        return df.walk_files(root)

    def key(self, files: dict[str, list[str]]) -> list:
        """What identifies the content of `files`, for the cache hash."""
        if self.is_hub:
            return [self.repo_id, self.commit, files]
        out = []
        for split, paths in files.items():
            for p in paths:
                if is_remote(p):  # no cheap change marker: force_redownload refreshes it
                    out.append([split, p])
                else:
                    st = os.stat(p)
                    out.append([split, p, st.st_size, st.st_mtime_ns])
        return out

    def open(self, file: str) -> BinaryIO:
        """The file for reading: Hub files from the shared cache, URLs by HTTP ranges."""
        if is_remote(file):
            return open_file(file, token=self.token_for(file))
        return open(self.local_path(file), "rb")

    def token_for(self, url: str) -> Any:
        """The token for a URL: the Hub's own URLs only, never another host's."""
        from cove.hub import config

        return self.token if url.startswith(config.endpoint() + "/") else False

    def local_path(self, file: str) -> str:
        if not self.is_hub or is_remote(file):
            return file
        if file not in self._downloaded:
            from cove.hub import hf_hub_download

            self._downloaded[file] = hf_hub_download(
                self.repo_id, file, repo_type="dataset", revision=self.commit, token=self.token)
        return self._downloaded[file]

    def download(self, files: list[str], workers: int = 8) -> None:
        """Fetch Hub files into the shared cache several at a time."""
        if self.is_hub and len(files) > 1:
            with ThreadPoolExecutor(min(workers, len(files))) as pool:
                list(pool.map(self.local_path, files))

    def url(self, file: str) -> str:
        if not self.is_hub or is_remote(file):
            return file
        from cove.hub import file_url

        return file_url(self.repo_id, file, repo_type="dataset", revision=self.commit)

    def read_text(self, file: str) -> str | None:
        if self.is_hub:
            if file not in self.repo_files:
                return None
            file = self.local_path(file)
        elif not os.path.isfile(os.path.join(self.base, file)):
            return None
        else:
            file = os.path.join(self.base, file)
        with open(file, encoding="utf-8") as f:
            return f.read()


@dataclass
class _Plan:
    """Everything resolved before reading: which files, read how, cached where."""

    name: str  # for the cache folder and file names
    dataset_name: str
    config_name: str
    kind: str
    files: dict[str, list[str]]
    source: _Source
    reader_kwargs: dict
    features: Features | None
    card_info: dict | None = None
    expected_rows: dict[str, int] | None = None  # per split, from the card, to verify

    def hash(self) -> str:
        key = [self.kind, self.config_name, self.source.key(self.files),
               sorted(self.reader_kwargs.items(), key=lambda kv: kv[0]),
               self.features.to_dict() if self.features is not None else None]
        blob = json.dumps(key, sort_keys=True, default=repr).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


class _HubUnreachable(ConnectionError):
    """The Hub could not be asked (offline mode, no connection): the cache may still serve."""


def _hub_source(repo_id: str, revision: str | None, token: Any) -> _Source:
    from cove.hub import HubApi
    from cove.hub.errors import (
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    api = HubApi(token=token)
    try:
        info = api.dataset_info(repo_id, revision=revision)
        files = api.list_repo_files(repo_id, revision=info.sha, repo_type="dataset")
    except (OfflineModeIsEnabled, httpx.TransportError) as e:
        raise _HubUnreachable(f"Couldn't reach '{repo_id}' on the Hub "
                              f"({type(e).__name__})") from e
    except RevisionNotFoundError:
        raise DatasetNotFoundError(
            f"Revision '{revision}' doesn't exist for dataset '{repo_id}' on the Hub.") from None
    except RepositoryNotFoundError:
        raise DatasetNotFoundError(
            f"Dataset '{repo_id}' doesn't exist on the Hub or cannot be accessed.") from None
    return _Source(base="", repo_id=repo_id, commit=info.sha, token=token, repo_files=files)


_HF_PATH = re.compile(r"^hf://datasets/(?P<repo>[^/@]+(?:/[^/@]+)?)(?:@(?P<rev>[^/]+))?/"
                      r"(?P<path>.*)$")


def _hf_paths(patterns: dict[str, list[str]]) -> tuple[tuple[str, str | None], dict] | None:
    """((repo_id, revision), in-repo patterns) when every pattern is an hf:// path of one
    dataset repository; None when none is. Mixing repositories or local files is refused."""
    found = {p: _HF_PATH.match(p) for ps in patterns.values() for p in ps}
    if not any(found.values()):
        return None
    repos = {m["repo"] for m in found.values() if m}
    revisions = {unquote(m["rev"]) for m in found.values() if m and m["rev"]}
    if len(repos) > 1 or len(revisions) > 1 or not all(found.values()):
        raise ValueError("hf:// data_files must all be in one dataset repository (at one "
                         f"revision), without local files: got {list(found)}.")
    revision = next(iter(revisions)) if revisions else None
    return (repos.pop(), revision), {split: [found[p]["path"] for p in ps]
                                     for split, ps in patterns.items()}


def _looks_like_repo_id(path: str) -> bool:
    return bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", path)) and not path.startswith((".", "-"))


def _plan(path: str, name: str | None, data_files: Any, data_dir: str | None,
          revision: str | None, token: Any, features: Features | None,
          reader_kwargs: dict) -> _Plan:
    """Resolve `path` and the options to a _Plan (no data is read)."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"path must be a format name, a folder or a Hub dataset id, got {path!r}.")
    if features is not None and not isinstance(features, Features):
        features = Features(features)
    if path in KINDS:  # a packaged format over the given files
        base = os.path.abspath(os.path.expanduser(data_dir or "."))
        source = _Source(base=base, token=token)
        if data_files is not None:
            patterns = df.sanitize_patterns(data_files)
            hub = _hf_paths(patterns)
            if hub is not None:  # hf://datasets/<repo>@<revision>/<pattern>: that repo's files
                (repo_id, hub_revision), patterns = hub
                source = _hub_source(repo_id, hub_revision or revision, token)
            files = df.resolve_patterns(patterns, source.glob)
        elif data_dir is not None:  # the splits by the naming conventions inside data_dir
            files = df.resolve_patterns(df.infer_split_patterns(source.all_files()),
                                        source.glob, unique=True)
        else:
            raise ValueError(f"At least one data file must be specified for '{path}': pass "
                             f"data_files= or data_dir=.")
        if name not in (None, "default"):
            raise ValueError(f"BuilderConfig '{name}' not found: the packaged '{path}' builder "
                             f"has only the 'default' config.")
        options = {**_options_for(files), **reader_kwargs}
        return _Plan(path, path, "default", path, files, source, options, features)
    if os.path.isdir(os.path.expanduser(path)):
        base = os.path.abspath(os.path.expanduser(path))
        if any(os.path.isfile(os.path.join(base, f)) for f in ("dataset_dict.json",
                                                                "state.json")):
            raise ValueError(f"{path!r} was saved with save_to_disk: load it with "
                             f"load_from_disk({path!r}) instead.")
        source = _Source(base=base, token=token)
        dataset_name = os.path.basename(base.rstrip("/")) or "dataset"
        cache_name = dataset_name
    elif os.path.isfile(os.path.expanduser(path)):
        raise ValueError(f"{path!r} is a file: load it with its format, e.g. "
                         f"load_dataset('csv', data_files={path!r}).")
    elif _looks_like_repo_id(path):
        source = _hub_source(path, revision, token)
        dataset_name = path.split("/")[-1]
        cache_name = path.replace("/", "___")
    else:
        raise DatasetNotFoundError(f"Couldn't find '{path}': it is neither a local folder nor a "
                                   f"format ({', '.join(KINDS)}) nor a Hub dataset id.")
    return _plan_repo(source, dataset_name, cache_name, name, data_files, data_dir, features,
                      reader_kwargs)


def _plan_repo(source: _Source, dataset_name: str, cache_name: str, name: str | None,
               data_files: Any, data_dir: str | None, features: Features | None,
               reader_kwargs: dict) -> _Plan:
    """The plan for a folder or repository: README configs, else naming conventions."""
    readme = source.read_text("README.md")
    metadata = df.read_card_metadata(readme) if readme else {}
    config = df.select_config(df.card_configs(metadata), name)
    config_name = config["config_name"] if config else "default"
    card_kwargs = {k: v for k, v in (config or {}).items()
                   if k not in ("config_name", "data_files", "data_dir", "default")}
    under = data_dir if data_dir is not None else (config or {}).get("data_dir", "")
    supported = set(df.EXTENSIONS)
    inferred = data_files is None and not (config and config.get("data_files") is not None)
    if data_files is not None:
        patterns = df.sanitize_patterns(data_files)
    elif not inferred:
        patterns = df.sanitize_patterns(config["data_files"])
    else:
        patterns = df.infer_split_patterns(
            [p for p in source.all_files(under) if df.has_extension(p, supported)])
    files = df.resolve_patterns(patterns, lambda p: source.glob(p, under), supported,
                                unique=inferred)
    kind = df.infer_kind_of_files(files)
    files = {split: kept for split, fs in files.items()
             if (kept := [f for f in fs if df.has_extension(f, df.extensions_of(kind))])}
    card_info = df.card_features(metadata, config_name)
    if features is None and card_info and card_info.get("features"):
        from cove.datasets.hub import features_from_yaml

        features = Features.from_dict(features_from_yaml(card_info["features"]))
    options = {**_options_for(files), **card_kwargs, **reader_kwargs}
    expected = None
    if data_files is None and data_dir is None and card_info and card_info.get("splits"):
        expected = {s["name"]: int(s.get("num_examples") or 0) for s in card_info["splits"]
                    if isinstance(s, dict) and s.get("name") in files}
    return _Plan(cache_name, dataset_name, config_name, kind, files, source, options, features,
                 card_info, expected)


def _options_for(files: dict[str, list[str]]) -> dict:
    """Reader options the file names imply when they all agree (".tsv": tab-separated)."""
    options = [default_options(f) for fs in files.values() for f in fs]
    return options[0] if options and all(o == options[0] for o in options) else {}


# -- preparing the cache --------------------------------------------------------------------


def _split_batches(plan: _Plan, split: str, features: Features | None) -> Iterator[pa.RecordBatch]:
    for file in plan.files[split]:
        with plan.source.open(file) as f:
            yield from read_batches(plan.kind, f, name=file, features=features,
                                    **plan.reader_kwargs)


def _read_ahead(batches: Iterator[pa.RecordBatch], depth: int = 4) -> Iterator[pa.RecordBatch]:
    """The same batches, parsed by a thread up to `depth` ahead: parsing the next block and
    writing this one overlap (both release the GIL), memory stays `depth` blocks."""
    slots: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    done = object()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not put(batch):
                    return
            put(done)
        except BaseException as e:  # handed to the consumer, raised there
            put(e)

    thread = threading.Thread(target=produce, name="cove-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def _first_features(plan: _Plan) -> Features:
    """The features of the first batch of the first file (the card's when it has them)."""
    if plan.features is not None:
        return plan.features
    split = next(iter(plan.files))
    for batch in _split_batches(plan, split, None):
        return Features.from_arrow_schema(batch.schema)
    raise ValueError(f"The data files of split {split!r} hold no rows: pass features=.")


def _download_mode(mode: Any) -> str:
    mode = getattr(mode, "value", mode) or "reuse_dataset_if_exists"
    if mode not in DOWNLOAD_MODES:
        raise ValueError(f"Unknown download_mode {mode!r}: use one of {', '.join(DOWNLOAD_MODES)}.")
    return mode


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]", "_", name)


class DatasetBuilder:
    """The builder load_dataset uses: `.info`, `.download_and_prepare()`, `.as_dataset()`."""

    def __init__(self, plan: _Plan, cache_dir: str | None = None, num_proc: int | None = None):
        self._plan = plan
        self.dataset_name = plan.dataset_name
        self.config_name = plan.config_name
        self.builder_name = plan.kind
        root = os.path.expanduser(cache_dir) if cache_dir else cache_root()
        self.cache_dir = os.path.join(root, _safe(plan.name), _safe(plan.config_name), "0.0.0",
                                      plan.hash())
        self.num_proc = num_proc
        self._info: DatasetInfo | None = None
        self._offline: ConnectionError | None = None  # set when built from the cache offline

    @property
    def info(self) -> DatasetInfo:
        """Description, features and splits: from the prepared cache, else the card, else the
        first batch of the first file."""
        if self._info is None:
            if self._prepared():
                self._info = DatasetInfo.from_directory(self.cache_dir)
            else:
                card = self._plan.card_info or {}
                splits = card.get("splits")
                self._info = DatasetInfo(
                    description=card.get("description", ""),
                    features=_first_features(self._plan), builder_name=self.builder_name,
                    dataset_name=self.dataset_name, config_name=self.config_name,
                    version="0.0.0",
                    splits={s["name"]: SplitInfo.from_dict(s) for s in splits
                            if s.get("name") in self._plan.files} if splits else None,
                )
        return self._info

    def _arrow_path(self, split: str) -> str:
        return os.path.join(self.cache_dir, f"{_safe(self._plan.name.split('___')[-1])}-{split}.arrow")

    def _prepared(self) -> bool:
        return (os.path.isfile(os.path.join(self.cache_dir, "dataset_info.json"))
                and all(os.path.isfile(self._arrow_path(s)) for s in self._plan.files))

    def download_and_prepare(self, download_mode: Any = None,
                             verification_mode: Any = None) -> None:
        """Read every split's files into Arrow files in the cache (unless they are there).

        Unless `verification_mode="no_checks"`, the numbers of rows are checked against the
        split sizes the dataset card records.
        """
        mode = _download_mode(download_mode)
        verify = getattr(verification_mode, "value", verification_mode) or "basic_checks"
        if verify not in VERIFICATION_MODES:
            raise ValueError(f"Unknown verification_mode {verify!r}: use one of "
                             f"{', '.join(VERIFICATION_MODES)}.")
        if self._offline is not None and mode == "force_redownload":
            raise ConnectionError(f"{self._offline}: can't download the data again.")
        os.makedirs(self.cache_dir, exist_ok=True)
        with FileLock(self.cache_dir + ".lock"):  # one writer across processes
            if self._prepared() and mode != "force_redownload":
                return
            info_path = os.path.join(self.cache_dir, "dataset_info.json")
            if os.path.exists(info_path):
                os.unlink(info_path)  # written last: marks the folder complete
            splits = list(self._plan.files)
            features = self._plan.features
            self._plan.source.download([f for fs in self._plan.files.values() for f in fs])

            def prepare(split: str) -> tuple[str, int, int, Features]:
                rows, nbytes = write_arrow(_read_ahead(_split_batches(self._plan, split, features)),
                                           self._arrow_path(split), features)
                with pa.memory_map(self._arrow_path(split)) as source:
                    schema = pa.ipc.open_stream(source).schema
                return split, rows, nbytes, Features.from_arrow_schema(schema)

            workers = max(1, min(self.num_proc or 1, len(splits)))
            with ThreadPoolExecutor(workers) as pool:
                results = list(pool.map(prepare, splits))
            # Arrow's allocator keeps the freed read buffers; the data now lives in the files.
            pa.default_memory_pool().release_unused()
            expected = self._plan.expected_rows
            if expected and verify != "no_checks":
                got = {s: r for s, r, _, _ in results if s in expected}
                if got != {s: n for s, n in expected.items() if s in got}:
                    raise NonMatchingSplitsSizesError(
                        f"The splits have {got} rows but the dataset card records "
                        f"{expected}: update the card, or pass verification_mode='no_checks'.")
            card = self._plan.card_info or {}
            info = DatasetInfo(
                description=card.get("description", ""),
                features=features or results[0][3], builder_name=self.builder_name,
                dataset_name=self.dataset_name, config_name=self.config_name, version="0.0.0",
                splits={s: SplitInfo(name=s, num_bytes=b, num_examples=r, dataset_name=self
                                     .dataset_name) for s, r, b, _ in results},
                dataset_size=sum(b for _, _, b, _ in results),
            )
            info.write_to_directory(self.cache_dir)
            self._info = info

    def as_dataset(self, split: str | list[str] | None = None,
                   in_memory: bool = False) -> Dataset | DatasetDict | list[Dataset]:
        """The prepared splits, memory-mapped (read into memory with `in_memory`): one Dataset
        for `split` (a list for a list of splits), else a DatasetDict."""
        from cove.datasets.arrow_dataset import Dataset

        if not self._prepared():
            raise FileNotFoundError(f"The dataset is not prepared in {self.cache_dir}: call "
                                    f"download_and_prepare() first.")
        info = DatasetInfo.from_directory(self.cache_dir)
        if isinstance(split, (list, tuple)):
            return [self.as_dataset(s, in_memory=in_memory) for s in split]
        if split is None:
            from cove.datasets.dataset_dict import DatasetDict

            return DatasetDict({s: Dataset.from_file(self._arrow_path(s), info=info.copy(),
                                                     split=s, in_memory=in_memory)
                                for s in self._plan.files})
        split = str(split)
        sizes = {s: info.splits[s].num_examples for s in self._plan.files}
        ranges = resolve_split(split, sizes)
        if len(ranges) == 1 and split in sizes:
            return Dataset.from_file(self._arrow_path(split), info=info.copy(), split=split,
                                     in_memory=in_memory)
        # slices and sums of splits: zero-copy slices of the (memory-mapped) split tables
        parts = {name: Dataset.from_file(self._arrow_path(name), info=info.copy(), split=name,
                                         in_memory=in_memory) for name, _, _ in ranges}
        first = parts[ranges[0][0]]
        table = pa.concat_tables([parts[name].data.slice(start, stop - start)
                                  for name, start, stop in ranges])
        # a fingerprint fixed by the prepared files and the split string, so that map()
        # caches on this dataset are found again by the next run
        fingerprint = hashlib.sha256(f"{self.cache_dir}\0{split}".encode()).hexdigest()[:16]
        out = first._new(data=table, indices=None, features=first.features,
                         fingerprint=fingerprint,
                         data_files=list(dict.fromkeys(
                             f["filename"] for ds in parts.values() for f in ds.cache_files)))
        out._split = split
        return out

    def as_streaming_dataset(self, split: str | None = None) -> Any:
        """IterableDataset(s) reading the data files directly (Hub files over HTTP)."""
        from cove.datasets.iterable_dataset import IterableDataset, IterableDatasetDict

        if self._offline is not None:
            raise ConnectionError(f"{self._offline}: streaming needs the Hub.")
        plan = self._plan
        info = DatasetInfo(features=plan.features, builder_name=self.builder_name,
                           dataset_name=self.dataset_name, config_name=self.config_name)

        def one(name: str) -> Any:
            urls = [plan.source.url(f) for f in plan.files[name]]
            # one token for the split's files: none if any URL is not the Hub's
            tokens = [plan.source.token_for(u) for u in urls if is_remote(u)]
            token = tokens[0] if tokens and all(t is tokens[0] for t in tokens) else False
            return IterableDataset._from_files(
                urls, plan.kind, reader_kwargs=dict(plan.reader_kwargs), features=plan.features,
                token=token, info=info.copy(), split=name)

        if isinstance(split, (list, tuple)):
            return [self.as_streaming_dataset(s) for s in split]
        if split is None:
            return IterableDatasetDict({name: one(name) for name in plan.files})
        parts = parse_split(str(split))
        if len(parts) != 1 or parts[0].start is not None or parts[0].stop is not None:
            raise ValueError(f"Bad split: {split!r}. Streaming reads whole splits: use one of "
                             f"{list(plan.files)}.")
        if parts[0].split not in plan.files:
            raise ValueError(f'Bad split: {split}. Available splits: {list(plan.files)}')
        return one(parts[0].split)


# -- public API -----------------------------------------------------------------------------


def load_dataset_builder(
    path: str,
    name: str | None = None,
    data_dir: str | None = None,
    data_files: Any = None,
    cache_dir: str | None = None,
    features: Features | None = None,
    revision: str | None = None,
    token: str | bool | None = None,
    num_proc: int | None = None,
    **reader_kwargs: Any,
) -> DatasetBuilder:
    """The builder for a dataset: resolves its files and config without reading the data."""
    try:
        plan = _plan(path, name, data_files, data_dir, revision, token, features, reader_kwargs)
    except _HubUnreachable as e:
        return _cached_builder(path, name, cache_dir, e)
    return DatasetBuilder(plan, cache_dir=cache_dir, num_proc=num_proc)


def _cached_builder(repo_id: str, name: str | None, cache_dir: str | None,
                    error: ConnectionError) -> DatasetBuilder:
    """Offline or unreachable Hub: the most recently prepared copy of the dataset, if any."""
    root = os.path.expanduser(cache_dir) if cache_dir else cache_root()
    base = os.path.join(root, _safe(repo_id.replace("/", "___")))
    found: dict[str, list[str]] = {}
    for info_file in glob.glob(os.path.join(glob.escape(base), "*", "0.0.0", "*",
                                            "dataset_info.json")):
        config = os.path.basename(os.path.dirname(os.path.dirname(os.path.dirname(info_file))))
        found.setdefault(config, []).append(os.path.dirname(info_file))
    if name is None:
        name = "default" if "default" in found or len(found) != 1 else next(iter(found))
    if name not in found:
        cached = f" (cached configs: {sorted(found)})" if found else ""
        raise ConnectionError(f"{error} and no prepared copy of its '{name}' config is in the "
                              f"cache {base}{cached}.") from error
    folder = max(found[name], key=lambda f: os.path.getmtime(os.path.join(f, "dataset_info.json")))
    info = DatasetInfo.from_directory(folder)
    logger.warning("%s: using the latest cached version of the dataset, in %s", error, folder)
    plan = _Plan(repo_id.replace("/", "___"), info.dataset_name or repo_id.split("/")[-1], name,
                 info.builder_name or "parquet", {s: [] for s in info.splits or {}},
                 _Source(base="", repo_id=repo_id), {}, info.features)
    builder = DatasetBuilder(plan, cache_dir=cache_dir)
    builder.cache_dir = folder
    builder._offline = error
    return builder


def load_dataset(
    path: str,
    name: str | None = None,
    data_dir: str | None = None,
    data_files: Any = None,
    split: str | None = None,
    cache_dir: str | None = None,
    features: Features | None = None,
    download_mode: Any = None,
    revision: str | None = None,
    token: str | bool | None = None,
    streaming: bool = False,
    num_proc: int | None = None,
    keep_in_memory: bool | None = None,
    verification_mode: str | None = None,
    **reader_kwargs: Any,
) -> Any:
    """Load a dataset: a format name ("csv", "json", "parquet", "text", "arrow") with
    `data_files`, a local folder, or a Hub dataset repository id.

    Returns a Dataset for `split` (e.g. "train", "train[:10%]", "train+test"), else a
    DatasetDict of every split; with `streaming=True`, IterableDataset(s) that read the files
    as they go. `keep_in_memory` reads the prepared Arrow files into memory instead of
    memory-mapping them; `verification_mode="no_checks"` skips comparing the numbers of rows
    with the dataset card's.
    """
    builder = load_dataset_builder(path, name, data_dir=data_dir, data_files=data_files,
                                   cache_dir=cache_dir, features=features, revision=revision,
                                   token=token, num_proc=num_proc, **reader_kwargs)
    if streaming:
        return builder.as_streaming_dataset(split)
    builder.download_and_prepare(download_mode=download_mode,
                                 verification_mode=verification_mode)
    return builder.as_dataset(split, in_memory=bool(keep_in_memory))


def load_from_disk(dataset_path: str | os.PathLike, keep_in_memory: bool | None = None) -> Any:
    """A Dataset or DatasetDict saved with save_to_disk."""
    path = os.fspath(dataset_path)
    if os.path.isfile(os.path.join(path, "dataset_dict.json")):
        from cove.datasets.dataset_dict import DatasetDict

        return DatasetDict.load_from_disk(path, keep_in_memory=keep_in_memory)
    if os.path.isfile(os.path.join(path, "state.json")):
        from cove.datasets.arrow_dataset import Dataset

        return Dataset.load_from_disk(path, keep_in_memory=keep_in_memory)
    raise FileNotFoundError(f"Directory {path} is neither a Dataset directory nor a "
                            f"DatasetDict directory (no state.json nor dataset_dict.json).")


def get_dataset_config_names(path: str, revision: str | None = None,
                             token: str | bool | None = None, data_files: Any = None,
                             **kwargs: Any) -> list[str]:
    """The config names of a folder or Hub dataset (its README `configs:`, else "default")."""
    if path in KINDS:
        return ["default"]
    if os.path.isdir(os.path.expanduser(path)):
        source = _Source(base=os.path.abspath(os.path.expanduser(path)))
    elif _looks_like_repo_id(path):
        source = _hub_source(path, revision, token)
    else:
        raise DatasetNotFoundError(f"Couldn't find '{path}': it is neither a local folder nor a "
                                   f"Hub dataset id.")
    readme = source.read_text("README.md")
    configs = df.card_configs(df.read_card_metadata(readme) if readme else {})
    return [c["config_name"] for c in configs] or ["default"]


def get_dataset_split_names(path: str, config_name: str | None = None,
                            data_files: Any = None, data_dir: str | None = None,
                            revision: str | None = None, token: str | bool | None = None,
                            **reader_kwargs: Any) -> list[str]:
    """The split names of a dataset (from its files; no data is read)."""
    plan = _plan(path, config_name, data_files, data_dir, revision, token, None, reader_kwargs)
    return list(plan.files)
