"""DatasetDict: a dict of split name -> Dataset, with the Dataset verbs applied per split."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from typing import Any

from .arrow_dataset import Dataset
from .features import ClassLabel, Features
from .info import write_json_atomic

_SPLIT_NAME = re.compile(r"^\w+(\.\w+)*$")


class DatasetDict(dict):
    """Splits of a dataset, e.g. {"train": Dataset, "test": Dataset}."""

    def _check_values_type(self) -> None:
        for name, dataset in self.items():
            if not isinstance(dataset, Dataset):
                raise TypeError(
                    f"DatasetDict values must be Dataset objects, split {name!r} is "
                    f"{type(dataset).__name__}"
                )

    def _apply(self, verb: str, *args: Any, **kwargs: Any) -> DatasetDict:
        self._check_values_type()
        return DatasetDict({k: getattr(ds, verb)(*args, **kwargs) for k, ds in self.items()})

    def __repr__(self) -> str:
        body = "\n".join(
            f"    {k}: " + repr(v).replace("\n", "\n    ") for k, v in self.items()
        )
        return f"DatasetDict({{\n{body}\n}})"

    # -- properties -----------------------------------------------------------------------

    @property
    def data(self) -> dict:
        return {k: ds.data for k, ds in self.items()}

    @property
    def cache_files(self) -> dict[str, list[dict]]:
        return {k: ds.cache_files for k, ds in self.items()}

    @property
    def num_columns(self) -> dict[str, int]:
        return {k: ds.num_columns for k, ds in self.items()}

    @property
    def num_rows(self) -> dict[str, int]:
        return {k: ds.num_rows for k, ds in self.items()}

    @property
    def column_names(self) -> dict[str, list[str]]:
        return {k: ds.column_names for k, ds in self.items()}

    @property
    def shape(self) -> dict[str, tuple[int, int]]:
        return {k: ds.shape for k, ds in self.items()}

    def unique(self, column: str) -> dict[str, list]:
        return {k: ds.unique(column) for k, ds in self.items()}

    def cleanup_cache_files(self) -> dict[str, int]:
        """Remove unused cache files of each split; returns how many per split."""
        return {k: ds.cleanup_cache_files() for k, ds in self.items()}

    # -- per-split verbs --------------------------------------------------------------------

    def map(self, function: Callable | None = None, *args: Any,
            cache_file_names: dict[str, str | None] | None = None, **kwargs: Any) -> DatasetDict:
        """Dataset.map on every split (`cache_file_names` gives a file per split)."""
        self._check_values_type()
        names = cache_file_names or {}
        return DatasetDict({
            k: ds.map(function, *args, cache_file_name=names.get(k), **kwargs)
            for k, ds in self.items()
        })

    def filter(self, function: Callable | None = None, *args: Any,
               cache_file_names: dict[str, str | None] | None = None,
               **kwargs: Any) -> DatasetDict:
        self._check_values_type()
        names = cache_file_names or {}
        return DatasetDict({
            k: ds.filter(function, *args, cache_file_name=names.get(k), **kwargs)
            for k, ds in self.items()
        })

    def shuffle(self, seeds: int | dict[str, int | None] | None = None, seed: int | None = None,
                generators: dict | None = None, **kwargs: Any) -> DatasetDict:
        """Shuffle each split; `seed` (or `seeds`, one per split) makes it reproducible."""
        self._check_values_type()
        if seed is not None and seeds is not None:
            raise ValueError("shuffle: give seed= or seeds=, not both")
        seeds = seed if seeds is None else seeds
        per_split = seeds if isinstance(seeds, dict) else dict.fromkeys(self, seeds)
        generators = generators or {}
        return DatasetDict({
            k: ds.shuffle(seed=per_split.get(k), generator=generators.get(k), **kwargs)
            for k, ds in self.items()
        })

    def sort(self, *args: Any, **kwargs: Any) -> DatasetDict:
        return self._apply("sort", *args, **kwargs)

    def flatten(self, max_depth: int = 16) -> DatasetDict:
        return self._apply("flatten", max_depth=max_depth)

    def flatten_indices(self, **kwargs: Any) -> DatasetDict:
        return self._apply("flatten_indices", **kwargs)

    def cast(self, features: Features) -> DatasetDict:
        return self._apply("cast", features)

    def cast_column(self, column: str, feature: Any) -> DatasetDict:
        return self._apply("cast_column", column, feature)

    def class_encode_column(self, column: str, include_nulls: bool = False) -> DatasetDict:
        """ClassLabel-encode a column with the same names in every split."""
        self._check_values_type()
        names = sorted({str(v) for ds in self.values() for v in ds.unique(column) if v is not None})
        out = {}
        for k, ds in self.items():
            encoded = ds.class_encode_column(column, include_nulls=include_nulls)
            label = encoded.features[column]
            if label.names != names:  # align to the union of the labels of all splits
                target = ClassLabel(names=names)
                mapping = [target.str2int(n) for n in label.names]
                encoded = encoded.map(
                    lambda batch, m=mapping: {column: [m[v] if v is not None and v >= 0 else v
                                                       for v in batch[column]]},
                    batched=True,
                    features=Features({**encoded.features, column: target}),
                )
            out[k] = encoded
        return DatasetDict(out)

    def align_labels_with_mapping(self, label2id: dict, label_column: str) -> DatasetDict:
        return self._apply("align_labels_with_mapping", label2id, label_column)

    def rename_column(self, original_column_name: str, new_column_name: str) -> DatasetDict:
        return self._apply("rename_column", original_column_name, new_column_name)

    def rename_columns(self, column_mapping: dict[str, str]) -> DatasetDict:
        return self._apply("rename_columns", column_mapping)

    def remove_columns(self, column_names: str | list[str]) -> DatasetDict:
        return self._apply("remove_columns", column_names)

    def select_columns(self, column_names: str | list[str]) -> DatasetDict:
        return self._apply("select_columns", column_names)

    # -- format ---------------------------------------------------------------------------

    def set_format(self, type: str | None = None, columns: Any = None,  # noqa: A002
                   output_all_columns: bool = False, **format_kwargs: Any) -> None:
        self._check_values_type()
        for ds in self.values():
            ds.set_format(type, columns, output_all_columns, **format_kwargs)

    def reset_format(self) -> None:
        self.set_format(None)

    def with_format(self, type: str | None = None, columns: Any = None,  # noqa: A002
                    output_all_columns: bool = False, **format_kwargs: Any) -> DatasetDict:
        return self._apply("with_format", type, columns, output_all_columns, **format_kwargs)

    def set_transform(self, transform: Callable | None, columns: Any = None,
                      output_all_columns: bool = False) -> None:
        for ds in self.values():
            ds.set_transform(transform, columns, output_all_columns)

    def with_transform(self, transform: Callable | None, columns: Any = None,
                       output_all_columns: bool = False) -> DatasetDict:
        return self._apply("with_transform", transform, columns, output_all_columns)

    @contextlib.contextmanager
    def formatted_as(self, type: str | None = None, columns: Any = None,  # noqa: A002
                     output_all_columns: bool = False, **format_kwargs: Any) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for ds in self.values():
                stack.enter_context(ds.formatted_as(type, columns, output_all_columns,
                                                    **format_kwargs))
            yield

    # -- save / load / hub ------------------------------------------------------------------

    def save_to_disk(self, dataset_dict_path: str | os.PathLike,
                     max_shard_size: str | int | None = None,
                     num_shards: dict[str, int] | None = None, num_proc: int | None = None,
                     storage_options: dict | None = None) -> None:
        """datasets' layout: dataset_dict.json + one save_to_disk folder per split."""
        self._check_values_type()
        path = os.fspath(dataset_dict_path)
        for name in self:
            if not _SPLIT_NAME.match(name):
                raise ValueError(f"Split name {name!r} must match {_SPLIT_NAME.pattern}")
        os.makedirs(path, exist_ok=True)
        old_splits = _saved_splits(path)
        num_shards = num_shards or {}
        for name, ds in self.items():
            ds.save_to_disk(os.path.join(path, name), max_shard_size=max_shard_size,
                            num_shards=num_shards.get(name), storage_options=storage_options)
        write_json_atomic(os.path.join(path, "dataset_dict.json"), {"splits": list(self)})
        # Only now, with the new splits listed, the folders of splits the earlier save had
        # and this one lacks go (datasets leaves them); a kill before this leaves a valid
        # folder. Other files and folders are the user's and stay.
        in_use = {os.path.abspath(f["filename"]) for ds in self.values() for f in ds.cache_files}
        for name in old_splits:
            folder = os.path.join(path, name)
            if name in self or os.path.islink(folder) or not os.path.isdir(folder):
                continue
            if any(f.startswith(os.path.abspath(folder) + os.sep) for f in in_use):
                continue  # a split saved now is still read from there: leave it
            shutil.rmtree(folder)

    @staticmethod
    def load_from_disk(dataset_dict_path: str | os.PathLike, keep_in_memory: bool | None = None,
                       storage_options: dict | None = None) -> DatasetDict:
        path = os.fspath(dataset_dict_path)
        meta = os.path.join(path, "dataset_dict.json")
        if not os.path.isfile(meta):
            if os.path.isfile(os.path.join(path, "state.json")):
                raise FileNotFoundError(
                    f"{path} holds a Dataset (state.json), not a DatasetDict; use "
                    "Dataset.load_from_disk or cove.datasets.load_from_disk"
                )
            raise FileNotFoundError(f"No dataset_dict.json in {path}: not a saved DatasetDict")
        with open(meta, encoding="utf-8") as f:
            splits = json.load(f)["splits"]
        return DatasetDict({
            name: Dataset.load_from_disk(os.path.join(path, name), keep_in_memory=keep_in_memory)
            for name in splits
        })

    @staticmethod
    def _from_files(kind: str, path_or_paths: dict[str, Any], features: Any,
                    cache_dir: str | None, keep_in_memory: bool, **kwargs: Any) -> DatasetDict:
        from .load import load_dataset

        if not isinstance(path_or_paths, dict):
            raise TypeError(f"DatasetDict.from_{kind} takes a dict of split name -> path(s)")
        files = {split: [os.fspath(p) for p in paths] if isinstance(paths, (list, tuple))
                 else os.fspath(paths) for split, paths in path_or_paths.items()}
        return load_dataset(kind, data_files=files, features=features, cache_dir=cache_dir,
                            keep_in_memory=keep_in_memory, **kwargs)

    @staticmethod
    def from_csv(path_or_paths: dict[str, Any], features: Any = None,
                 cache_dir: str | None = None, keep_in_memory: bool = False,
                 **kwargs: Any) -> DatasetDict:
        """Splits from CSV files: {"train": "train.csv", "test": [...]}."""
        return DatasetDict._from_files("csv", path_or_paths, features, cache_dir,
                                       keep_in_memory, **kwargs)

    @staticmethod
    def from_json(path_or_paths: dict[str, Any], features: Any = None,
                  cache_dir: str | None = None, keep_in_memory: bool = False,
                  **kwargs: Any) -> DatasetDict:
        return DatasetDict._from_files("json", path_or_paths, features, cache_dir,
                                       keep_in_memory, **kwargs)

    @staticmethod
    def from_parquet(path_or_paths: dict[str, Any], features: Any = None,
                     cache_dir: str | None = None, keep_in_memory: bool = False,
                     **kwargs: Any) -> DatasetDict:
        return DatasetDict._from_files("parquet", path_or_paths, features, cache_dir,
                                       keep_in_memory, **kwargs)

    @staticmethod
    def from_text(path_or_paths: dict[str, Any], features: Any = None,
                  cache_dir: str | None = None, keep_in_memory: bool = False,
                  **kwargs: Any) -> DatasetDict:
        return DatasetDict._from_files("text", path_or_paths, features, cache_dir,
                                       keep_in_memory, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Upload every split (see cove.datasets.hub.push_to_hub)."""
        from .hub import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)


def _saved_splits(path: str) -> list[str]:
    """The splits an earlier save_to_disk listed in `path`'s dataset_dict.json (none when
    there is no readable one); names that aren't split names are never trusted as folders."""
    try:
        with open(os.path.join(path, "dataset_dict.json"), encoding="utf-8") as f:
            splits = json.load(f).get("splits")
    except (OSError, ValueError, AttributeError):
        return []
    if not isinstance(splits, list):
        return []
    return [s for s in splits if isinstance(s, str) and _SPLIT_NAME.fullmatch(s)]
