"""Fingerprints for cached transforms, the caching switches and the cache folder.

A dataset's fingerprint names its content. A transform's result gets the fingerprint
hash(input fingerprint, transform name, arguments), where functions are hashed by what they
do: their code (bytecode, constants, names), default arguments, closure cell values and the
values of the globals they use. So the same `map` run in a new process finds its cache file;
edit the function (or a global it reads) and the cache is missed.

Something that cannot be hashed deterministically gets a random fingerprint (and a one-line
warning): the result is computed every time, never reused.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import logging
import os
import pickle
import shutil
import struct
import sys
import tempfile
import types
import uuid
from typing import Any

logger = logging.getLogger(__name__)

_CACHING_ENABLED = True


def enable_caching() -> None:
    """Reuse cached map/filter results (the default)."""
    global _CACHING_ENABLED
    _CACHING_ENABLED = True


def disable_caching() -> None:
    """Recompute map/filter results every time; results go to a temporary folder."""
    global _CACHING_ENABLED
    _CACHING_ENABLED = False


def is_caching_enabled() -> bool:
    return _CACHING_ENABLED


def cache_root() -> str:
    """The datasets cache folder, read from the environment at each call.

    $COVE_DATASETS_CACHE, else $HF_DATASETS_CACHE, else $HF_HOME/datasets, else
    ~/.cache/huggingface/datasets.
    """
    for var in ("COVE_DATASETS_CACHE", "HF_DATASETS_CACHE"):
        if os.environ.get(var):
            return os.path.expanduser(os.environ[var])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "datasets")
    return os.path.join(os.path.expanduser("~"), ".cache", "huggingface", "datasets")


_TEMP_DIR: str | None = None


def temp_cache_dir() -> str:
    """A per-process folder for results that are not cached; removed when the process exits."""
    global _TEMP_DIR
    if _TEMP_DIR is None or not os.path.isdir(_TEMP_DIR):
        _TEMP_DIR = tempfile.mkdtemp(prefix="cove-datasets-")
        atexit.register(_remove_temp_dir, _TEMP_DIR, os.getpid())
    return _TEMP_DIR


def _remove_temp_dir(path: str, owner_pid: int) -> None:
    # forked map workers inherit the atexit hook: only the process that made the folder removes it
    if os.getpid() == owner_pid:
        shutil.rmtree(path, ignore_errors=True)


class UnhashableError(TypeError):
    """The object has no deterministic hash (e.g. an open file, a lock, a C object)."""


class Hasher:
    """Deterministic hash of Python values, functions included (blake2b, 16 hex digits)."""

    def __init__(self) -> None:
        self._h = hashlib.blake2b(digest_size=8)
        self._in_progress: set[int] = set()  # functions being hashed (recursive references)

    def hexdigest(self) -> str:
        return self._h.hexdigest()

    def update(self, obj: Any) -> Hasher:
        self._feed(obj)
        return self

    def _tag(self, tag: str, payload: bytes = b"") -> None:
        self._h.update(tag.encode() + struct.pack("<Q", len(payload)) + payload)

    def _feed(self, obj: Any) -> None:
        if obj is None or isinstance(obj, (bool, int, float, complex)):
            self._tag(type(obj).__name__, repr(obj).encode())
        elif isinstance(obj, str):
            self._tag("str", obj.encode("utf-8", "surrogatepass"))
        elif isinstance(obj, (bytes, bytearray, memoryview)):
            self._tag("bytes", bytes(obj))
        elif isinstance(obj, (list, tuple)):
            self._tag(type(obj).__name__, str(len(obj)).encode())
            for item in obj:
                self._feed(item)
        elif isinstance(obj, dict):
            self._tag("dict", str(len(obj)).encode())
            for key, value in obj.items():
                self._feed(key)
                self._feed(value)
        elif isinstance(obj, (set, frozenset)):
            # element order of a set varies between runs: hash the sorted element hashes
            self._tag("set", "".join(sorted(Hasher().update(x).hexdigest() for x in obj)).encode())
        elif isinstance(obj, types.CodeType):
            self._feed_code(obj)
        elif isinstance(obj, types.FunctionType):
            self._feed_function(obj)
        elif isinstance(obj, types.MethodType):
            self._tag("method")
            self._feed(obj.__func__)
            self._feed(obj.__self__)
        elif isinstance(obj, functools.partial):
            self._tag("partial")
            self._feed(obj.func)
            self._feed(obj.args)
            self._feed(obj.keywords)
        elif isinstance(obj, types.ModuleType):
            self._tag("module", obj.__name__.encode())
        elif isinstance(obj, type):
            self._feed_class(obj)
        elif isinstance(obj, types.BuiltinFunctionType):
            module = getattr(obj, "__module__", None) or ""
            self._tag("named", f"{module}.{obj.__qualname__}".encode())
        elif hasattr(obj, "_fingerprint") and type(obj).__module__.startswith("cove.datasets"):
            # a Dataset is named by its fingerprint (hashing its table would read all the data)
            self._tag("dataset", str(obj._fingerprint).encode())
        elif type(obj).__module__ == "numpy" and hasattr(obj, "tobytes"):
            self._tag("ndarray", f"{obj.dtype}{getattr(obj, 'shape', ())}".encode() + obj.tobytes())
        else:
            self._feed_object(obj)

    def _feed_code(self, code: types.CodeType) -> None:
        # file names and line numbers are left out: moving a function keeps its cache
        self._tag("code", code.co_code)
        self._feed(code.co_consts)
        self._feed(code.co_names)
        self._feed(code.co_varnames)
        self._feed(code.co_freevars)
        self._feed(code.co_cellvars)
        self._feed((code.co_argcount, code.co_kwonlyargcount, code.co_flags))

    def _feed_function(self, func: types.FunctionType) -> None:
        if id(func) in self._in_progress:  # a recursive function refers to itself
            self._tag("recursion", func.__qualname__.encode())
            return
        self._in_progress.add(id(func))
        try:
            self._tag("function")
            self._feed_code(func.__code__)
            self._feed(func.__defaults__)
            self._feed(func.__kwdefaults__)
            cells = []
            for cell in func.__closure__ or ():
                try:
                    cells.append(cell.cell_contents)
                except ValueError:  # an empty cell (a variable not assigned yet)
                    cells.append("<empty cell>")
            self._feed(cells)
            used = {}
            for name in sorted(_global_names(func.__code__)):
                if name in func.__globals__:
                    used[name] = func.__globals__[name]
            self._feed(used)
        finally:
            self._in_progress.discard(id(func))

    def _feed_class(self, cls: type) -> None:
        self._tag("class", f"{cls.__module__}.{cls.__qualname__}".encode())
        if not _is_user_class(cls) or id(cls) in self._in_progress:
            return  # a library class is named by its import path
        # the user's own class: its methods' code counts, so editing one misses the cache
        self._in_progress.add(id(cls))
        try:
            for name, value in sorted(vars(cls).items()):
                if isinstance(value, (staticmethod, classmethod)):
                    value = value.__func__
                if isinstance(value, property):
                    value = (value.fget, value.fset, value.fdel)
                if isinstance(value, (types.FunctionType, tuple)):
                    self._feed(name)
                    self._feed(value)
            for base in cls.__bases__:
                self._feed_class(base)
        finally:
            self._in_progress.discard(id(cls))

    def _feed_object(self, obj: Any) -> None:
        cls = type(obj)
        self._tag("object")
        self._feed_class(cls)
        state = getattr(obj, "__dict__", None)
        if state is not None and not _has_own_pickling(cls):
            self._feed(dict(state))
        else:
            self._feed_pickle(obj)

    def _feed_pickle(self, obj: Any) -> None:
        try:
            data = pickle.dumps(obj, protocol=4)
        except Exception as err:  # noqa: BLE001 - any failure means "no deterministic hash"
            raise UnhashableError(
                f"cannot hash an object of type {type(obj).__qualname__}: {err}"
            ) from None
        self._tag("pickle", data)


def _is_user_class(cls: type) -> bool:
    """A class from the user's script or project (not from an installed library or cove)."""
    if cls.__module__ == "__main__":
        return True
    if cls.__module__.split(".")[0] in ("builtins", "cove"):
        return False
    module = sys.modules.get(cls.__module__)
    path = getattr(module, "__file__", None)
    if not path:
        return False
    path = os.path.abspath(path)
    library_roots = {os.path.abspath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    return "site-packages" not in path and not any(path.startswith(r + os.sep)
                                                   for r in library_roots)


_PICKLING_HOOKS = ("__getstate__", "__setstate__", "__reduce__", "__reduce_ex__")


def _has_own_pickling(cls: type) -> bool:
    # such objects (e.g. torch tensors) keep their state outside __dict__: hash their pickle
    return any(hook in vars(base) for base in cls.__mro__[:-1] for hook in _PICKLING_HOOKS)


def _global_names(code: types.CodeType) -> set[str]:
    """Names a code object (and the functions defined in it) may read from its globals."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def hash_object(obj: Any) -> str:
    """Deterministic 16-hex-digit hash; raises UnhashableError when there is none."""
    return Hasher().update(obj).hexdigest()


def generate_random_fingerprint() -> str:
    return uuid.uuid4().hex[:16]


def update_fingerprint(fingerprint: str, transform: str, args: dict) -> tuple[str, bool]:
    """Fingerprint of a transform's result and whether it is deterministic (cacheable).

    `args` are the transform's arguments (functions included). When one cannot be hashed the
    result gets a random fingerprint and a one-line warning explains why it will not be cached.
    """
    try:
        digest = Hasher().update([fingerprint, transform, args]).hexdigest()
        return digest, True
    except (UnhashableError, RecursionError) as err:
        logger.warning(
            "%s: the arguments could not be hashed (%s); using a random fingerprint, "
            "the result will not be cached",
            transform,
            err,
        )
        return generate_random_fingerprint(), False


def cache_usage(dataset: Any) -> dict:
    """Cache files next to a dataset's data: {"directory", "files", "num_bytes"}.

    Lists the `cache-*.arrow` files of transforms in the folder that holds the dataset's
    cache files (None and empty for an in-memory dataset).
    """
    files = [entry["filename"] for entry in dataset.cache_files]
    if not files:
        return {"directory": None, "files": [], "num_bytes": 0}
    directory = os.path.dirname(os.path.abspath(files[0]))
    found = sorted(
        os.path.join(directory, name)
        for name in os.listdir(directory)
        if name.startswith("cache-") and name.endswith(".arrow")
    )
    return {
        "directory": directory,
        "files": found,
        "num_bytes": sum(os.path.getsize(path) for path in found),
    }
