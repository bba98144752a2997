"""DatasetInfo and SplitInfo: the metadata stored in dataset_info.json (datasets' format)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from .features import Features
from .writer import atomic_file

DATASET_INFO_FILENAME = "dataset_info.json"


@dataclass
class SplitInfo:
    """Size of one split: its name, bytes and number of rows."""

    name: str = ""
    num_bytes: int = 0
    num_examples: int = 0
    dataset_name: str | None = None

    def to_dict(self) -> dict:
        out = {"name": self.name, "num_bytes": self.num_bytes, "num_examples": self.num_examples}
        if self.dataset_name is not None:
            out["dataset_name"] = self.dataset_name
        return out

    @classmethod
    def from_dict(cls, dic: dict) -> SplitInfo:
        return cls(
            name=dic.get("name", ""),
            num_bytes=int(dic.get("num_bytes") or 0),
            num_examples=int(dic.get("num_examples") or 0),
            dataset_name=dic.get("dataset_name"),
        )


def _version_str(version: Any) -> str | None:
    if version is None:
        return None
    if isinstance(version, dict):  # datasets writes {"version_str": "0.0.0", "major": 0, ...}
        return version.get("version_str")
    return str(version)


@dataclass
class DatasetInfo:
    """Description, features and split sizes of a dataset."""

    description: str = ""
    citation: str = ""
    homepage: str = ""
    license: str = ""
    features: Features | None = None
    builder_name: str | None = None
    dataset_name: str | None = None
    config_name: str | None = None
    version: str | None = None
    splits: dict[str, SplitInfo] | None = None
    download_size: int | None = None
    dataset_size: int | None = None
    extra: dict = field(default_factory=dict, repr=False)  # unknown keys, kept on round trips

    def __post_init__(self) -> None:
        if self.features is not None and not isinstance(self.features, Features):
            self.features = (
                Features.from_dict(self.features)
                if _is_serialised(self.features)
                else Features(self.features)
            )
        self.version = _version_str(self.version)
        if self.splits is not None:
            if isinstance(self.splits, (list, tuple)):
                self.splits = {s.name if isinstance(s, SplitInfo) else s["name"]: s for s in self.splits}
            self.splits = {
                name: s if isinstance(s, SplitInfo) else SplitInfo.from_dict({"name": name, **s})
                for name, s in self.splits.items()
            }

    def to_dict(self) -> dict:
        """The dataset_info.json content: datasets' key order, None fields left out."""
        out: dict[str, Any] = {
            "description": self.description,
            "citation": self.citation,
            "homepage": self.homepage,
            "license": self.license,
        }
        if self.features is not None:
            out["features"] = self.features.to_dict()
        for key in ("builder_name", "dataset_name", "config_name"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.version is not None:
            major, minor, patch = (self.version.split(".") + ["0", "0", "0"])[:3]
            out["version"] = {"version_str": self.version}
            if all(p.isdigit() for p in (major, minor, patch)):
                out["version"].update(major=int(major), minor=int(minor), patch=int(patch))
        if self.splits is not None:
            out["splits"] = {name: s.to_dict() for name, s in self.splits.items()}
        for key in ("download_size", "dataset_size"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        for key, value in self.extra.items():
            out.setdefault(key, value)
        return out

    @classmethod
    def from_dict(cls, dic: dict) -> DatasetInfo:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in dic.items() if k in names}
        extra = {k: v for k, v in dic.items() if k not in names and v is not None}
        for key in ("description", "citation", "homepage", "license"):
            if known.get(key) is None:
                known.pop(key, None)
        return cls(**known, extra=extra)

    def write_to_directory(self, dataset_info_dir: str | os.PathLike) -> None:
        """Write dataset_info.json into the folder (atomically)."""
        path = os.path.join(os.fspath(dataset_info_dir), DATASET_INFO_FILENAME)
        write_json_atomic(path, self.to_dict(), indent=2)

    @classmethod
    def from_directory(cls, dataset_info_dir: str | os.PathLike) -> DatasetInfo:
        path = os.path.join(os.fspath(dataset_info_dir), DATASET_INFO_FILENAME)
        try:
            with open(path, encoding="utf-8") as f:
                return cls.from_dict(json.load(f))
        except FileNotFoundError:
            raise FileNotFoundError(f"No {DATASET_INFO_FILENAME} in {dataset_info_dir}") from None

    def copy(self) -> DatasetInfo:
        return DatasetInfo.from_dict(json.loads(json.dumps(self.to_dict())))


def _is_serialised(features: Any) -> bool:
    """Whether `features` is to_dict() output (plain JSON all the way down) rather than a dict
    of feature objects; a struct's JSON has "_type" only at its leaves, so look at them all."""
    if isinstance(features, dict):
        return all(_is_serialised(v) for v in features.values())
    if isinstance(features, (list, tuple)):
        return all(_is_serialised(v) for v in features)
    return features is None or isinstance(features, (str, int, float, bool))


def write_json_atomic(path: str, obj: Any, indent: int | None = None) -> None:
    """Write JSON to `path` through a temp file in the same folder and a rename."""
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False)
