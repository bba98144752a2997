"""Writes src/cove/_reference_names/<library>.txt.gz: the reference libraries' public names.

Cove's packages tell a user whether a name they lack exists in the Hugging Face library they
mirror (src/cove/_lazy.py) without importing it; this script records those names from the
installed oracles: transformers 5.x (.venv) and 4.57 (.venv-tf4), datasets, accelerate, peft and
trl (.venv).
Run it after upgrading an oracle:  .venv/bin/python tests/reference_names.py
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "src", "cove", "_reference_names")
LIST = ("import importlib, sys; m = importlib.import_module(sys.argv[1]); "
        "print(m.__version__); print('\\n'.join(n for n in dir(m) "
        "if n.isidentifier() and not n.startswith('_')))")


def names(python: str, library: str) -> tuple[str, list[str]]:
    out = subprocess.run([python, "-c", LIST, library], capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], out[1:]


def write(library: str, pythons: list[str]) -> None:
    versions: dict[str, list[str]] = {}
    for python in pythons:
        version, found = names(python, library)
        for name in found:
            versions.setdefault(name, []).append(version)
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, f"{library}.txt.gz")
    text = "".join(f"{n}\t{', '.join(v)}\n" for n, v in sorted(versions.items()))
    with open(path + ".tmp", "wb") as f:  # mtime 0: the file changes only when the names do
        with gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as gz:
            gz.write(text.encode())
    os.replace(path + ".tmp", path)
    print(f"{path}: {len(versions)} names")


if __name__ == "__main__":
    venv = os.path.join(ROOT, ".venv", "bin", "python")
    write("transformers", [os.path.join(ROOT, ".venv-tf4", "bin", "python"), venv])
    write("datasets", [venv])
    write("accelerate", [venv])
    write("peft", [venv])
    write("trl", [venv])
    sys.exit(0)
