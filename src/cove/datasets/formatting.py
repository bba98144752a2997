"""Output formats of Dataset rows, batches and columns: python, numpy, torch, pandas, arrow.

`format_table(table, kind, ...)` turns an Arrow table slice into what `ds[key]` returns:
kind "row" (one example), "batch" (a dict of columns) or "column" (one column's values).
torch and pandas are imported only when their format is used.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, MutableMapping
from typing import Any

import numpy as np
import pyarrow as pa

FORMAT_TYPES = (None, "python", "numpy", "np", "torch", "pt", "pandas", "arrow", "pa", "custom")
_ALIASES = {"np": "numpy", "pt": "torch", "pa": "arrow", "python": None}


def normalize_format_type(format_type: str | None) -> str | None:
    if format_type not in FORMAT_TYPES:
        raise ValueError(
            f"Unknown format type {format_type!r}; use one of "
            "None, 'python', 'numpy', 'torch', 'pandas', 'arrow'"
        )
    return _ALIASES.get(format_type, format_type)


def format_table(
    table: pa.Table,
    kind: str,
    format_type: str | None = None,
    columns: list[str] | None = None,
    output_all_columns: bool = False,
    format_kwargs: dict | None = None,
    transform: Callable | None = None,
) -> Any:
    """Format a slice of a dataset; `kind` is "row", "batch" or "column"."""
    format_kwargs = format_kwargs or {}
    if columns is not None and kind != "column":
        formatted_part = table.select(columns)
        rest = [c for c in table.column_names if c not in columns] if output_all_columns else []
    else:
        formatted_part, rest = table, []
    if format_type == "custom":  # the transform sees only the format columns, as in datasets
        batch = transform(formatted_part.to_pydict())
        if kind == "column":
            return next(iter(batch.values()))
        out = {key: values[0] for key, values in batch.items()} if kind == "row" else batch
        if rest:
            extra = table.select(rest)
            out.update(extra.slice(0, 1).to_pylist()[0] if kind == "row" else extra.to_pydict())
        return out
    if format_type == "arrow":
        out = formatted_part if kind != "column" else formatted_part.column(0)
        return out
    if format_type == "pandas":
        df = formatted_part.to_pandas(types_mapper=None)
        return df[df.columns[0]] if kind == "column" else df
    if format_type is None:
        if kind == "row":
            out = formatted_part.slice(0, 1).to_pylist()[0]
        elif kind == "column":
            return formatted_part.column(0).to_pylist()
        else:
            out = formatted_part.to_pydict()
    elif format_type in ("numpy", "torch"):
        row = kind == "row"
        if format_type == "numpy":
            convert = functools.partial(_to_numpy, keep_scalar_dtype=row)
        else:
            convert = _torch_converter(format_kwargs)
        out = {}
        for name in formatted_part.column_names:
            values = convert(formatted_part.column(name))
            if row:
                values = values[0]
                if isinstance(values, np.bool_):  # datasets gives a 0-d array for booleans
                    values = np.asarray(values)
            out[name] = values
        if kind == "column":
            return next(iter(out.values()))
    else:
        raise ValueError(f"Unknown format type {format_type!r}")
    if rest:
        extra = table.select(rest)
        extra_values = extra.slice(0, 1).to_pylist()[0] if kind == "row" else extra.to_pydict()
        out.update(extra_values)
    return out


def _is_numeric(pa_type: pa.DataType) -> bool:
    return pa.types.is_integer(pa_type) or pa.types.is_floating(pa_type) or pa.types.is_boolean(
        pa_type
    )


def _default_dtype(array: np.ndarray) -> np.ndarray:
    # datasets' numpy defaults for arrays: integers -> int64, floats -> float32
    if array.dtype.kind in "iu" and array.dtype != np.int64:
        return array.astype(np.int64)
    if array.dtype.kind == "f" and array.dtype != np.float32:
        return array.astype(np.float32)
    return array


def _leaf_type(pa_type: pa.DataType) -> pa.DataType:
    while _is_list(pa_type):
        pa_type = pa_type.value_type
    return pa_type


def _to_numpy(column: pa.ChunkedArray, keep_scalar_dtype: bool = False) -> np.ndarray:
    """numpy values of a column: numeric arrays, stacked lists, or object arrays when ragged.

    Arrays get datasets' default dtypes; `keep_scalar_dtype` keeps a primitive column's own
    dtype (the values of one row are numpy scalars of the stored type, as in datasets).
    """
    if _is_numeric(column.type):
        array = column.to_numpy()  # nulls in an int column make it float with NaN
        return array if keep_scalar_dtype and column.null_count == 0 else _default_dtype(array)
    values = column.to_pylist()
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return np.array(values) if column.null_count == 0 else np.array(values, dtype=object)
    if _is_list(column.type):
        leaf = _leaf_type(column.type)
        dtype = leaf.to_pandas_dtype() if _is_numeric(leaf) else None
        arrays = [None if v is None else _nested_numpy(v, dtype) for v in values]
        shapes = {None if a is None else a.shape for a in arrays}
        if len(shapes) == 1 and None not in shapes and arrays and arrays[0].dtype != object:
            return np.stack(arrays)
        out = np.empty(len(arrays), dtype=object)
        out[:] = arrays
        return out
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _is_list(pa_type: pa.DataType) -> bool:
    return (
        pa.types.is_list(pa_type)
        or pa.types.is_large_list(pa_type)
        or pa.types.is_fixed_size_list(pa_type)
    )


def _nested_numpy(value: Any, dtype: Any) -> np.ndarray:
    try:
        array = np.array(value, dtype=dtype)
    except ValueError:  # ragged inner lists
        out = np.empty(len(value), dtype=object)
        out[:] = [_nested_numpy(v, dtype) for v in value]
        return out
    return _default_dtype(array) if array.dtype != object else array


def _torch_converter(format_kwargs: dict) -> Callable[[pa.ChunkedArray], Any]:
    import torch  # only the "torch" format needs torch

    def to_tensor(array: np.ndarray) -> Any:
        kwargs = dict(format_kwargs)
        if "dtype" not in kwargs:
            # datasets' defaults: integers -> int64, floats -> float32
            if np.issubdtype(array.dtype, np.integer):
                kwargs["dtype"] = torch.int64
            elif np.issubdtype(array.dtype, np.floating):
                kwargs["dtype"] = torch.float32
        return torch.tensor(array, **kwargs)

    def convert(column: pa.ChunkedArray) -> Any:
        array = _to_numpy(column)
        if array.dtype == object:
            if _is_list(column.type):  # ragged lists: one tensor per row
                return [None if a is None else _tensor_or_list(a, to_tensor) for a in array]
            return list(array)
        if array.dtype.kind in "US":  # strings stay Python strings
            return array.tolist()
        return to_tensor(array)

    return convert


def _tensor_or_list(array: np.ndarray, to_tensor: Callable) -> Any:
    if array.dtype == object:
        return [_tensor_or_list(a, to_tensor) for a in array]
    if array.dtype.kind in "US":
        return array.tolist()
    return to_tensor(array)


def to_pylist(column: pa.ChunkedArray | pa.Array) -> list:
    """A column's values as Python objects; numbers without nulls go through numpy, which
    builds the list several times faster than Arrow's per-value conversion."""
    t = column.type
    if column.null_count == 0 and (pa.types.is_integer(t) or pa.types.is_floating(t)
                                   or pa.types.is_boolean(t)) and not pa.types.is_float16(t):
        return column.to_numpy().tolist()
    return column.to_pylist()


