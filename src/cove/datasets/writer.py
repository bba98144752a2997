"""Writing Arrow IPC stream files (the format of datasets' `*.arrow` cache and data files).

Files are written to a temporary name in the target folder, fsynced and renamed, so a reader
never sees a half-written file. A writer holds a lock on its temporary file, so the ones left
by a killed process can be told apart and are swept the next time the folder is used. The
features go into the schema metadata under "huggingface" (as datasets does), so
`Features.from_arrow_schema` restores ClassLabel names and the like.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pyarrow as pa

from .features import Features, get_nested_type

try:
    import fcntl
except ImportError:  # Windows: no flock, so nothing is swept (see sweep_orphan_temp_files)
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

# the names mkstemp(prefix=".tmp-", suffix=".arrow") makes, and nothing else
_TEMP_ARROW = re.compile(r"\.tmp-[a-z0-9_]{8}\.arrow")
# a temp file this recent is never swept: it covers the instant between mkstemp and flock
ORPHAN_MIN_AGE = 60.0


def _locked_temp(folder: str, suffix: str) -> tuple[int, str]:
    """A new temporary file in `folder` and a descriptor holding an exclusive flock on it,
    to keep open until the file is renamed or removed (the lock marks its writer alive)."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass  # a filesystem without flock: the sweeper can't lock the file either, keeps it
    return fd, tmp


def sweep_orphan_temp_files(folder: str) -> list[str]:
    """Remove the `.tmp-*.arrow` files in `folder` whose writer died; returns their paths.

    A writer holds an exclusive flock on its temp file until the rename (`_locked_temp`), and
    the kernel drops it when the process ends, even on SIGKILL: a temp file whose lock can be
    taken belongs to nobody. flock, not fcntl/POSIX record locks: those don't conflict within
    one process (a thread's load would sweep another thread's file) and are dropped when any
    descriptor of the file closes. Without flock (Windows) a dead writer can't be told from a
    live one, so nothing is removed. Errors (a read-only folder) leave files in place.
    """
    if fcntl is None:
        return []
    try:
        names = [n for n in os.listdir(folder) if _TEMP_ARROW.fullmatch(n)]
    except OSError:
        return []
    removed = []
    now = time.time()
    for name in names:
        path = os.path.join(folder, name)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            continue  # renamed into place meanwhile, or a link: not ours
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or now - st.st_mtime < ORPHAN_MIN_AGE:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live writer holds it
            current = os.lstat(path)
            # the name may have been renamed away and reused between our open and the lock
            if (current.st_dev, current.st_ino) == (st.st_dev, st.st_ino):
                os.unlink(path)
                removed.append(path)
                logger.info("Removed %s, left by a writer that was killed", path)
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed


@contextmanager
def atomic_file(target: str) -> Iterator[str]:
    """A temporary path next to `target` to write to; fsynced and renamed onto `target` when
    the block succeeds, removed when it fails (a reader never sees half a file)."""
    folder = os.path.dirname(os.path.abspath(target))
    lock_fd, tmp = _locked_temp(folder, os.path.splitext(target)[1])
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    finally:
        os.close(lock_fd)


# extra metadata key of cove's own cache files (the output column order of a map)
COVE_METADATA_KEY = b"cove"


