"""Dataset: a map-style dataset on an Apache Arrow table, memory-mapped when it comes from files.

Row selections (select, shuffle, filter, sort, train_test_split) never copy data: they make an
"indices mapping", an Arrow uint64 column of row numbers. `flatten_indices()` materialises it.

`map` writes its results next to the input's files as `cache-<fingerprint>.arrow` (see
fingerprint.py) and reuses them in later runs. It writes only the columns the function adds or
changes: unchanged input columns stay memory-mapped from the input files, so a map that adds
one column caches just that column. With an indices mapping the whole output is written (the
input rows are not contiguous then).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import multiprocessing
import os
import re
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from collections.abc import Sequence as SequenceABC
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .features import (
    ClassLabel,
    Features,
    LargeList,
    List,
    Value,
    cast_table_to_features,
    get_nested_type,
)
from .fingerprint import (
    Hasher,
    cache_root,
    generate_random_fingerprint,
    hash_object,
    is_caching_enabled,
    temp_cache_dir,
    update_fingerprint,
)
from .formatting import LazyBatch, format_table, normalize_format_type, to_pylist
from .info import DatasetInfo, write_json_atomic
from .writer import (
    COVE_METADATA_KEY,
    ArrowWriter,
    atomic_file,
    read_arrow_file,
    sweep_orphan_temp_files,
)

if TYPE_CHECKING:
    from .dataset_dict import DatasetDict
    from .iterable_dataset import IterableDataset

logger = logging.getLogger(__name__)

_ITER_BATCH = 1000  # rows converted at a time when iterating
_STATE_FILENAME = "state.json"


def _check_columns(wanted: Iterable[str], available: list[str], what: str) -> list[str]:
    wanted = list(wanted)
    missing = [c for c in wanted if c not in available]
    if missing:
        raise ValueError(
            f"{what}: column(s) {missing} not in the dataset; its columns are {available}"
        )
    return wanted


def _as_list(columns: str | Iterable[str] | None) -> list[str] | None:
    if columns is None:
        return None
    return [columns] if isinstance(columns, str) else list(columns)


def _file_fingerprint(paths: list[str]) -> str:
    # a file's identity across processes: path, size and modification time
    stats = []
    for path in paths:
        st = os.stat(path)
        stats.append([os.path.abspath(path), st.st_size, st.st_mtime_ns])
    return hash_object(stats)


def _progress(total: int, desc: str | None) -> Any:
    from tqdm.auto import tqdm

    disabled = bool(os.environ.get("HF_DATASETS_DISABLE_PROGRESS_BARS")) or total < 1
    return tqdm(total=total, desc=desc or "Map", unit=" examples", disable=disabled, leave=False)


class Column(SequenceABC):
    """A lazy view of one column: list-like (len, indexing, slicing, iteration).

    Values come in the dataset's format (Python objects by default). `==` compares with any
    sequence element-wise, so `ds["a"] == [1, 2, 3]` works as with a list.
    """

    def __init__(self, source: Dataset, column_name: str) -> None:
        self.source = source
        self.column_name = column_name

    @property
    def features(self) -> Any:
        return self.source._info.features[self.column_name]

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            raise TypeError(f"Column {self.column_name!r} is indexed by row numbers, not names")
        table = self.source._query(key, [self.column_name])
        if isinstance(key, (int, np.integer)):
            return self.source._format(table, "row", [self.column_name])[self.column_name]
        return self.source._format(table, "column", [self.column_name])

    def __iter__(self) -> Iterator[Any]:
        for start in range(0, len(self.source), _ITER_BATCH):
            table = self.source._query(slice(start, start + _ITER_BATCH), [self.column_name])
            yield from self.source._format(table, "column", [self.column_name])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (Column, list, tuple)):
            return len(self) == len(other) and all(
                bool(a == b) for a, b in zip(self, other, strict=True)
            )
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable-looking, compared by value

    def __repr__(self) -> str:
        head = [repr(v) for v in self[:10]]
        more = ", ..." if len(self) > 10 else ""
        return f"Column([{', '.join(head)}{more}])"


class Dataset:
    """A map-style dataset backed by an Arrow table (see the module docstring)."""

    def __init__(
        self,
        arrow_table: pa.Table,
        info: DatasetInfo | None = None,
        split: str | None = None,
        indices_table: pa.Table | None = None,
        fingerprint: str | None = None,
    ) -> None:
        info = info.copy() if info is not None else DatasetInfo()
        if info.features is None:
            info.features = Features.from_arrow_schema(arrow_table.schema)
        else:
            if list(info.features) != arrow_table.column_names:
                if set(info.features) != set(arrow_table.column_names):
                    raise ValueError(
                        f"The features {list(info.features)} do not match the table's columns "
                        f"{arrow_table.column_names}"
                    )
                info.features = Features({c: info.features[c] for c in arrow_table.column_names})
            if pa.schema(info.features.type) != pa.schema(
                [pa.field(f.name, f.type) for f in arrow_table.schema]
            ):
                arrow_table = arrow_table.cast(info.features.arrow_schema)
        self._data = arrow_table.replace_schema_metadata(info.features.arrow_schema.metadata)
        if indices_table is not None and indices_table.column_names != ["indices"]:
            raise ValueError("indices_table must have one column named 'indices'")
        self._indices = indices_table
        self._info = info
        self._split = split
        self._fingerprint = fingerprint or generate_random_fingerprint()
        self._data_files: list[str] = []
        self._format_type: str | None = None
        self._format_kwargs: dict = {}
        self._format_columns: list[str] | None = None
        self._output_all_columns = False
        self._transform: Callable | None = None

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def from_file(
        cls,
        filename: str | os.PathLike,
        info: DatasetInfo | None = None,
        split: str | None = None,
        indices_filename: str | None = None,
        in_memory: bool = False,
    ) -> Dataset:
        """A dataset on an Arrow stream file, memory-mapped unless in_memory=True."""
        filename = os.fspath(filename)
        table = read_arrow_file(filename, in_memory=in_memory)
        sweep_orphan_temp_files(os.path.dirname(os.path.abspath(filename)))
        indices = read_arrow_file(indices_filename, in_memory) if indices_filename else None
        files = [filename] + ([indices_filename] if indices_filename else [])
        ds = cls(table, info=info, split=split, indices_table=indices,
                 fingerprint=_file_fingerprint(files))
        if not in_memory:
            ds._data_files = files
        return ds

    @classmethod
    def from_dict(
        cls,
        mapping: Mapping[str, Any],
        features: Features | None = None,
        info: DatasetInfo | None = None,
        split: str | None = None,
    ) -> Dataset:
        """An in-memory dataset from a dict of column name -> list of values."""
        if features is not None and not isinstance(features, Features):
            features = Features(features)
        lengths = {k: len(v) for k, v in mapping.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"from_dict: the columns have different lengths {lengths}")
        writer = ArrowWriter(None, features=features)
        if features is not None:
            missing = [c for c in features if c not in mapping]
            if missing:
                raise ValueError(f"from_dict: columns {missing} of the features are missing")
            mapping = features.encode_batch({c: mapping[c] for c in features})
        writer.write_batch(dict(mapping))
        table = writer.finalize()
        if info is not None and features is None and info.features is not None:
            table = table.cast(info.features.arrow_schema)
        return cls(table, info=_info_with(info, writer.output_features), split=split)

    @classmethod
    def from_list(
        cls,
        mapping: list[dict],
        features: Features | None = None,
        info: DatasetInfo | None = None,
        split: str | None = None,
    ) -> Dataset:
        """An in-memory dataset from a list of rows (dicts); missing keys become None."""
        keys: dict[str, None] = {}
        for row in mapping:
            keys.update(dict.fromkeys(row))
        columns = {k: [row.get(k) for row in mapping] for k in (features or keys)}
        return cls.from_dict(columns, features=features, info=info, split=split)

    @classmethod
    def from_pandas(
        cls,
        df: Any,
        features: Features | None = None,
        info: DatasetInfo | None = None,
        split: str | None = None,
        preserve_index: bool | None = None,
    ) -> Dataset:
        """An in-memory dataset from a pandas DataFrame."""
        if features is not None and not isinstance(features, Features):
            features = Features(features)
        schema = features.arrow_schema if features is not None else None
        table = pa.Table.from_pandas(df, schema=schema, preserve_index=preserve_index)
        table = table.replace_schema_metadata(None)  # drop pandas' metadata
        return cls(table, info=_info_with(info, features), split=split)

    @classmethod
    def from_generator(
        cls,
        generator: Callable[..., Iterable[dict]],
        features: Features | None = None,
        cache_dir: str | None = None,
        keep_in_memory: bool = False,
        gen_kwargs: dict | None = None,
        split: str = "train",
    ) -> Dataset:
        """A dataset of the rows `generator(**gen_kwargs)` yields, written to the cache.

        The file is keyed by a hash of the generator and its arguments and reused later.
        """
        if features is not None and not isinstance(features, Features):
            features = Features(features)
        gen_kwargs = dict(gen_kwargs or {})
        fingerprint, cacheable = update_fingerprint(
            "generator", "from_generator",
            {"generator": generator, "gen_kwargs": gen_kwargs,
             "features": None if features is None else features.to_dict()},
        )
        if keep_in_memory:
            path = None
        elif cacheable and is_caching_enabled():
            path = os.path.join(cache_dir or cache_root(), "generator", fingerprint,
                                f"generator-{split}.arrow")
        else:
            path = os.path.join(temp_cache_dir(), f"generator-{fingerprint}.arrow")
        if path is not None and os.path.exists(path):
            return cls.from_file(path, split=split)
        writer = ArrowWriter(path, features=features)
        try:
            rows: list[dict] = []
            for row in generator(**gen_kwargs):
                rows.append(features.encode_example(row) if features is not None else row)
                if len(rows) >= _ITER_BATCH:
                    writer.write_batch(_rows_to_columns(rows))
                    rows = []
            if rows:
                writer.write_batch(_rows_to_columns(rows))
            table = writer.finalize(features.arrow_schema if features is not None else None)
        except BaseException:
            writer.abort()
            raise
        ds = cls(table, info=DatasetInfo(features=writer.output_features), split=split,
                 fingerprint=fingerprint)
        if path is not None:
            ds._data_files = [path]
        return ds

    @staticmethod
    def _from_files(kind: str, path_or_paths: Any, split: str | None, features: Any,
                    cache_dir: str | None, keep_in_memory: bool, num_proc: int | None,
                    **kwargs: Any) -> Dataset:
        from .load import load_dataset

        paths = [os.fspath(p) for p in path_or_paths] if isinstance(path_or_paths, (list, tuple)) \
            else os.fspath(path_or_paths)
        split = split or "train"
        return load_dataset(kind, data_files={split: paths}, split=split, features=features,
                            cache_dir=cache_dir, keep_in_memory=keep_in_memory,
                            num_proc=num_proc, **kwargs)

    @staticmethod
    def from_csv(path_or_paths: Any, split: str | None = None, features: Any = None,
                 cache_dir: str | None = None, keep_in_memory: bool = False,
                 num_proc: int | None = None, **kwargs: Any) -> Dataset:
        """A dataset from CSV file(s) (load_dataset("csv", ...))."""
        return Dataset._from_files("csv", path_or_paths, split, features, cache_dir,
                                   keep_in_memory, num_proc, **kwargs)

    @staticmethod
    def from_json(path_or_paths: Any, split: str | None = None, features: Any = None,
                  cache_dir: str | None = None, keep_in_memory: bool = False,
                  num_proc: int | None = None, **kwargs: Any) -> Dataset:
        """A dataset from JSON / JSON Lines file(s) (load_dataset("json", ...))."""
        return Dataset._from_files("json", path_or_paths, split, features, cache_dir,
                                   keep_in_memory, num_proc, **kwargs)

    @staticmethod
    def from_parquet(path_or_paths: Any, split: str | None = None, features: Any = None,
                     cache_dir: str | None = None, keep_in_memory: bool = False,
                     num_proc: int | None = None, **kwargs: Any) -> Dataset:
        """A dataset from Parquet file(s) (load_dataset("parquet", ...))."""
        return Dataset._from_files("parquet", path_or_paths, split, features, cache_dir,
                                   keep_in_memory, num_proc, **kwargs)

    @staticmethod
    def from_text(path_or_paths: Any, split: str | None = None, features: Any = None,
                  cache_dir: str | None = None, keep_in_memory: bool = False,
                  num_proc: int | None = None, **kwargs: Any) -> Dataset:
        """A dataset with one "text" row per line of the file(s) (load_dataset("text", ...))."""
        return Dataset._from_files("text", path_or_paths, split, features, cache_dir,
                                   keep_in_memory, num_proc, **kwargs)

    def _new(
        self,
        data: pa.Table | None = None,
        indices: pa.Table | None | bool = False,
        fingerprint: str | None = None,
        features: Features | None = None,
        data_files: list[str] | None = None,
    ) -> Dataset:
        """A dataset like this one (format, info, split) with some parts replaced.

        indices=False keeps the current indices mapping, None removes it.
        """
        info = self._info.copy()
        if data is None:
            data = self._data
            features = features if features is not None else self._info.features
        info.features = features if features is not None else Features.from_arrow_schema(
            data.schema)
        new = Dataset(
            data,
            info=info,
            split=self._split,
            indices_table=self._indices if indices is False else indices,
            fingerprint=fingerprint,
        )
        new._data_files = list(self._data_files if data_files is None else data_files)
        new._format_type = self._format_type
        new._format_kwargs = dict(self._format_kwargs)
        # as datasets: columns a transform adds are formatted too, only the ones left out stay out
        new._format_columns = (
            [c for c in new.column_names
             if c in self._format_columns or c not in self.column_names]
            if self._format_columns is not None else None
        )
        new._output_all_columns = self._output_all_columns
        new._transform = self._transform
        return new

    # -- properties -----------------------------------------------------------------------

    @property
    def data(self) -> pa.Table:
        """The underlying Arrow table (before the indices mapping)."""
        return self._data

    @property
    def cache_files(self) -> list[dict]:
        """The files the dataset is read from: [{"filename": path}, ...] (empty in memory)."""
        return [{"filename": f} for f in self._data_files]

    @property
    def info(self) -> DatasetInfo:
        return self._info

    @property
    def features(self) -> Features:
        """The column types (a copy: editing it does not change the dataset, as datasets)."""
        return self._info.features.copy()

    @property
    def split(self) -> str | None:
        return self._split

    @property
    def num_rows(self) -> int:
        return self._indices.num_rows if self._indices is not None else self._data.num_rows

    @property
    def num_columns(self) -> int:
        return self._data.num_columns

    @property
    def column_names(self) -> list[str]:
        return self._data.column_names

    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_rows, self.num_columns)

    @property
    def builder_name(self) -> str | None:
        return self._info.builder_name

    @property
    def config_name(self) -> str | None:
        return self._info.config_name

    @property
    def description(self) -> str:
        return self._info.description

    @property
    def citation(self) -> str:
        return self._info.citation

    @property
    def homepage(self) -> str:
        return self._info.homepage

    @property
    def license(self) -> str:
        return self._info.license

    @property
    def version(self) -> str | None:
        return self._info.version

    @property
    def dataset_size(self) -> int | None:
        return self._info.dataset_size

    @property
    def download_size(self) -> int | None:
        return self._info.download_size

    @property
    def format(self) -> dict:
        return {
            "type": "custom" if self._format_type == "custom" else self._format_type,
            "format_kwargs": dict(self._format_kwargs),
            "columns": self.column_names if self._format_columns is None
            else list(self._format_columns),
            "output_all_columns": self._output_all_columns,
        }

    def __len__(self) -> int:
        return self.num_rows

    def __repr__(self) -> str:
        return (
            f"Dataset({{\n    features: {self.column_names},\n    num_rows: {self.num_rows}\n}})"
        )

    # -- row access -----------------------------------------------------------------------

    def _positions(self, key: Any) -> np.ndarray | slice:
        """Visible row positions for an int / slice / list key (a slice when contiguous)."""
        n = self.num_rows
        if isinstance(key, (int, np.integer)):
            i = int(key)
            if not -n <= i < n:
                raise IndexError(f"Index {i} is out of range for a dataset of {n} rows")
            i = i % n if n else i
            return slice(i, i + 1)
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step == 1:
                return slice(start, max(start, stop))
            return np.arange(start, stop, step, dtype=np.int64)
        if isinstance(key, range):
            key = np.arange(key.start, key.stop, key.step, dtype=np.int64)
        array = np.asarray(key)
        if array.dtype == bool:
            raise TypeError("Boolean masks are not supported as keys; use filter()")
        if array.size == 0:
            return np.zeros(0, dtype=np.int64)
        if array.dtype.kind not in "iu":
            raise TypeError(f"Rows are indexed by int, slice or a list of ints, got {key!r}")
        array = array.astype(np.int64, copy=False)
        bad = array[(array < -n) | (array >= n)]
        if bad.size:
            raise IndexError(f"Index {int(bad[0])} is out of range for a dataset of {n} rows")
        return np.where(array < 0, array + n, array)

    def _physical(self, positions: np.ndarray | slice) -> np.ndarray | slice:
        """Map visible positions to rows of self._data through the indices mapping."""
        if self._indices is None:
            return positions
        column = self._indices.column(0)
        if isinstance(positions, slice):
            return column.slice(positions.start, positions.stop - positions.start).to_numpy()
        if not len(positions):
            return np.zeros(0, dtype=np.int64)
        # 8 bytes a row: a contiguous copy of the span is cheaper than a chunk-wise take
        positions = np.asarray(positions, dtype=np.int64)
        low, high = int(positions.min()), int(positions.max()) + 1
        return column.slice(low, high - low).to_numpy()[positions - low]

    def _query(self, key: Any, columns: list[str] | None = None) -> pa.Table:
        """The Arrow rows of a key (int, slice, list of ints), of `columns` only if given
        (so that reading one column of a shuffled dataset does not gather the others)."""
        data = self._data if columns is None else self._data.select(columns)
        rows = self._physical(self._positions(key))
        if isinstance(rows, slice):
            return data.slice(rows.start, rows.stop - rows.start)
        return _take(data, rows)

    def _format(self, table: pa.Table, kind: str, columns: list[str] | None = None) -> Any:
        if columns is not None:
            return format_table(table.select(columns), kind, self._format_type, None, False,
                                self._format_kwargs, self._transform)
        return format_table(table, kind, self._format_type, self._format_columns,
                            self._output_all_columns, self._format_kwargs, self._transform)

    def __getitem__(self, key: Any) -> Any:
        """A row (int), a batch (slice / list of ints) or a column (name)."""
        if isinstance(key, str):
            if key not in self.column_names:
                raise KeyError(f"Column {key!r} not in the dataset; its columns are "
                               f"{self.column_names}")
            if self._format_type in ("arrow", "pandas", "custom"):
                return self._format(self._query(slice(None), [key]), "column", [key])
            return Column(self, key)
        if isinstance(key, (int, np.integer)):
            return self._format(self._query(key), "row")
        return self._format(self._query(key), "batch")

    def __getitems__(self, keys: list[int]) -> list:
        """Rows for a list of indices at once (used by torch's DataLoader)."""
        if self._format_type in ("arrow", "pandas", "custom"):
            return [self[k] for k in keys]
        batch = self._format(self._query(list(keys)), "batch")
        return [{name: values[i] for name, values in batch.items()} for i in range(len(keys))]

    def __iter__(self) -> Iterator[Any]:
        for start in range(0, self.num_rows, _ITER_BATCH):
            table = self._query(slice(start, start + _ITER_BATCH))
            if self._format_type is None and (self._format_columns is None
                                              or not self._output_all_columns):
                # Python rows: one Arrow conversion for the whole slice, not one per row
                if self._format_columns is not None:
                    table = table.select(self._format_columns)
                yield from table.to_pylist()
            else:
                for i in range(table.num_rows):
                    yield self._format(table.slice(i, 1), "row")

    def iter(self, batch_size: int, drop_last_batch: bool = False) -> Iterator[Any]:
        """Formatted batches of `batch_size` rows."""
        for start in range(0, self.num_rows, batch_size):
            if drop_last_batch and start + batch_size > self.num_rows:
                return
            yield self._format(self._query(slice(start, start + batch_size)), "batch")

    def _iter_tables(self, batch_size: int = _ITER_BATCH, start: int = 0,
                     stop: int | None = None) -> Iterator[pa.Table]:
        stop = self.num_rows if stop is None else stop
        for offset in range(start, stop, batch_size):
            yield self._query(slice(offset, min(offset + batch_size, stop)))

    # -- format ---------------------------------------------------------------------------

    def set_format(
        self,
        type: str | None = None,  # noqa: A002 - datasets' name
        columns: str | list[str] | None = None,
        output_all_columns: bool = False,
        **format_kwargs: Any,
    ) -> None:
        """Set the format of rows/batches/columns in place ("numpy", "torch", "pandas", ...)."""
        columns = _as_list(columns)
        if columns is not None:
            _check_columns(columns, self.column_names, "set_format")
        self._format_type = normalize_format_type(type)
        self._format_columns = columns
        self._output_all_columns = output_all_columns
        self._format_kwargs = format_kwargs
        self._transform = None

    def with_format(
        self,
        type: str | None = None,  # noqa: A002
        columns: str | list[str] | None = None,
        output_all_columns: bool = False,
        **format_kwargs: Any,
    ) -> Dataset:
        """A copy with another format (the data is shared)."""
        new = self._shallow_copy()
        new.set_format(type, columns, output_all_columns, **format_kwargs)
        return new

    def reset_format(self) -> None:
        self.set_format(None)

    def set_transform(self, transform: Callable[[dict], dict] | None,
                      columns: str | list[str] | None = None,
                      output_all_columns: bool = False) -> None:
        """Format with a function applied to each batch (a dict of lists) on access."""
        self.set_format("custom" if transform is not None else None, columns, output_all_columns)
        self._transform = transform

    def with_transform(self, transform: Callable[[dict], dict] | None,
                       columns: str | list[str] | None = None,
                       output_all_columns: bool = False) -> Dataset:
        new = self._shallow_copy()
        new.set_transform(transform, columns, output_all_columns)
        return new

    @contextlib.contextmanager
    def formatted_as(self, type: str | None = None, columns: Any = None,  # noqa: A002
                     output_all_columns: bool = False, **format_kwargs: Any) -> Iterator[None]:
        saved = (self._format_type, self._format_columns, self._output_all_columns,
                 self._format_kwargs, self._transform)
        self.set_format(type, columns, output_all_columns, **format_kwargs)
        try:
            yield
        finally:
            (self._format_type, self._format_columns, self._output_all_columns,
             self._format_kwargs, self._transform) = saved

    def __deepcopy__(self, memo: dict) -> Dataset:
        # Arrow data is immutable: a copy shares it (and its memory maps) instead of reading it
        return self._shallow_copy()

    def _shallow_copy(self) -> Dataset:
        new = copy.copy(self)
        new._info = self._info.copy()
        new._format_kwargs = dict(self._format_kwargs)
        new._data_files = list(self._data_files)
        return new

    # -- map / filter -----------------------------------------------------------------------

    def _cache_dir(self, cacheable: bool) -> str | None:
        """Where transforms of this dataset write: next to its files, or a temp folder."""
        if cacheable and is_caching_enabled() and self._data_files:
            return os.path.dirname(os.path.abspath(self._data_files[0]))
        if self._data_files:
            return temp_cache_dir()
        return None  # in-memory dataset: results stay in memory

    def map(
        self,
        function: Callable | None = None,
        with_indices: bool = False,
        with_rank: bool = False,
        input_columns: str | list[str] | None = None,
        batched: bool = False,
        batch_size: int | None = 1000,
        drop_last_batch: bool = False,
        remove_columns: str | list[str] | None = None,
        keep_in_memory: bool = False,
        load_from_cache_file: bool | None = None,
        cache_file_name: str | None = None,
        writer_batch_size: int | None = 1000,
        features: Features | None = None,
        fn_kwargs: dict | None = None,
        num_proc: int | None = None,
        suffix_template: str = "_{rank:05d}_of_{num_proc:05d}",
        new_fingerprint: str | None = None,
        desc: str | None = None,
    ) -> Dataset:
        """Apply `function` to each example (or batch) and return the updated dataset.

        The function returns a dict of new or changed columns (or None). Batched functions
        get and return dicts of lists and may change the number of rows when every input
        column is removed or returned. Results are cached (see the module docstring).
        """
        input_columns = _as_list(input_columns)
        remove_columns = _as_list(remove_columns) or []
        if input_columns is not None:
            _check_columns(input_columns, self.column_names, "map(input_columns=...)")
        _check_columns(remove_columns, self.column_names, "map(remove_columns=...)")
        if features is not None and not isinstance(features, Features):
            features = Features(features)
        if num_proc is not None and num_proc < 1:
            raise ValueError(f"num_proc must be >= 1, got {num_proc}")
        if batch_size is None or batch_size <= 0:
            batch_size = max(self.num_rows, 1)
        if function is None:
            function = _identity
        if self.num_rows == 0:
            # nothing to call the function on: only the column removal applies
            empty = self.flatten_indices() if self._indices is not None else self
            return empty.remove_columns(remove_columns) if remove_columns else empty
        if num_proc is not None and num_proc > self.num_rows:
            num_proc = self.num_rows
        fingerprint, cacheable = (new_fingerprint, True) if new_fingerprint else update_fingerprint(
            self._fingerprint,
            "map",
            {
                "function": function, "with_indices": with_indices, "with_rank": with_rank,
                "input_columns": input_columns, "batched": batched, "batch_size": batch_size,
                "drop_last_batch": drop_last_batch, "remove_columns": remove_columns,
                "features": None if features is None else features.to_dict(),
                "fn_kwargs": fn_kwargs or {}, "format": self.format,
                "transform": self._transform,  # the function sees the transformed batches
            },
        )
        spec = _MapSpec(
            function=function, with_indices=with_indices, with_rank=with_rank,
            input_columns=input_columns, batched=batched, batch_size=batch_size,
            drop_last_batch=drop_last_batch, remove_columns=remove_columns,
            features=features, fn_kwargs=fn_kwargs or {}, writer_batch_size=writer_batch_size,
            desc=desc,
        )
        paths = self._shard_paths(fingerprint, cacheable, keep_in_memory, cache_file_name,
                                  num_proc, suffix_template)
        if load_from_cache_file is None:
            load_from_cache_file = is_caching_enabled()
        if (load_from_cache_file and cacheable and paths[0] is not None
                and all(os.path.exists(p) for p in paths)):
            logger.info("Loading cached map result from %s", paths[0])
            shards = [_load_shard(p) for p in paths]
        else:
            shards = self._run_shards(_map_shard, spec, paths)
        return self._assemble_map(shards, spec, fingerprint)

    def _shard_paths(self, fingerprint: str, cacheable: bool, keep_in_memory: bool,
                     cache_file_name: str | None, num_proc: int | None,
                     suffix_template: str) -> list[str | None]:
        num_shards = num_proc or 1
        if cache_file_name is not None:
            base = os.fspath(cache_file_name)
        else:
            folder = None if keep_in_memory else self._cache_dir(cacheable)
            if folder is None and num_shards > 1:
                folder = temp_cache_dir()  # workers hand their results back through files
            base = os.path.join(folder, f"cache-{fingerprint}.arrow") if folder else None
        if base is None:
            return [None] * num_shards
        if num_shards == 1:
            return [base]
        root, ext = os.path.splitext(base)
        return [root + suffix_template.format(rank=rank, num_proc=num_shards) + ext
                for rank in range(num_shards)]

    def _run_shards(self, worker: Callable, spec: Any, paths: list[str | None]) -> list[dict]:
        """Run `worker(self, spec, rank, start, stop, path)` over contiguous row shards."""
        n = len(paths)
        bounds = [(i * self.num_rows // n, (i + 1) * self.num_rows // n) for i in range(n)]
        if n == 1:
            return [worker(self, spec, 0, bounds[0][0], bounds[0][1], paths[0])]
        if "fork" not in multiprocessing.get_all_start_methods():
            logger.warning("num_proc=%d: 'fork' is not available here; running the %d shards "
                           "one after the other in this process", n, n)
            return [worker(self, spec, r, s, e, p) for r, ((s, e), p) in
                    enumerate(zip(bounds, paths, strict=True))]
        ctx = multiprocessing.get_context("fork")
        # the children inherit the function by forking: nothing is pickled but the results
        procs, pipes = [], []
        for rank, ((start, stop), path) in enumerate(zip(bounds, paths, strict=True)):
            reader, writer = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_shard_worker,
                               args=(worker, self, spec, rank, start, stop, path, writer))
            proc.start()
            writer.close()
            procs.append(proc)
            pipes.append(reader)
        results, failure = [], None
        for proc, reader in zip(procs, pipes, strict=True):
            try:
                status, payload = reader.recv()
            except EOFError:
                status, payload = "error", (None, f"worker process {proc.pid} died "
                                                  f"(exit code {proc.exitcode})")
            proc.join()
            if status == "ok":
                results.append(payload)
            elif failure is None:
                failure = payload
        if failure is not None:
            for result in results:  # an incomplete set of shard files would never be used
                with contextlib.suppress(OSError):
                    os.unlink(result["path"])
            exc, text = failure
            if isinstance(exc, BaseException):
                if hasattr(exc, "add_note"):  # Python 3.11+: keep the worker's traceback
                    exc.add_note(f"In a map worker process:\n{text}")
                raise exc
            raise RuntimeError(f"A map worker failed:\n{text}")
        return [_load_shard(r["path"]) if r.get("path") else r for r in results]

    def _assemble_map(self, shards: list[dict], spec: _MapSpec, fingerprint: str) -> Dataset:
        """Join the shard results with the unchanged input columns into the output dataset."""
        order = shards[0]["columns"]
        for shard in shards[1:]:
            if set(shard["columns"]) != set(order):
                raise ValueError(
                    f"map: the function returned columns {shard['columns']} for some rows and "
                    f"{order} for others; it must return the same columns for every batch"
                )
        base = self._data
        chunks: dict[str, list] = {c: [] for c in order}
        out_features: dict[str, Any] = {}
        for shard in shards:
            table = shard["table"]
            for name in order:
                if name in table.column_names:
                    chunks[name].extend(table.column(name).chunks)
                    # a shard whose values were all None inferred the null type: prefer another
                    if name not in out_features or pa.types.is_null(
                            get_nested_type(out_features[name])):
                        out_features[name] = shard["features"][name]
                else:  # unchanged input column: a zero-copy slice of the input
                    if self._indices is not None:
                        raise AssertionError("input columns must be stored with an indices map")
                    column = base.column(name).slice(shard["start"], shard["stop"] - shard["start"])
                    chunks[name].extend(column.chunks)
                    out_features.setdefault(name, self._info.features[name])
        if spec.features is not None:
            out_features = {c: spec.features[c] for c in order}
        features = Features({c: out_features[c] for c in order})
        arrays = []
        for name in order:
            pa_type = get_nested_type(features[name])
            parts = [c if c.type == pa_type else c.cast(pa_type) for c in chunks[name]]
            arrays.append(pa.chunked_array(parts, type=pa_type))
        # no columns left means no rows either (an Arrow table's length is its columns'), as datasets
        table = pa.Table.from_arrays(arrays, schema=features.arrow_schema)
        uses_input = any(c not in s["table"].column_names for s in shards for c in order)
        files = [s["path"] for s in shards if s.get("path")]
        if uses_input:
            files = self._data_files + files
        return self._new(table, indices=None, fingerprint=fingerprint, features=features,
                         data_files=files)

    def filter(
        self,
        function: Callable | None = None,
        with_indices: bool = False,
        with_rank: bool = False,
        input_columns: str | list[str] | None = None,
        batched: bool = False,
        batch_size: int | None = 1000,
        keep_in_memory: bool = False,
        load_from_cache_file: bool | None = None,
        cache_file_name: str | None = None,
        writer_batch_size: int | None = 1000,
        fn_kwargs: dict | None = None,
        num_proc: int | None = None,
        suffix_template: str = "_{rank:05d}_of_{num_proc:05d}",
        new_fingerprint: str | None = None,
        desc: str | None = None,
    ) -> Dataset:
        """Keep the rows for which `function` is true, as an indices mapping (no data copy)."""
        input_columns = _as_list(input_columns)
        if input_columns is not None:
            _check_columns(input_columns, self.column_names, "filter(input_columns=...)")
        if function is None:
            function = _always_true
        if batch_size is None or batch_size <= 0:
            batch_size = max(self.num_rows, 1)
        if self.num_rows == 0:
            return self._shallow_copy()
        if num_proc is not None and num_proc > self.num_rows:
            num_proc = self.num_rows
        fingerprint, cacheable = (new_fingerprint, True) if new_fingerprint else update_fingerprint(
            self._fingerprint,
            "filter",
            {"function": function, "with_indices": with_indices, "with_rank": with_rank,
             "input_columns": input_columns, "batched": batched, "batch_size": batch_size,
             "fn_kwargs": fn_kwargs or {}, "format": self.format, "transform": self._transform},
        )
        spec = _MapSpec(
            function=function, with_indices=with_indices, with_rank=with_rank,
            input_columns=input_columns, batched=batched, batch_size=batch_size,
            drop_last_batch=False, remove_columns=[], features=None,
            fn_kwargs=fn_kwargs or {}, writer_batch_size=writer_batch_size,
            desc=desc or "Filter",
        )
        paths = self._shard_paths(fingerprint, cacheable, keep_in_memory, cache_file_name,
                                  num_proc, suffix_template)
        if load_from_cache_file is None:
            load_from_cache_file = is_caching_enabled()
        if (load_from_cache_file and cacheable and paths[0] is not None
                and all(os.path.exists(p) for p in paths)):
            shards = [_load_shard(p) for p in paths]
        else:
            shards = self._run_shards(_filter_shard, spec, paths)
        parts = [c for s in shards for c in s["table"].column("indices").chunks]
        indices = pa.table({"indices": pa.chunked_array(parts, type=pa.uint64())})
        files = [s["path"] for s in shards if s.get("path")]
        return self._new(indices=indices, fingerprint=fingerprint,
                         data_files=self._data_files + files)

    # -- row selection (indices mappings) ----------------------------------------------------

    def _with_positions(self, positions: np.ndarray, fingerprint: str) -> Dataset:
        rows = self._physical(positions.astype(np.int64, copy=False))
        indices = pa.table({"indices": pa.array(np.asarray(rows, dtype=np.uint64))})
        return self._new(indices=indices, fingerprint=fingerprint)

    def select(
        self,
        indices: Iterable[int],
        keep_in_memory: bool = False,
        new_fingerprint: str | None = None,
    ) -> Dataset:
        """The rows at `indices` (a contiguous range is a zero-copy slice, else an indices map).

        keep_in_memory is accepted for compatibility: the mapping is always in memory.
        """
        if not isinstance(indices, (range, slice, list, tuple, np.ndarray)):
            indices = list(indices)
        positions = self._positions(indices)
        if isinstance(positions, slice):
            positions = np.arange(positions.start, positions.stop, dtype=np.int64)
        fingerprint = new_fingerprint or _derived(self._fingerprint, "select", positions)
        if (self._indices is None and len(positions)
                and int(positions[-1]) - int(positions[0]) == len(positions) - 1
                and np.all(np.diff(positions) == 1)):
            return self._new(self._data.slice(int(positions[0]), len(positions)), indices=None,
                             fingerprint=fingerprint, features=self._info.features)
        return self._with_positions(positions, fingerprint)

    def shuffle(
        self,
        seed: int | None = None,
        generator: np.random.Generator | None = None,
        keep_in_memory: bool = False,
        load_from_cache_file: bool | None = None,
        indices_cache_file_name: str | None = None,
        new_fingerprint: str | None = None,
    ) -> Dataset:
        """Rows in a random order (numpy's default_rng(seed).permutation, as datasets).

        The permutation is an in-memory indices mapping (8 bytes a row); keep_in_memory,
        load_from_cache_file and indices_cache_file_name are accepted for compatibility.
        """
        if generator is not None and seed is not None:
            raise ValueError("shuffle: give seed= or generator=, not both")
        if generator is None:
            if seed is None:
                seed = int(np.random.SeedSequence().entropy % (2**32))
            generator = np.random.default_rng(seed)
        state = copy.deepcopy(generator.bit_generator.state)
        permutation = generator.permutation(self.num_rows)
        fingerprint = new_fingerprint or _derived(self._fingerprint, "shuffle", state)
        return self._with_positions(permutation, fingerprint)

    def sort(
        self,
        column_names: str | list[str],
        reverse: bool | list[bool] = False,
        null_placement: str = "at_end",
        keep_in_memory: bool = False,
        new_fingerprint: str | None = None,
    ) -> Dataset:
        """Rows sorted by one or more columns (stable), as an indices mapping."""
        names = _check_columns(_as_list(column_names), self.column_names, "sort")
        reverses = reverse if isinstance(reverse, list) else [reverse] * len(names)
        if len(reverses) != len(names):
            raise ValueError(f"sort: {len(reverses)} reverse flags for {len(names)} columns")
        if null_placement not in ("at_start", "at_end", "first", "last"):
            raise ValueError("null_placement must be 'at_start' or 'at_end'")
        placement = {"first": "at_start", "last": "at_end"}.get(null_placement, null_placement)
        keys = self._data.select(names)
        if self._indices is not None:
            keys = _take(keys, self._indices.column(0).to_numpy())
        order = pc.sort_indices(
            keys,
            sort_keys=[(n, "descending" if r else "ascending", placement)
                       for n, r in zip(names, reverses, strict=True)],
        ).to_numpy()
        fingerprint = new_fingerprint or _derived(
            self._fingerprint, "sort", [names, reverses, placement])
        return self._with_positions(order, fingerprint)

    def shard(self, num_shards: int, index: int, contiguous: bool = True,
              keep_in_memory: bool = False) -> Dataset:
        """Part `index` of `num_shards`: contiguous blocks, or every num_shards-th row."""
        if not 0 <= index < num_shards:
            raise ValueError(f"shard: index must be in [0, {num_shards}), got {index}")
        if contiguous:
            div, mod = divmod(self.num_rows, num_shards)
            start = div * index + min(index, mod)
            stop = start + div + (1 if index < mod else 0)
            return self.select(range(start, stop))
        return self.select(np.arange(index, self.num_rows, num_shards))

    def skip(self, n: int) -> Dataset:
        return self.select(range(min(n, self.num_rows), self.num_rows))

    def take(self, n: int) -> Dataset:
        return self.select(range(min(n, self.num_rows)))

    def train_test_split(
        self,
        test_size: float | int | None = None,
        train_size: float | int | None = None,
        shuffle: bool = True,
        stratify_by_column: str | None = None,
        seed: int | None = None,
        generator: np.random.Generator | None = None,
        keep_in_memory: bool = False,
    ) -> DatasetDict:
        """Split into a DatasetDict {"train", "test"} (sizes as datasets / scikit-learn)."""
        from .dataset_dict import DatasetDict

        n = self.num_rows
        n_train, n_test = _split_sizes(n, test_size, train_size)
        if not shuffle:
            if stratify_by_column is not None:
                raise ValueError("Stratified train/test split needs shuffle=True")
            return DatasetDict({"train": self.select(range(n_train)),
                                "test": self.select(range(n_train, n_train + n_test))})
        if generator is None:
            if seed is None:
                seed = int(np.random.SeedSequence().entropy % (2**32))
            generator = np.random.default_rng(seed)
        if stratify_by_column is not None:
            _check_columns([stratify_by_column], self.column_names, "train_test_split")
            if not isinstance(self._info.features[stratify_by_column], ClassLabel):
                raise ValueError(
                    f"stratify_by_column={stratify_by_column!r} must be a ClassLabel column, "
                    f"it is {self._info.features[stratify_by_column]!r}; use class_encode_column first"
                )
            labels = self._data.column(stratify_by_column)
            if self._indices is not None:
                labels = take_column(labels, self._indices.column(0).to_numpy())
            train_idx, test_idx = _stratified_split(
                np.asarray(labels.to_numpy(zero_copy_only=False)), n_train, n_test, generator)
        else:
            permutation = generator.permutation(n)
            test_idx = permutation[:n_test]
            train_idx = permutation[n_test:n_test + n_train]
        fp = self._fingerprint
        return DatasetDict({
            "train": self._with_positions(train_idx, _derived(fp, "train", train_idx)),
            "test": self._with_positions(test_idx, _derived(fp, "test", test_idx)),
        })

    def batch(self, batch_size: int | None = None, by_column: str | list[str] | None = None,
              drop_last_batch: bool = False, num_proc: int | None = None,
              new_fingerprint: str | None = None) -> Dataset:
        """Rows grouped into lists: `batch_size` rows each, or runs of equal `by_column` values."""
        features = Features({k: List(v) for k, v in self._info.features.items()})
        if by_column is None:
            if batch_size is None or batch_size < 1:
                raise ValueError("batch() needs batch_size >= 1 or by_column")
            return self.map(_batch_rows, batched=True, batch_size=batch_size,
                            drop_last_batch=drop_last_batch, num_proc=num_proc,
                            features=features, new_fingerprint=new_fingerprint,
                            desc="Batching examples")
        keys = _check_columns(_as_list(by_column), self.column_names, "batch(by_column=...)")
        key_table = self._query(slice(None)).select(keys) if self.num_rows else None
        starts = [0]
        if key_table is not None and self.num_rows > 1:
            change = np.zeros(self.num_rows - 1, dtype=bool)
            for name in keys:
                values = key_table.column(name)
                change |= np.asarray(pc.fill_null(pc.not_equal(values.slice(1), values.slice(
                    0, self.num_rows - 1)), True).to_numpy(zero_copy_only=False))
            starts += (np.flatnonzero(change) + 1).tolist()
        bounds = list(zip(starts, starts[1:] + [self.num_rows], strict=True))
        rows = {name: [self._query(slice(a, b)).column(name).to_pylist() for a, b in bounds]
                for name in self.column_names} if self.num_rows else {}
        fingerprint = new_fingerprint or _derived(self._fingerprint, "batch", keys)
        out = Dataset.from_dict(rows, features=features, info=self._info, split=self._split)
        out._fingerprint = fingerprint
        return out

    def repeat(self, num_times: int) -> Dataset:
        """The rows `num_times` times over (an indices mapping, no copy)."""
        if num_times is None or num_times < 0:
            raise ValueError(f"repeat: num_times must be an int >= 0, got {num_times}")
        return self.select(np.tile(np.arange(self.num_rows, dtype=np.int64), num_times))

    def align_labels_with_mapping(self, label2id: dict, label_column: str) -> Dataset:
        """Renumber a ClassLabel column to a model's label2id (names compared in lower case)."""
        _check_columns([label_column], self.column_names, "align_labels_with_mapping")
        feature = self._info.features[label_column]
        inner = feature.feature if isinstance(feature, (List, LargeList)) else feature
        if not isinstance(inner, ClassLabel):
            raise ValueError(
                f"align_labels_with_mapping: column {label_column!r} must be a ClassLabel "
                f"(or a list of them), it is {feature!r}"
            )
        ordered = dict(sorted(label2id.items(), key=lambda item: item[1]))
        lowered = {k.lower(): v for k, v in ordered.items()}
        missing = [n for n in inner.names if n.lower() not in lowered]
        if missing:
            raise ValueError(f"align_labels_with_mapping: labels {missing} are not in label2id")
        mapping = [lowered[n.lower()] for n in inner.names]
        new_label = ClassLabel(names=list(ordered))
        features = self._info.features.copy()
        features[label_column] = (type(feature)(new_label) if inner is not feature else new_label)
        return self.map(_align_labels, batched=True, features=features,
                        fn_kwargs={"column": label_column, "mapping": mapping,
                                   "nested": inner is not feature},
                        desc="Aligning the labels")

    def flatten_indices(self, keep_in_memory: bool = False, cache_file_name: str | None = None,
                        writer_batch_size: int | None = 1000,
                        new_fingerprint: str | None = None) -> Dataset:
        """Materialise the indices mapping: a new table with the rows in their visible order."""
        if self._indices is None:
            return self._shallow_copy()
        fingerprint = new_fingerprint or _derived(self._fingerprint, "flatten_indices", None)
        path = None
        if not keep_in_memory:
            folder = self._cache_dir(True)
            if cache_file_name is not None:
                path = cache_file_name
            elif folder is not None:
                path = os.path.join(folder, f"cache-{fingerprint}.arrow")
        if path is not None and os.path.exists(path) and is_caching_enabled():
            table = read_arrow_file(path)
        else:
            writer = ArrowWriter(path, features=self._info.features)
            try:
                for table in self._iter_tables(writer_batch_size or _ITER_BATCH):
                    writer.write_batch(table)
                table = writer.finalize(self._info.features.arrow_schema)
            except BaseException:
                writer.abort()
                raise
        return self._new(table, indices=None, fingerprint=fingerprint, features=self._info.features,
                         data_files=[path] if path else [])

    # -- columns --------------------------------------------------------------------------

    def rename_column(self, original_column_name: str, new_column_name: str,
                      new_fingerprint: str | None = None) -> Dataset:
        return self.rename_columns({original_column_name: new_column_name}, new_fingerprint)

    def rename_columns(self, column_mapping: dict[str, str],
                       new_fingerprint: str | None = None) -> Dataset:
        """Rename columns (zero-copy)."""
        _check_columns(column_mapping, self.column_names, "rename_columns")
        names = [column_mapping.get(c, c) for c in self.column_names]
        if len(set(names)) != len(names):
            raise ValueError(f"rename_columns: the new names {names} are not unique")
        if any(not n for n in column_mapping.values()):
            raise ValueError("rename_columns: column names must not be empty")
        features = Features({column_mapping.get(c, c): f for c, f in self._info.features.items()})
        table = self._data.rename_columns(names)
        new = self._new(table, fingerprint=new_fingerprint or _derived(
            self._fingerprint, "rename_columns", column_mapping), features=features)
        if self._format_columns is not None:
            new._format_columns = [column_mapping.get(c, c) for c in self._format_columns]
        return new

    def remove_columns(self, column_names: str | list[str],
                       new_fingerprint: str | None = None) -> Dataset:
        """Drop columns (zero-copy)."""
        names = _check_columns(_as_list(column_names), self.column_names, "remove_columns")
        keep = [c for c in self.column_names if c not in names]
        return self._select_columns(keep, new_fingerprint or _derived(
            self._fingerprint, "remove_columns", names))

    def select_columns(self, column_names: str | list[str],
                       new_fingerprint: str | None = None) -> Dataset:
        """Keep only these columns, in this order (zero-copy)."""
        names = _check_columns(_as_list(column_names), self.column_names, "select_columns")
        return self._select_columns(names, new_fingerprint or _derived(
            self._fingerprint, "select_columns", names))

    def _select_columns(self, names: list[str], fingerprint: str) -> Dataset:
        features = Features({c: self._info.features[c] for c in names})
        return self._new(self._data.select(names), fingerprint=fingerprint, features=features)

    def cast(self, features: Features, new_fingerprint: str | None = None,
             **kwargs: Any) -> Dataset:
        """The dataset with new feature types (columns whose type is unchanged are not copied)."""
        if not isinstance(features, Features):
            features = Features(features)
        if sorted(features) != sorted(self.column_names):
            raise ValueError(
                f"cast: the features' columns {sorted(features)} must be the dataset's columns "
                f"{sorted(self.column_names)}"
            )
        features = Features({c: features[c] for c in self.column_names})
        table = cast_table_to_features(self._data, features)
        return self._new(table, fingerprint=new_fingerprint or _derived(
            self._fingerprint, "cast", features.to_dict()), features=features)

    def cast_column(self, column: str, feature: Any, new_fingerprint: str | None = None) -> Dataset:
        """The dataset with one column cast to another feature type."""
        _check_columns([column], self.column_names, "cast_column")
        features = self._info.features.copy()
        features[column] = feature
        return self.cast(features, new_fingerprint=new_fingerprint)

    def class_encode_column(self, column: str, include_nulls: bool = False) -> Dataset:
        """Turn a column of labels into a ClassLabel (names sorted, as datasets does)."""
        _check_columns([column], self.column_names, "class_encode_column")
        feature = self._info.features[column]
        if not isinstance(feature, Value):
            raise ValueError(
                f"class_encode_column: column {column!r} must be a Value column, it is {feature!r}"
            )
        values = self._data.column(column)
        if self._indices is not None:
            values = take_column(values, self._indices.column(0).to_numpy())
        uniques = [v for v in pc.unique(values).to_pylist() if v is not None or include_nulls]
        names = sorted(str(v) for v in uniques if v is not None)
        if include_nulls and None in uniques:
            names.append("None")
        label = ClassLabel(names=names)
        as_str = self._data.column(column).cast(pa.string())
        if include_nulls:
            as_str = pc.fill_null(as_str, "None")
        codes = pc.index_in(as_str, value_set=pa.array(names))
        codes = pc.if_else(pc.is_null(codes), pa.scalar(-1, pa.int64()) if include_nulls
                           else pa.scalar(None, pa.int64()), codes.cast(pa.int64()))
        features = self._info.features.copy()
        features[column] = label
        index = self.column_names.index(column)
        table = self._data.set_column(index, pa.field(column, pa.int64()), codes)
        return self._new(table, fingerprint=_derived(self._fingerprint, "class_encode_column",
                                                     [column, include_nulls]), features=features)

    def flatten(self, new_fingerprint: str | None = None, max_depth: int = 16) -> Dataset:
        """Struct columns become one column per field ("a.b"), zero-copy."""
        table = self._data
        for _ in range(max_depth):
            if not any(pa.types.is_struct(f.type) for f in table.schema):
                break
            table = table.flatten()
        features = self._info.features.flatten(max_depth)
        features = Features({c: features[c] for c in table.column_names})
        return self._new(table, fingerprint=new_fingerprint or _derived(
            self._fingerprint, "flatten", None), features=features)

    def unique(self, column: str) -> list:
        """The distinct values of a column, in order of first appearance."""
        _check_columns([column], self.column_names, "unique")
        values = self._data.column(column)
        if self._indices is not None:
            values = take_column(values, self._indices.column(0).to_numpy())
        return pc.unique(values).to_pylist()

    def add_column(self, name: str, column: list | np.ndarray | pa.Array,
                   new_fingerprint: str | None = None, feature: Any = None) -> Dataset:
        """A dataset with one more column (the indices mapping is materialised first)."""
        if name in self.column_names:
            raise ValueError(f"add_column: column {name!r} already exists")
        if len(column) != self.num_rows:
            raise ValueError(
                f"add_column: the column has {len(column)} values for {self.num_rows} rows"
            )
        base = self.flatten_indices() if self._indices is not None else self
        writer = ArrowWriter(None, features=Features({name: feature}) if feature else None)
        values = column
        if feature is not None and not isinstance(column, pa.Array):
            values = Features({name: feature}).encode_column(column, name)
        writer.write_batch({name: values})
        added = writer.finalize()
        features = Features({**base._info.features, name: writer.output_features[name]})
        table = base._data.append_column(pa.field(name, added.schema.field(name).type),
                                         added.column(name))
        fingerprint = new_fingerprint or _derived_obj(base._fingerprint, "add_column",
                                                     [name, column])
        return base._new(table, fingerprint=fingerprint, features=features)

    def add_item(self, item: dict, new_fingerprint: str | None = None) -> Dataset:
        from .combine import concatenate_datasets

        row = self._new(Dataset.from_list([item], features=self._info.features).data,
                        indices=None, features=self._info.features, data_files=[])
        out = concatenate_datasets([self, row])  # the same format on both: the result keeps it
        if new_fingerprint is not None:
            out._fingerprint = new_fingerprint
        return out

    # -- export ---------------------------------------------------------------------------

    def to_dict(self, batch_size: int | None = None) -> dict:
        """All rows as a dict of column -> list (in memory)."""
        return self._query(slice(None)).to_pydict()

    def to_list(self) -> list[dict]:
        return self._query(slice(None)).to_pylist()

    def to_pandas(self, batch_size: int | None = None, batched: bool = False) -> Any:
        """A pandas DataFrame (or, with batched=True, an iterator of DataFrames)."""
        if batched:
            return (t.to_pandas() for t in self._iter_tables(batch_size or _ITER_BATCH))
        return self._query(slice(None)).to_pandas()

    def to_csv(self, path_or_buf: str | os.PathLike | Any, batch_size: int | None = None,
               **to_csv_kwargs: Any) -> int:
        """Write CSV (pandas' to_csv options, index=False by default); returns bytes written."""
        to_csv_kwargs.setdefault("index", False)
        header = to_csv_kwargs.pop("header", True)

        def chunks() -> Iterator[str]:
            for i, table in enumerate(self._iter_tables(batch_size or _ITER_BATCH)):
                yield table.to_pandas().to_csv(header=header and i == 0, **to_csv_kwargs)
            if self.num_rows == 0 and header:
                yield ",".join(self.column_names) + "\n"

        return _write_text(path_or_buf, chunks())

    def to_json(self, path_or_buf: str | os.PathLike | Any, batch_size: int | None = None,
                lines: bool | None = None, orient: str | None = "records",
                **to_json_kwargs: Any) -> int:
        """Write JSON Lines (default, as datasets) or a JSON array; returns bytes written."""
        if lines is None:
            lines = orient == "records"
        if lines and orient != "records":
            raise ValueError("to_json: lines=True needs orient='records'")
        to_json_kwargs.setdefault("force_ascii", False)

        def chunks() -> Iterator[str]:
            first = True
            if not lines:
                yield "["
            for table in self._iter_tables(batch_size or _ITER_BATCH):
                text = table.to_pandas().to_json(orient=orient, lines=lines, **to_json_kwargs)
                if lines:
                    yield text if text.endswith("\n") or not text else text + "\n"
                else:
                    body = text.strip()[1:-1]
                    if body:
                        yield ("" if first else ",") + body
                        first = False
            if not lines:
                yield "]"

        return _write_text(path_or_buf, chunks())

    def to_parquet(self, path_or_buf: str | os.PathLike | Any, batch_size: int | None = None,
                   **parquet_writer_kwargs: Any) -> int:
        """Write a Parquet file (features kept in the schema metadata); returns bytes written."""
        import pyarrow.parquet as pq

        schema = self._data.schema
        def write(sink: Any) -> None:
            with pq.ParquetWriter(sink, schema, **parquet_writer_kwargs) as writer:
                for table in self._iter_tables(batch_size or 100_000):
                    writer.write_table(table)

        if not isinstance(path_or_buf, (str, os.PathLike)):
            write(path_or_buf)
            return 0
        target = os.fspath(path_or_buf)
        with atomic_file(target) as tmp:
            write(tmp)
        return os.path.getsize(target)

    # -- save / load ----------------------------------------------------------------------

    def save_to_disk(
        self,
        dataset_path: str | os.PathLike,
        max_shard_size: str | int | None = None,
        num_shards: int | None = None,
        num_proc: int | None = None,
        storage_options: dict | None = None,
    ) -> None:
        """Save in datasets' layout: data-0000i-of-0000N.arrow, dataset_info.json, state.json."""
        path = os.fspath(dataset_path)
        if storage_options:
            raise ValueError("save_to_disk: storage_options (remote filesystems) are not supported")
        if any(os.path.abspath(f).startswith(os.path.abspath(path) + os.sep)
               for f in self._data_files):
            raise PermissionError(
                f"Tried to overwrite {path} but the dataset is read from files in it; "
                "save to another folder"
            )
        if num_shards is None:
            from .hub import _parse_size

            limit = _parse_size(max_shard_size if max_shard_size is not None else "500MB")
            num_shards = max(1, math.ceil(self._estimated_nbytes() / limit))
        num_shards = max(1, min(num_shards, max(self.num_rows, 1)))
        os.makedirs(path, exist_ok=True)
        names = []
        for index in range(num_shards):
            name = f"data-{index:05d}-of-{num_shards:05d}.arrow"
            shard = self.shard(num_shards, index, contiguous=True)
            writer = ArrowWriter(os.path.join(path, name), features=self._info.features)
            try:
                for table in shard._iter_tables():
                    writer.write_batch(table)
                writer.finalize(self._info.features.arrow_schema)
            except BaseException:
                writer.abort()
                raise
            names.append(name)
        info = self._info.copy()
        info.features = self._info.features
        info.write_to_directory(path)
        state = {
            "_data_files": [{"filename": n} for n in names],
            "_fingerprint": self._fingerprint,
            "_format_columns": self._format_columns,
            "_format_kwargs": self._format_kwargs if self._format_type != "custom" else {},
            "_format_type": self._format_type if self._format_type != "custom" else None,
            "_output_all_columns": self._output_all_columns,
            "_split": None if self._split is None else str(self._split),
        }
        write_json_atomic(os.path.join(path, _STATE_FILENAME), state, indent=2)
        # old shards of a previous save with more shards would be read by nobody: remove them
        for stale in os.listdir(path):
            if re.fullmatch(r"data-\d{5}-of-\d{5}\.arrow", stale) and stale not in names:
                os.unlink(os.path.join(path, stale))

    @staticmethod
    def load_from_disk(dataset_path: str | os.PathLike, keep_in_memory: bool | None = None,
                       storage_options: dict | None = None) -> Dataset:
        """Load a folder written by save_to_disk (cove's or datasets'), memory-mapped."""
        path = os.fspath(dataset_path)
        state_path = os.path.join(path, _STATE_FILENAME)
        if not os.path.isfile(state_path):
            if os.path.isfile(os.path.join(path, "dataset_dict.json")):
                raise FileNotFoundError(
                    f"{path} holds a DatasetDict (dataset_dict.json); use "
                    "DatasetDict.load_from_disk or cove.datasets.load_from_disk"
                )
            raise FileNotFoundError(f"No {_STATE_FILENAME} in {path}: not a saved Dataset")
        with open(state_path, encoding="utf-8") as f:
            state = json.load(f)
        info = DatasetInfo.from_directory(path)
        sweep_orphan_temp_files(path)  # shards of a save that was killed
        files = [os.path.join(path, entry["filename"]) for entry in state["_data_files"]]
        in_memory = bool(keep_in_memory)
        tables = [read_arrow_file(f, in_memory=in_memory) for f in files]
        table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        ds = Dataset(table, info=info, split=state.get("_split"),
                     fingerprint=state.get("_fingerprint"))
        if not in_memory:
            ds._data_files = files
        ds.set_format(state.get("_format_type"), state.get("_format_columns"),
                      state.get("_output_all_columns", False), **(state.get("_format_kwargs") or {}))
        return ds

    def _estimated_nbytes(self) -> int:
        """The Arrow bytes of the visible rows (a share of the table's under an indices
        mapping), as datasets counts a split's num_bytes; used to size shards."""
        if self._indices is None or self._data.num_rows == 0:
            return self._data.nbytes
        return int(self._data.nbytes * self.num_rows / self._data.num_rows)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Upload as Parquet shards with a dataset card (see cove.datasets.hub.push_to_hub)."""
        from .hub import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    def to_iterable_dataset(self, num_shards: int = 1) -> IterableDataset:
        """An IterableDataset over this dataset's rows, in `num_shards` contiguous shards."""
        from .iterable_dataset import IterableDataset

        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        num_shards = min(num_shards, max(self.num_rows, 1))
        if self._indices is None:  # zero-copy slices of the table, one per shard
            tables = [self.shard(num_shards, i, contiguous=True)._data for i in range(num_shards)]
            iterable = IterableDataset._from_arrow_tables(tables, info=self._info.copy(),
                                                          split=self._split)
        else:  # scattered rows: read them lazily, batch by batch, instead of copying them all
            bounds = [(i * self.num_rows // num_shards, (i + 1) * self.num_rows // num_shards)
                      for i in range(num_shards)]
            iterable = IterableDataset.from_generator(
                _iter_rows_of_shards, features=self._info.features,
                gen_kwargs={"bounds": bounds, "dataset": self.with_format(None)},
                split=self._split or "train",
            )
        if self._format_type in ("numpy", "torch"):
            iterable = iterable.with_format(self._format_type)
        return iterable

    def cleanup_cache_files(self) -> int:
        """Delete the cache-*.arrow files next to this dataset that it does not use.

        Returns how many files were removed.
        """
        if not self._data_files:
            return 0
        in_use = {os.path.abspath(f) for f in self._data_files}
        folder = os.path.dirname(os.path.abspath(self._data_files[0]))
        removed = 0
        for name in os.listdir(folder):
            full = os.path.join(folder, name)
            if name.startswith("cache-") and name.endswith(".arrow") and full not in in_use:
                os.unlink(full)
                removed += 1
        return removed


# -- map internals ------------------------------------------------------------------------


class _MapSpec:
    """The arguments of one map/filter call, handed to the shard workers."""

    def __init__(self, **kwargs: Any) -> None:
        self.__dict__.update(kwargs)


def _iter_rows_of_shards(bounds: list[tuple[int, int]], dataset: Dataset) -> Iterator[dict]:
    for start, stop in bounds:
        for table in dataset._iter_tables(start=start, stop=stop):
            yield from table.to_pylist()


def _batch_rows(batch: dict) -> dict:
    return {name: [values] for name, values in batch.items()}


def _align_labels(batch: dict, column: str, mapping: list[int], nested: bool) -> dict:
    def convert(label: int | None) -> int | None:
        return mapping[label] if label is not None and label >= 0 else label

    values = batch[column]
    batch[column] = [[convert(v) for v in seq] for seq in values] if nested else \
        [convert(v) for v in values]
    return batch


def _identity(example: Any) -> Any:
    return example


def _always_true(*_args: Any, **_kwargs: Any) -> bool:
    return True


def _info_with(info: DatasetInfo | None, features: Features | None) -> DatasetInfo:
    info = info.copy() if info is not None else DatasetInfo()
    if features is not None:
        info.features = features
    return info


def _derived(fingerprint: str, transform: str, args: Any) -> str:
    """Fingerprint of a transform whose arguments are plain data (always hashable)."""
    if isinstance(args, np.ndarray):
        args = [str(args.dtype), args.shape, args.tobytes()]
    return Hasher().update([fingerprint, transform, args]).hexdigest()


def _derived_obj(fingerprint: str, transform: str, args: Any) -> str:
    return update_fingerprint(fingerprint, transform, {"args": args})[0]


def _take(table: pa.Table, rows: np.ndarray) -> pa.Table:
    """Rows of a table in the given order, without concatenating chunked columns."""
    rows = np.asarray(rows, dtype=np.int64)
    if len(rows) == 0:
        return table.slice(0, 0)
    columns = [take_column(column, rows) for column in table.columns]
    return pa.Table.from_arrays(columns, schema=table.schema)


def take_column(column: pa.ChunkedArray, rows: np.ndarray) -> pa.Array:
    """column[rows] chunk by chunk: Arrow's own take concatenates every chunk first (a copy
    of the whole column for memory-mapped data written in many batches)."""
    if column.num_chunks <= 1:
        source = column.chunk(0) if column.num_chunks else pa.array([], type=column.type)
        return source.take(pa.array(rows, type=pa.int64()))
    offsets = np.cumsum([0] + [len(chunk) for chunk in column.chunks])
    chunk_ids = np.searchsorted(offsets, rows, side="right") - 1
    order = np.argsort(chunk_ids, kind="stable")
    sorted_ids = chunk_ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    ends = np.r_[starts[1:], len(order)]
    pieces = []
    for begin, end in zip(starts, ends, strict=True):
        cid = int(sorted_ids[begin])
        local = rows[order[begin:end]] - offsets[cid]
        pieces.append(column.chunk(cid).take(pa.array(local, type=pa.int64())))
    grouped = pa.concat_arrays(pieces) if len(pieces) > 1 else pieces[0]
    if np.all(order[:-1] < order[1:]):  # already in the requested order
        return grouped
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return grouped.take(pa.array(inverse, type=pa.int64()))


def _rows_to_columns(rows: list[dict]) -> dict[str, list]:
    keys: dict[str, None] = {}
    for row in rows:
        keys.update(dict.fromkeys(row))
    return {k: [row.get(k) for row in rows] for k in keys}


def _split_sizes(n: int, test_size: float | int | None,
                 train_size: float | int | None) -> tuple[int, int]:
    """(n_train, n_test) the way datasets / scikit-learn compute them."""
    for name, size in (("test_size", test_size), ("train_size", train_size)):
        if size is None:
            continue
        if isinstance(size, float):
            if not 0 < size < 1:
                raise ValueError(f"{name}={size} should be a float in (0, 1) or an int")
        elif isinstance(size, (int, np.integer)):
            if not 0 < size < n:
                raise ValueError(f"{name}={size} should be in (0, {n}) for {n} rows")
        else:
            raise TypeError(f"{name} must be a float or an int, got {size!r}")
    if test_size is None and train_size is None:
        test_size = 0.25
    if isinstance(test_size, float):
        n_test = math.ceil(test_size * n)
    elif test_size is not None:
        n_test = int(test_size)
    if isinstance(train_size, float):
        n_train = math.floor(train_size * n)
    elif train_size is not None:
        n_train = int(train_size)
    if train_size is None:
        n_train = n - n_test
    elif test_size is None:
        n_test = n - n_train
    if n_train + n_test > n:
        raise ValueError(
            f"train_size + test_size = {n_train} + {n_test} is more than the {n} rows"
        )
    if n_train == 0 or n_test == 0:
        raise ValueError(
            f"With n_samples={n}, test_size={test_size} and train_size={train_size}, one of "
            "the splits would be empty; adjust the sizes"
        )
    return n_train, n_test


def _stratified_split(labels: np.ndarray, n_train: int, n_test: int,
                      generator: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Train/test positions keeping each class's share in both splits."""
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < 2:
        raise ValueError(
            f"The least populated class in the stratify column has {counts.min()} member; "
            "stratification needs at least 2 per class"
        )
    if n_train < len(classes) or n_test < len(classes):
        raise ValueError(
            f"train ({n_train}) and test ({n_test}) must each have at least one row per class "
            f"({len(classes)} classes)"
        )
    test_counts = _apportion(counts, n_test, generator)
    train_counts = _apportion(counts - test_counts, n_train, generator)
    train_parts, test_parts = [], []
    for cls_value, n_te, n_tr in zip(classes, test_counts, train_counts, strict=True):
        members = generator.permutation(np.flatnonzero(labels == cls_value))
        test_parts.append(members[:n_te])
        train_parts.append(members[n_te:n_te + n_tr])
    train = generator.permutation(np.concatenate(train_parts))
    test = generator.permutation(np.concatenate(test_parts))
    return train, test


def _apportion(available: np.ndarray, total: int, generator: np.random.Generator) -> np.ndarray:
    """Split `total` draws over classes in proportion to `available`, largest remainders first."""
    exact = available * total / available.sum()
    counts = np.minimum(np.floor(exact).astype(np.int64), available)
    remainder = exact - counts
    order = np.lexsort((generator.random(len(available)), -remainder))
    for index in order:
        if counts.sum() >= total:
            break
        if counts[index] < available[index]:
            counts[index] += 1
    return counts


def _write_text(path_or_buf: Any, chunks: Iterable[str]) -> int:
    written = 0
    if isinstance(path_or_buf, (str, os.PathLike)):
        with atomic_file(os.fspath(path_or_buf)) as tmp, \
                open(tmp, "w", encoding="utf-8", newline="") as f:
            for chunk in chunks:
                written += len(chunk.encode("utf-8"))
                f.write(chunk)
        return written
    for chunk in chunks:
        data = chunk.encode("utf-8") if _is_binary(path_or_buf) else chunk
        path_or_buf.write(data)
        written += len(chunk.encode("utf-8"))
    return written


def _is_binary(buf: Any) -> bool:
    return "b" in getattr(buf, "mode", "") or not hasattr(buf, "encoding")


def _shard_worker(worker: Callable, ds: Dataset, spec: Any, rank: int, start: int, stop: int,
                  path: str | None, conn: Any) -> None:
    """Body of a forked worker process: run one shard, send back where its result is."""
    try:
        result = worker(ds, spec, rank, start, stop, path)
        if path is None:  # in-memory results cannot cross the process boundary
            raise AssertionError("worker shards need a file")
        conn.send(("ok", {"path": result["path"]}))
    except BaseException as err:  # noqa: BLE001 - report any failure to the parent
        text = traceback.format_exc()
        try:
            conn.send(("error", (err, text)))
        except Exception:  # noqa: BLE001 - the exception itself may not pickle
            conn.send(("error", (None, text)))
    finally:
        conn.close()


def _load_shard(path: str) -> dict:
    """A shard result written earlier (this run or a previous one)."""
    table = read_arrow_file(path)
    meta = json.loads((table.schema.metadata or {}).get(COVE_METADATA_KEY, b"{}"))
    if "start" not in meta:
        raise ValueError(f"{path} is not a cove map/filter cache file (no 'cove' metadata)")
    return {
        "table": table,
        "path": path,
        "columns": meta.get("columns", []),
        "start": meta.get("start", 0),
        "stop": meta.get("stop", 0),
        "num_rows": meta.get("num_rows", table.num_rows),
        "features": Features.from_arrow_schema(table.schema),
    }


class _Restart(Exception):
    """A column assumed unchanged was changed by a later batch: redo the shard storing it."""

    def __init__(self, column: str) -> None:
        super().__init__(column)
        self.column = column


def _map_shard(ds: Dataset, spec: _MapSpec, rank: int, start: int, stop: int,
               path: str | None) -> dict:
    forced: set[str] = set()
    while True:
        try:
            return _map_shard_once(ds, spec, rank, start, stop, path, forced)
        except _Restart as restart:
            forced.add(restart.column)


def _map_shard_once(ds: Dataset, spec: _MapSpec, rank: int, start: int, stop: int,
                    path: str | None, forced: set[str]) -> dict:
    """Run the function over rows [start, stop) and write the changed/new columns."""
    input_names = ds.column_names
    removed = set(spec.remove_columns)
    python_format = ds._format_type is None
    # with an indices mapping the input rows are scattered: store every output column
    store_all = ds._indices is not None or spec.features is not None or not python_format
    writer: ArrowWriter | None = None
    plan: dict | None = None  # decided on the first batch: output order, stored columns
    num_out = 0
    step = spec.batch_size if spec.batched else (spec.writer_batch_size or _ITER_BATCH)
    if spec.batched and spec.drop_last_batch:  # the rows of a last, short batch are dropped
        stop = start + (stop - start) // step * step
    bar = _progress(stop - start, spec.desc)
    try:
        for offset in range(start, stop, step):
            end = min(offset + step, stop)
            table = ds._query(slice(offset, end))
            passthrough: set[str] = set()  # input columns returned without being read
            if not python_format:
                batch = format_table(table, "batch", ds._format_type, None, False,
                                     ds._format_kwargs, ds._transform)
                snapshot = {c: list(v) for c, v in batch.items()} if spec.batched else batch
            elif spec.batched:  # columns become Python lists only when the function reads them
                batch = LazyBatch(table)
                snapshot = batch.snapshot
            else:
                batch = {c: to_pylist(table.column(c)) for c in table.column_names}
                snapshot = batch
            if spec.batched:
                out, replaces, passthrough = _call_batched(spec, batch, offset, end, rank)
                n_out = _batch_length(out, end - offset)
                if replaces:  # an Arrow table / DataFrame is the whole new batch (as datasets)
                    removed = set(input_names)
                elif out and isinstance(batch, LazyBatch):  # `del batch[c]`: c goes (as datasets)
                    removed = removed | batch.deleted
            else:
                out, n_out, deleted = _call_rows(spec, batch, table.num_rows, offset, rank)
                removed = removed | deleted
            n_in = end - offset
            kept = [c for c in input_names if c not in removed and c not in out]
            if kept and n_out != n_in:
                raise ValueError(
                    f"map: the function returned {n_out} rows for a batch of {n_in} rows while "
                    f"the input columns {kept} are kept; a function that changes the number "
                    "of rows must remove them (remove_columns=...) or return them"
                )
            unchanged = set()
            if not store_all and n_out == n_in:
                unchanged = {c for c in out if c not in removed and c not in forced and (
                    c in passthrough or c in snapshot and _same_values(
                        out[c], batch[c], snapshot[c], table.column(c)))}
            if plan is None:
                order = [c for c in input_names if c not in removed]
                order += [c for c in out if c not in order]
                if store_all:
                    stored = [c for c in order if c in out or c in kept]
                else:
                    stored = [c for c in order if c in out and c not in unchanged]
                plan = {"order": order, "stored": stored}
                if spec.features is not None:
                    missing = [c for c in stored if c not in spec.features]
                    if missing:
                        raise ValueError(
                            f"map: the output columns {missing} are not in features="
                            f"{list(spec.features)}"
                        )
                meta = {"columns": order, "start": start, "stop": stop}
                writer = ArrowWriter(
                    path,
                    features=Features({c: spec.features[c] for c in stored})
                    if spec.features is not None else None,
                    try_features=ds._info.features if spec.features is None else None,
                    extra_metadata=meta,
                )
            else:
                new_order = [c for c in input_names if c not in removed]
                new_order += [c for c in out if c not in new_order]
                if set(new_order) != set(plan["order"]):
                    raise ValueError(
                        f"map: the function returned the columns {sorted(out)} for rows "
                        f"{offset}..{end - 1} but {sorted(set(plan['order']) - set(kept))} "
                        "before; it must return the same columns every time"
                    )
                for c in plan["order"]:
                    if c not in plan["stored"] and c in out and c not in unchanged:
                        raise _Restart(c)
            to_write = {}
            for c in plan["stored"]:
                if c in out:
                    to_write[c] = out[c]
                else:  # a kept input column, stored because the rows are not contiguous
                    to_write[c] = table.column(c)
            if spec.features is not None:
                to_write = Features({c: spec.features[c] for c in to_write}).encode_batch(
                    {c: v if not isinstance(v, pa.ChunkedArray) else v.to_pylist()
                     for c, v in to_write.items()})
            if plan["stored"]:
                writer.write_batch(to_write)
            num_out += n_out
            bar.update(n_in)
        if plan is None:  # drop_last_batch dropped everything
            plan = {"order": [c for c in input_names if c not in removed], "stored": []}
            writer = ArrowWriter(path, extra_metadata={"columns": plan["order"], "start": start,
                                                       "stop": stop})
        writer.extra_metadata["num_rows"] = num_out
        empty = pa.schema([]) if not plan["stored"] else None
        result = writer.finalize(empty)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        bar.close()
    return {
        "table": result,
        "path": path,
        "columns": plan["order"],
        "start": start,
        "stop": stop,
        "num_rows": num_out,
        "features": writer.output_features or Features(),
    }


def _call_batched(spec: _MapSpec, batch: Mapping, offset: int, end: int,
                  rank: int) -> tuple[dict, bool, set[str]]:
    """The function's output for a batch, whether it replaces the batch entirely, and the
    input columns it returned without reading them (their Arrow columns stand in)."""
    args: list = [batch] if spec.input_columns is None else [batch[c] for c in spec.input_columns]
    if spec.with_indices:
        args.append(list(range(offset, end)))
    if spec.with_rank:
        args.append(rank)
    out = spec.function(*args, **spec.fn_kwargs)
    if out is None:
        return {}, False, set()
    if isinstance(out, (pa.Table, pa.RecordBatch)):
        return {name: out.column(name) for name in out.column_names}, True, set()
    if type(out).__module__.startswith("pandas") and hasattr(out, "columns"):  # a DataFrame
        return {str(name): out[name].tolist() for name in out.columns}, True, set()
    if out is batch and isinstance(out, LazyBatch):  # the batch itself, perhaps edited
        passthrough = {c for c in out if out.pending(c)}
        return ({c: out.table.column(c) if c in passthrough else out[c] for c in out}, False,
                passthrough)
    if not isinstance(out, Mapping):
        raise TypeError(
            "A batched map function must return a dict of lists, an Arrow table, a pandas "
            f"DataFrame or None, got {type(out).__name__}"
        )
    return dict(out), False, set()


def _batch_length(out: dict, n_in: int) -> int:
    lengths = {}
    for name, values in out.items():
        if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
            raise TypeError(
                f"map(batched=True): column {name!r} must be a list of values for the batch, "
                f"got {type(values).__name__}"
            )
        lengths[name] = len(values)
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"map(batched=True): the function returned columns of different lengths {lengths}; "
            "every column of a batch must have the same number of values"
        )
    return next(iter(lengths.values()), n_in)


def _call_rows(spec: _MapSpec, batch: dict, n: int, offset: int,
               rank: int) -> tuple[dict, int, set[str]]:
    """The output columns, their length, and the input columns the function deleted from the
    row it returned (which the map removes, as datasets does)."""
    names = list(batch)
    columns: dict[str, list] = {}
    seen_keys: list[str] | None = None
    deleted: set[str] = set()
    for i in range(n):
        row = {name: batch[name][i] for name in names}
        args: list = [row] if spec.input_columns is None else [row[c] for c in spec.input_columns]
        if spec.with_indices:
            args.append(offset + i)
        if spec.with_rank:
            args.append(rank)
        out = spec.function(*args, **spec.fn_kwargs)
        if out is None:
            out = {}
        elif not isinstance(out, Mapping):
            raise TypeError(
                f"A map function must return a dict or None, got {type(out).__name__} for row "
                f"{offset + i}"
            )
        if out is args[0] and spec.input_columns is None:  # the row itself, edited
            deleted.update(name for name in names if name not in out)
        keys = list(out)
        if seen_keys is None:
            seen_keys = keys
            columns = {k: [] for k in keys}
        elif set(keys) != set(seen_keys):
            raise ValueError(
                f"map: the function returned the keys {sorted(keys)} for row {offset + i} but "
                f"{sorted(seen_keys)} for the rows before; it must return the same keys"
            )
        for key in seen_keys:
            columns[key].append(out[key])
    # columns returned untouched: hand back the input lists so the identity check finds them
    for key, values in columns.items():
        if key in batch and len(values) == n and all(
            a is b for a, b in zip(values, batch[key], strict=True)
        ):
            columns[key] = batch[key]
    return columns, n, deleted


def _same_values(out_values: Any, in_values: Any, snapshot: list,
                 arrow_column: pa.ChunkedArray) -> bool:
    """Whether a returned column is the input column unchanged (so it need not be stored)."""
    if out_values is not in_values or len(out_values) != len(snapshot):
        return False
    if not all(a is b for a, b in zip(out_values, snapshot, strict=True)):
        return False
    # the same objects; a nested value (a list, a dict) may still have been edited in place
    if pa.types.is_nested(arrow_column.type):
        return out_values == arrow_column.to_pylist()
    return True


def _filter_shard(ds: Dataset, spec: _MapSpec, rank: int, start: int, stop: int,
                  path: str | None) -> dict:
    """Evaluate the predicate over rows [start, stop); write the kept rows' indices."""
    python_format = ds._format_type is None
    writer = ArrowWriter(path, features=Features({"indices": Value("uint64")}),
                         extra_metadata={"start": start, "stop": stop})
    step = spec.batch_size if spec.batched else (spec.writer_batch_size or _ITER_BATCH)
    bar = _progress(stop - start, spec.desc)
    try:
        for offset in range(start, stop, step):
            end = min(offset + step, stop)
            table = ds._query(slice(offset, end))
            if not python_format:
                batch = format_table(table, "batch", ds._format_type, None, False,
                                     ds._format_kwargs, ds._transform)
            elif spec.batched:  # only the columns the predicate reads become Python lists
                batch = LazyBatch(table)
            else:
                batch = {c: to_pylist(table.column(c)) for c in table.column_names}
            if spec.batched:
                mask = _call_predicate_batched(spec, batch, offset, end, rank)
            else:
                mask = _call_predicate_rows(spec, batch, end - offset, offset, rank)
            positions = offset + np.flatnonzero(mask)
            rows = ds._physical(positions.astype(np.int64))
            writer.write_batch({"indices": pa.array(np.asarray(rows, dtype=np.uint64))})
            bar.update(end - offset)
        table = writer.finalize(Features({"indices": Value("uint64")}).arrow_schema)
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()
    return {"table": table, "path": path, "columns": ["indices"], "start": start, "stop": stop,
            "num_rows": table.num_rows, "features": writer.output_features}


def _call_predicate_batched(spec: _MapSpec, batch: dict, offset: int, end: int,
                            rank: int) -> np.ndarray:
    args: list = [batch] if spec.input_columns is None else [batch[c] for c in spec.input_columns]
    if spec.with_indices:
        args.append(list(range(offset, end)))
    if spec.with_rank:
        args.append(rank)
    out = spec.function(*args, **spec.fn_kwargs)
    if isinstance(out, (bool, np.bool_)) or not hasattr(out, "__len__"):
        raise TypeError(
            "filter(batched=True): the function must return a list of booleans, one per row, "
            f"got {type(out).__name__}"
        )
    if hasattr(out, "detach"):  # a torch tensor
        out = out.detach().cpu().numpy()
    mask = np.asarray(out, dtype=bool)
    if mask.shape != (end - offset,):
        raise ValueError(
            f"filter(batched=True): the function returned {len(out)} booleans for a batch of "
            f"{end - offset} rows"
        )
    return mask


def _call_predicate_rows(spec: _MapSpec, batch: dict, n: int, offset: int,
                         rank: int) -> np.ndarray:
    names = list(batch)
    mask = np.zeros(n, dtype=bool)
    for i in range(n):
        row = {name: batch[name][i] for name in names}
        args: list = [row] if spec.input_columns is None else [row[c] for c in spec.input_columns]
        if spec.with_indices:
            args.append(offset + i)
        if spec.with_rank:
            args.append(rank)
        mask[i] = bool(spec.function(*args, **spec.fn_kwargs))
    return mask