class LazyBatch(MutableMapping):
    """A batch (dict of column lists) over an Arrow table that converts a column to Python
    only when the function reads it: a filter on `label` never pays for the `text` column.

    Reading a column records a shallow copy of its list (`snapshot`), so the map can tell a
    returned column that is the input unchanged from one edited in place. Columns the
    function never read are `pending`: when returned as they are, their Arrow data is reused.
    """

    def __init__(self, table: pa.Table) -> None:
        self.table = table
        self.values: dict[str, Any] = {}
        self.snapshot: dict[str, list] = {}
        self.deleted: set[str] = set()

    def pending(self, key: str) -> bool:
        """An input column the function has neither read nor replaced."""
        return key not in self.values and key not in self.deleted and \
            key in self.table.column_names

    def __getitem__(self, key: str) -> Any:
        if key in self.values:
            return self.values[key]
        if key in self.deleted or key not in self.table.column_names:
            raise KeyError(key)
        values = to_pylist(self.table.column(key))
        self.values[key] = values
        self.snapshot[key] = list(values)
        return values

    def __setitem__(self, key: str, value: Any) -> None:
        self.values[key] = value
        self.deleted.discard(key)

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self.values.pop(key, None)
        self.deleted.add(key)

    def __iter__(self) -> Iterator[str]:
        for key in self.table.column_names:
            if key not in self.deleted:
                yield key
        for key in self.values:
            if key not in self.table.column_names:
                yield key

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, key: object) -> bool:
        return key in self.values or (key not in self.deleted and key in self.table.column_names)

    def __repr__(self) -> str:
        return f"LazyBatch({list(self)})"