def to_arrow_array(values: Any, pa_type: pa.DataType | None = None) -> pa.Array:
    """An Arrow array from a list / numpy array / torch tensor / Arrow array of values."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        return values if pa_type is None or values.type == pa_type else values.cast(pa_type)
    values = _plain(values)
    if type(values).__module__ == "numpy" and getattr(values, "ndim", 1) > 1:
        values = list(values)  # rows of an N-D array: one list per row
    if isinstance(values, list) and values and _has_arrays(values):
        values = [_plain_nested(v) for v in values]
    return pa.array(values, type=pa_type)


# Tokenizer outputs take far less room in small integers (input ids fit 32 bits, masks 8), as
# `datasets` stores them: a column of these names whose type is inferred (no feature given or
# kept) becomes this type when its values are int64 or a list of int64 and fit.
SMALL_INT_COLUMNS = {"input_ids": pa.int32(), "attention_mask": pa.int8(),
                     "special_tokens_mask": pa.int8(), "token_type_ids": pa.int8()}


def _small_ints(name: str, array: pa.Array) -> pa.Array:
    small = SMALL_INT_COLUMNS.get(name)
    if small is None:
        return array
    if pa.types.is_int64(array.type):
        target = small
    elif pa.types.is_list(array.type) and pa.types.is_int64(array.type.value_type):
        target = pa.list_(small)
    else:
        return array
    try:
        return array.cast(target)  # a safe cast: values out of range keep int64
    except pa.ArrowInvalid:
        return array


def _plain(value: Any) -> Any:
    # torch tensors (and anything with .numpy()) -> numpy, without importing torch
    if hasattr(value, "detach") and hasattr(value, "numpy"):
        return value.detach().cpu().numpy()
    if type(value).__module__.startswith("pandas"):
        return value.to_numpy() if hasattr(value, "to_numpy") else value
    return value


def _has_arrays(values: list) -> bool:
    for value in values:
        if value is not None:
            module = type(value).__module__
            return module == "numpy" or module.startswith("torch") or isinstance(value, (list, dict))
    return False


def _plain_nested(value: Any) -> Any:
    value = _plain(value)
    if type(value).__module__ == "numpy":
        return value.tolist() if hasattr(value, "tolist") else value
    if isinstance(value, list):
        return [_plain_nested(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain_nested(v) for k, v in value.items()}
    return value


def schema_with_features(schema: pa.Schema, features: Features, extra: dict | None = None) -> pa.Schema:
    metadata = dict(schema.metadata or {})
    metadata[b"huggingface"] = json.dumps({"info": {"features": features.to_dict()}}).encode()
    if extra is not None:
        metadata[COVE_METADATA_KEY] = json.dumps(extra).encode()
    return schema.with_metadata(metadata)


class ArrowWriter:
    """Incremental writer of one Arrow IPC stream file (or an in-memory table when path=None).

    The schema is fixed by the first batch. With `features` the columns are cast to them;
    with `try_features` (map's output) a column first tries the type its feature has and
    keeps that feature when the type matches, else its type is inferred from the values.
    """

    def __init__(
        self,
        path: str | None,
        features: Features | None = None,
        try_features: Features | None = None,
        extra_metadata: dict | None = None,
    ) -> None:
        self.path = path
        self.features = features
        self.try_features = try_features
        self.extra_metadata = extra_metadata
        self.num_rows = 0
        self._schema: pa.Schema | None = None
        self._writer: pa.RecordBatchStreamWriter | None = None
        self._sink = None
        self._tmp: str | None = None
        self._lock_fd: int | None = None  # holds the temp file's flock while it is written
        self._batches: list[pa.RecordBatch] = []  # in-memory mode only
        self._current_features: Features | None = None

    @property
    def schema(self) -> pa.Schema | None:
        return self._schema

    def write_batch(self, batch: Mapping[str, Any] | pa.Table | pa.RecordBatch) -> None:
        """Append rows: a dict of column -> values, or an Arrow table / record batch."""
        table = self._to_table(batch)
        if table.num_rows == 0 and self._schema is not None:
            return
        if self._schema is None:
            self._open(table)
        elif table.schema.names != self._schema.names:
            raise ValueError(
                f"Columns changed between batches: {self._schema.names} then {table.schema.names}"
            )
        table = self._conform(table)
        for record_batch in table.to_batches():
            if self._writer is not None:
                self._writer.write_batch(record_batch)
            else:
                self._batches.append(record_batch)
        self.num_rows += table.num_rows

    def _to_table(self, batch: Any) -> pa.Table:
        if isinstance(batch, pa.RecordBatch):
            return pa.Table.from_batches([batch])
        if isinstance(batch, pa.Table):
            return batch
        target = self.features if self._schema is None else self._current_features
        arrays = []
        names = list(batch)
        for name in names:
            values = batch[name]
            wanted = None
            if target is not None and name in target:
                wanted = get_nested_type(target[name])
            elif self._schema is None and self.try_features is not None and name in self.try_features:
                try:
                    arrays.append(to_arrow_array(values, get_nested_type(self.try_features[name])))
                    continue
                except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError,
                        TypeError, ValueError, OverflowError):
                    pass  # not representable in the old type: infer a new one
            if wanted is not None and pa.types.is_null(wanted) and self._schema is not None:
                wanted = None  # checked in _conform, with an explanation
            try:
                array = to_arrow_array(values, wanted)
                arrays.append(array if wanted is not None or self._schema is not None
                              else _small_ints(name, array))
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as err:
                raise TypeError(
                    f"Couldn't convert column {name!r} to Arrow"
                    + (f" type {wanted}" if wanted is not None else "")
                    + f": {err}"
                ) from None
        return pa.Table.from_arrays(arrays, names=names)

    def _open(self, table: pa.Table) -> None:
        if self.features is not None:
            missing = [name for name in table.column_names if name not in self.features]
            if missing:
                raise ValueError(
                    f"Columns {missing} are not in the features {list(self.features)}"
                )
            features = Features({name: self.features[name] for name in table.column_names})
        else:
            features = Features.from_arrow_schema(pa.schema(table.schema))
            if self.try_features is not None:  # keep e.g. ClassLabel when the type did not change
                for f in table.schema:
                    old = self.try_features.get(f.name)
                    if old is not None and get_nested_type(old) == f.type:
                        features[f.name] = old
        self._current_features = features
        self._schema = schema_with_features(features.arrow_schema, features, self.extra_metadata)
        if self.path is not None:
            folder = os.path.dirname(os.path.abspath(self.path))
            os.makedirs(folder, exist_ok=True)
            sweep_orphan_temp_files(folder)
            self._lock_fd, self._tmp = _locked_temp(folder, ".arrow")
            self._sink = pa.OSFile(self._tmp, "wb")
            self._writer = pa.ipc.new_stream(self._sink, self._schema)

    def _conform(self, table: pa.Table) -> pa.Table:
        assert self._schema is not None
        plain = pa.schema([pa.field(f.name, f.type) for f in self._schema])
        if table.schema.equals(plain, check_metadata=False):
            return table.replace_schema_metadata(self._schema.metadata)
        columns = []
        for name, field in zip(plain.names, plain, strict=True):
            column = table.column(name)
            if column.type != field.type:
                if pa.types.is_null(field.type) and column.null_count < len(column):
                    raise TypeError(
                        f"Couldn't write column {name!r}: its type is null because its first "
                        "values were all None; give its type with features="
                    )
                try:
                    column = column.cast(field.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                    raise TypeError(
                        f"Column {name!r} has type {column.type} in this batch but {field.type} "
                        f"in the first one: {err}"
                    ) from None
            columns.append(column)
        return pa.Table.from_arrays(columns, schema=self._schema)

    @property
    def output_features(self) -> Features | None:
        """Features of the written columns (known once the first batch is written)."""
        return self._current_features

    def finalize(self, empty_schema: pa.Schema | None = None) -> pa.Table:
        """Close the file (rename it into place) and return the written table.

        The table is memory-mapped from the file, or in memory when path is None.
        `empty_schema` is the schema to use when no batch was written.
        """
        if self._schema is None:
            self._open((empty_schema if empty_schema is not None else pa.schema([])).empty_table())
        if self._writer is None:
            return pa.Table.from_batches(self._batches, schema=self._schema)
        self._writer.close()
        self._sink.close()
        fd = os.open(self._tmp, os.O_RDONLY)  # make the bytes durable before the rename
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self._tmp, self.path)
        self._tmp = None
        self._release_lock()
        return read_arrow_file(self.path)

    def abort(self) -> None:
        """Drop a partly written file (after an error in the user's function)."""
        if self._writer is not None:
            try:
                self._writer.close()
                self._sink.close()
            except (OSError, pa.ArrowException):
                pass
        if self._tmp is not None and os.path.exists(self._tmp):
            os.unlink(self._tmp)
        self._tmp = None
        self._release_lock()

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def read_arrow_file(path: str, in_memory: bool = False) -> pa.Table:
    """Read an Arrow IPC stream (or file-format) file, memory-mapped unless in_memory."""
    source = pa.OSFile(path, "rb") if in_memory else pa.memory_map(path, "r")
    try:
        try:
            table = pa.ipc.open_stream(source).read_all()
        except pa.ArrowInvalid:
            source.seek(0)
            table = pa.ipc.open_file(source).read_all()
    finally:
        if in_memory:
            source.close()
    return _extension_storage(table)


def _extension_storage(table: pa.Table) -> pa.Table:
    """Columns of a registered extension type (e.g. datasets' Array2D when `datasets` is
    imported) as their storage arrays, zero-copy: cove works on the plain types."""
    if not any(isinstance(f.type, pa.ExtensionType) for f in table.schema):
        return table
    columns, fields = [], []
    for field, column in zip(table.schema, table.columns, strict=True):
        if isinstance(field.type, pa.ExtensionType):
            column = pa.chunked_array([c.storage for c in column.chunks],
                                      type=field.type.storage_type)
            field = pa.field(field.name, field.type.storage_type, field.nullable, field.metadata)
        columns.append(column)
        fields.append(field)
    return pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=table.schema.metadata))


def write_arrow(
    batches: Iterable[pa.RecordBatch | pa.Table | Mapping[str, Any]],
    path: str,
    features: Features | None = None,
) -> tuple[int, int]:
    """Write batches to an Arrow stream file atomically; returns (num_rows, num_bytes)."""
    writer = ArrowWriter(path, features=features)
    try:
        for batch in batches:
            writer.write_batch(batch)
        empty = features.arrow_schema if features is not None else None
        writer.finalize(empty_schema=empty)
    except BaseException:
        writer.abort()
        raise
    return writer.num_rows, os.path.getsize(path)
