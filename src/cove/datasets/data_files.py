"""Which files make up each split: `data_files` patterns, the Hub's naming conventions and the
README's `configs:`.

Patterns are globs as datasets resolves them: `*` stays within a folder, `**` crosses folders,
`[...]` is a character class. Hidden files and folders (".name") and special folders
("__name__") are skipped unless the pattern names them. Without `data_files`, the splits come
from the file and folder names (see "Structure your repository" in datasets' docs): sharded
`data/{split}-00000-of-00001.*` files, then folders, then file names containing
train/validation/test keywords, else everything is "train".
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import yaml

from cove.datasets.errors import DataFilesNotFoundError
from cove.datasets.packaged import EXTENSIONS, infer_kind
from cove.datasets.splits import SPLIT_NAME

SPLIT_KEYWORDS = {
    "train": ["train", "training"],
    "validation": ["validation", "valid", "dev", "val"],
    "test": ["test", "testing", "eval", "evaluation"],
}
DEFAULT_SPLITS = ["train", "validation", "test"]
_SEP = "-._ 0-9"  # what may stand around a split keyword in a name
SHARDED_PATTERN = "data/{split}-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9]*.*"
_SHARDED = re.compile(rf"^data/(?P<split>{SPLIT_NAME})-\d{{5}}-of-\d{{5}}[^/]*\.[^/]*$")
PATTERNS_IN_DIR_NAME = {
    split: [p.format(k=k, s=_SEP) for k in keywords for p in
            ("**/{k}/**", "**/{k}[{s}]*/**", "**/*[{s}]{k}/**", "**/*[{s}]{k}[{s}]*/**")]
    for split, keywords in SPLIT_KEYWORDS.items()
}
PATTERNS_IN_FILE_NAME = {
    split: [p.format(k=k, s=_SEP) for k in keywords for p in
            ("**/{k}[{s}]*", "**/*[{s}]{k}[{s}]*")]
    for split, keywords in SPLIT_KEYWORDS.items()
}
# never data, unless a pattern names them
FILES_TO_IGNORE = {"README.md", "config.json", "dataset_info.json", "dataset_infos.json",
                   "dummy_data.zip", "dataset_dict.json"}


def sanitize_patterns(data_files: Any) -> dict[str, list[str]]:
    """`data_files` as {split: [patterns]}: a str or list is the "train" split."""
    out = _sanitize(data_files)
    for split in out:
        if not re.fullmatch(SPLIT_NAME, split):
            raise ValueError(f"Split name {split!r} must match {SPLIT_NAME!r}: letters, digits "
                             f"and '_', with '.' between words.")
    return out


def _sanitize(data_files: Any) -> dict[str, list[str]]:
    if isinstance(data_files, (str, os.PathLike)):
        return {"train": [os.fspath(data_files)]}
    if isinstance(data_files, dict):
        return {str(split): [os.fspath(p) for p in (v if isinstance(v, (list, tuple)) else [v])]
                for split, v in data_files.items()}
    if isinstance(data_files, (list, tuple)):
        if any(isinstance(p, dict) for p in data_files):  # the README form [{split, path}]
            out: dict[str, list[str]] = {}
            for item in data_files:
                if not (isinstance(item, dict) and set(item) == {"split", "path"}):
                    raise ValueError(f"data_files entries must all be {{'split': ..., 'path': ...}}"
                                     f" dicts in this form, got {item!r}.")
                paths = item["path"] if isinstance(item["path"], list) else [item["path"]]
                out.setdefault(str(item["split"]), []).extend(paths)
            return out
        return {"train": [os.fspath(p) for p in data_files]}
    raise TypeError(f"data_files must be a str, a list or a dict of split -> patterns, "
                    f"got {type(data_files).__name__}.")


# -- glob matching --------------------------------------------------------------------------


def has_wildcards(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


@lru_cache(maxsize=256)
def glob_regex(pattern: str) -> re.Pattern:
    """A regex for a glob over "/"-separated paths (fsspec >= 2023.12 semantics)."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1:end]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(c))
            i += 1
    return re.compile("".join(out) + r"\Z", re.S)


def _requested(path: str, pattern: str) -> bool:
    """False for a hidden or special (__x__) file or folder the pattern does not ask for."""
    hidden = [p for p in path.split("/") if p.startswith((".", "__")) and p not in (".", "..")]
    if not hidden:
        return True
    asked = [p for p in pattern.split("/") if p.startswith(".") or p.startswith("__")]
    return len(asked) >= len(hidden)


def match_paths(pattern: str, paths: Iterable[str]) -> list[str]:
    """The "/"-separated relative `paths` matching `pattern`, sorted, ignored files left out."""
    regex = glob_regex(pattern.lstrip("/"))
    base = pattern.rsplit("/", 1)[-1]
    return sorted(
        p for p in paths
        if regex.match(p) and _requested(p, pattern)
        and (p.rsplit("/", 1)[-1] not in FILES_TO_IGNORE or p.rsplit("/", 1)[-1] == base)
    )


def walk_files(root: str) -> list[str]:
    """Every file under `root`, as "/"-separated paths relative to it (symlinks to files too)."""
    out = []
    for folder, _, files in os.walk(root, followlinks=True):
        rel = os.path.relpath(folder, root).replace(os.sep, "/")
        for f in files:
            if os.path.isfile(os.path.join(folder, f)):
                out.append(f if rel == "." else f"{rel}/{f}")
    return out


