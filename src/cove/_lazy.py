"""Lazy package exports (PEP 562), shared by `cove` and its library packages.

A package lists its public names and the module that defines each; a name's module is imported
on first use only, so `import cove` stays light (no torch). A name the package lacks raises an
error that says whether the Hugging Face library it stands in for has that name, read from a
list of that library's public names shipped with Cove (`_reference_names/<library>.txt.gz`,
one `name<TAB>versions` per line, written by tests/test_top_level.py from the installed
oracles): Cove never imports the reference libraries.
"""

from __future__ import annotations

import difflib
import functools
import gzip
import importlib
import opcode
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

REFERENCE_NAMES_DIR = os.path.join(os.path.dirname(__file__), "_reference_names")
_IMPORT_FROM = opcode.opmap["IMPORT_FROM"]


@functools.cache
def reference_names(library: str) -> dict[str, str]:
    """The public top-level names of `library` (transformers, datasets, ...) -> versions."""
    path = os.path.join(REFERENCE_NAMES_DIR, f"{library}.txt.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return dict(line.rstrip("\n").split("\t") for line in f if line.strip())


def _imported_by_from_statement() -> bool:
    """Whether the code that asked for the attribute is a `from package import name`.

    Python turns an AttributeError raised there into its own "cannot import name" ImportError
    and drops our message; raising ImportError ourselves keeps it. Anywhere else (getattr,
    hasattr) the caller must get an AttributeError.
    """
    try:
        frame = sys._getframe(3)  # _imported_by_from_statement <- missing <- __getattr__ <- caller
        return frame.f_code.co_code[frame.f_lasti] == _IMPORT_FROM
    except (AttributeError, IndexError, ValueError):  # another Python implementation
        return False


def lazy_exports(package: str, exports: dict[str, Iterable[str]], reference: str | None = None,
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """`__getattr__`, `__dir__` and `__all__` for `package`.

    `exports` maps a module (absolute name) to the public names it defines. `reference` names
    the Hugging Face library the package mirrors, for the error on a missing name.
    """
    where = {name: module for module, names in exports.items() for name in names}
    namespace = sys.modules[package].__dict__

    def missing(name: str) -> Exception:
        message = f"module {package!r} has no attribute {name!r}"
        if reference is not None:
            versions = reference_names(reference).get(name)
            if versions is not None:
                message = (f"{package!r} has no {name!r} yet: {reference} ({versions}) has it, "
                           f"Cove does not implement it yet")
            else:
                message += f" ({reference} has no such name either)"
        close = difflib.get_close_matches(name, where, n=3)
        if close:
            message += f". Did you mean: {', '.join(close)}?"
        if _imported_by_from_statement():
            return ImportError(f"cannot import name {name!r} from {package!r}: {message}",
                               name=package)
        return AttributeError(message)

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            if name.startswith("__"):  # dunder probes (copy, pickle, doctest) expect plain misses
                raise AttributeError(f"module {package!r} has no attribute {name!r}")
            raise missing(name)
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *where})

    return __getattr__, __dir__, sorted(where)