def glob_local(pattern: str, base: str) -> list[str]:
    """Absolute paths of the local files matching `pattern` (absolute, or relative to `base`)."""
    pattern = os.path.expanduser(pattern)
    full = pattern if os.path.isabs(pattern) else os.path.join(base, pattern)
    full = os.path.normpath(full).replace(os.sep, "/") + ("/" if full.endswith("/") else "")
    if not has_wildcards(full):
        return [os.path.abspath(full)] if os.path.isfile(full) else []
    parts = full.split("/")
    fixed = next(i for i, p in enumerate(parts) if has_wildcards(p))
    root = "/".join(parts[:fixed]) or "/"
    rest = "/".join(parts[fixed:])
    if not os.path.isdir(root):
        return []
    return [os.path.abspath(os.path.join(root, p)) for p in match_paths(rest, walk_files(root))]


# -- split inference ------------------------------------------------------------------------


def infer_split_patterns(paths: list[str]) -> dict[str, list[str]]:
    """{split: patterns} from the names of `paths` (relative, "/"-separated), datasets' way."""
    paths = [p for p in paths if _requested(p, "")]
    sharded = {m["split"] for p in paths if (m := _SHARDED.match(p))}
    if sharded:
        order = [s for s in DEFAULT_SPLITS if s in sharded] + sorted(sharded - set(DEFAULT_SPLITS))
        return {s: [SHARDED_PATTERN.format(split=s)] for s in order}
    for table in (PATTERNS_IN_DIR_NAME, PATTERNS_IN_FILE_NAME):
        found = {split: patterns for split, patterns in table.items()
                 if any(match_paths(p, paths) for p in patterns)}
        if found:
            return found
    return {"train": ["**"]}


def resolve_patterns(patterns: dict[str, list[str]], glob: Any,
                     extensions: set[str] | None = None,
                     unique: bool = False) -> dict[str, list[str]]:
    """{split: files}: each pattern through `glob(pattern) -> files`, in order.

    A file listed twice is read twice, as datasets does, unless `unique` (for the inferred
    patterns, which overlap). A pattern without wildcards that matches nothing, or a split
    left without files, raises DataFilesNotFoundError naming the pattern. `extensions` keeps
    only files that end so.
    """
    out = {}
    for split, split_patterns in patterns.items():
        files: list[str] = []
        for pattern in split_patterns:
            found = glob(pattern)
            if extensions is not None:
                found = [f for f in found if has_extension(f, extensions)]
            if not found and not has_wildcards(pattern):
                raise DataFilesNotFoundError(f"Unable to find '{pattern}'")
            files.extend(f for f in found if not (unique and f in files))
        if not files:
            raise DataFilesNotFoundError(
                f"Unable to find any data file for split {split!r} matching "
                f"{', '.join(repr(p) for p in split_patterns)}"
                + (f" with a supported extension {sorted(extensions)}" if extensions else ""))
        out[split] = files
    return out


def has_extension(path: str, extensions: set[str]) -> bool:
    """Whether one of the name's suffixes is in `extensions` ("x.csv.gz" has ".csv")."""
    suffixes = path.rsplit("/", 1)[-1].lower().split(".")[1:]
    return any(f".{suffix}" in extensions for suffix in suffixes)


def infer_kind_of_files(files: dict[str, list[str]]) -> str:
    """The packaged kind most of the files have, by extension."""
    counts = Counter(kind for split_files in files.values() for f in split_files
                     if (kind := infer_kind(f)))
    if not counts:
        some = [f for split_files in files.values() for f in split_files][:3]
        raise DataFilesNotFoundError(
            f"No file with a supported extension ({', '.join(sorted(EXTENSIONS))}) among the "
            f"data files: {some}")
    return counts.most_common(1)[0][0]


def extensions_of(kind: str) -> set[str]:
    return {ext for ext, k in EXTENSIONS.items() if k == kind}


# -- README.md configs ----------------------------------------------------------------------


def read_card_metadata(text: str) -> dict:
    """The YAML front matter of a dataset card (README.md), or {} when there is none."""
    m = re.match(r"\A\ufeff?---\s*\n(.*?)\n---\s*(?:\n|\Z)", text, re.S)
    if not m:
        return {}
    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError as e:
        raise ValueError(f"The README.md YAML metadata is not valid YAML: {e}") from None
    return data if isinstance(data, dict) else {}


def card_configs(metadata: dict) -> list[dict]:
    """The `configs:` entries of the card metadata, checked."""
    configs = metadata.get("configs") or []
    if not isinstance(configs, list):
        raise ValueError("The README.md `configs:` must be a list of configs.")
    for c in configs:
        if not isinstance(c, dict) or not c.get("config_name"):
            raise ValueError(f"Each README.md config needs a config_name, got {c!r}.")
    return configs


def select_config(configs: list[dict], name: str | None) -> dict | None:
    """The config called `name`; with no name, the default one (or the only one)."""
    if not configs:
        if name not in (None, "default"):
            raise ValueError(f"BuilderConfig '{name}' not found: this dataset has only the "
                             f"'default' config.")
        return None
    names = [c["config_name"] for c in configs]
    if name is None:
        defaults = [c for c in configs if c.get("default")]
        if defaults:
            return defaults[0]
        if len(configs) == 1 or "default" in names:
            return configs[names.index("default")] if "default" in names else configs[0]
        raise ValueError(f"Config name is missing. Please pick one among the available configs: "
                         f"{names}. Example: load_dataset('...', '{names[0]}')")
    if name not in names:
        raise ValueError(f"BuilderConfig '{name}' not found. Available: {names}")
    return configs[names.index(name)]


def card_features(metadata: dict, config_name: str) -> dict | None:
    """The serialized features of `config_name` in the card's `dataset_info:`, if any."""
    info = metadata.get("dataset_info")
    if isinstance(info, dict):
        info = [info]
    for entry in info or []:
        if isinstance(entry, dict) and entry.get("config_name", "default") == config_name:
            return entry
    return None
