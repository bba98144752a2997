"""concatenate_datasets and interleave_datasets for map-style Datasets.

Both are zero-copy: Arrow tables are concatenated chunk-wise and the row order of an
interleave is an indices mapping over the concatenation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from .arrow_dataset import Dataset, _derived
from .features import Features, get_nested_type
from .info import DatasetInfo

STOPPING_STRATEGIES = ("first_exhausted", "all_exhausted", "all_exhausted_without_replacement")


def _is_iterable(dsets: list) -> bool:
    """True for a list of IterableDatasets (handled by iterable_dataset.py), else checks types."""
    if not dsets:
        raise ValueError("Need at least one dataset to combine")
    if all(isinstance(d, Dataset) for d in dsets):
        return False
    from .iterable_dataset import IterableDataset

    if all(isinstance(d, IterableDataset) for d in dsets):
        return True
    kinds = sorted({type(d).__name__ for d in dsets})
    raise TypeError(
        f"Cannot combine {kinds}: give only Dataset or only IterableDataset objects "
        "(convert with Dataset.to_iterable_dataset())"
    )


def concatenate_datasets(
    dsets: list[Any],
    info: DatasetInfo | None = None,
    split: str | None = None,
    axis: int = 0,
) -> Any:
    """Rows of the datasets one after the other (axis=0) or their columns side by side (axis=1)."""
    dsets = list(dsets)
    if _is_iterable(dsets):
        from .iterable_dataset import _concatenate_iterable_datasets

        if axis != 0:
            raise ValueError("IterableDatasets can only be concatenated with axis=0")
        return _concatenate_iterable_datasets(dsets, info=info, split=split)
    if axis not in (0, 1):
        raise ValueError(f"axis must be 0 (rows) or 1 (columns), got {axis}")
    if axis == 1:
        return _concatenate_columns(dsets, info, split)
    first = dsets[0]
    features = first.features
    for index, ds in enumerate(dsets[1:], start=1):
        if set(ds.column_names) != set(first.column_names):
            raise ValueError(
                f"concatenate_datasets: dataset {index} has the columns {ds.column_names} but "
                f"dataset 0 has {first.column_names}; they must have the same columns"
            )
        for name in first.column_names:
            if get_nested_type(ds.features[name]) != get_nested_type(features[name]):
                raise ValueError(
                    f"concatenate_datasets: column {name!r} is {ds.features[name]!r} in dataset "
                    f"{index} but {features[name]!r} in dataset 0; cast them to the same features"
                )
    tables = [d._data.select(first.column_names).replace_schema_metadata(None) for d in dsets]
    table = pa.concat_tables(tables)
    if any(d._indices is not None for d in dsets):
        parts, offset = [], 0
        for d in dsets:
            if d._indices is None:
                parts.append(np.arange(offset, offset + d._data.num_rows, dtype=np.uint64))
            else:
                parts.append(d._indices.column(0).to_numpy().astype(np.uint64) + np.uint64(offset))
            offset += d._data.num_rows
        indices = pa.table({"indices": pa.array(np.concatenate(parts))})
    else:
        indices = None
    if info is None:
        info = first.info.copy()
        info.splits = None
    info.features = features
    fingerprint = _derived("concatenate", "rows", [d._fingerprint for d in dsets])
    out = Dataset(table, info=info, split=split if split is not None else first.split,
                  indices_table=indices, fingerprint=fingerprint)
    out._data_files = [f for d in dsets for f in d._data_files]
    return _with_common_format(out, dsets)


def _concatenate_columns(dsets: list[Dataset], info: DatasetInfo | None,
                         split: str | None) -> Dataset:
    n = dsets[0].num_rows
    seen: dict[str, int] = {}
    for index, ds in enumerate(dsets):
        if ds.num_rows != n:
            raise ValueError(
                f"concatenate_datasets(axis=1): dataset {index} has {ds.num_rows} rows but "
                f"dataset 0 has {n}; they must have the same number of rows"
            )
        for name in ds.column_names:
            if name in seen:
                raise ValueError(
                    f"concatenate_datasets(axis=1): column {name!r} is in datasets "
                    f"{seen[name]} and {index}; rename one of them"
                )
            seen[name] = index
    flat = [d.flatten_indices() if d._indices is not None else d for d in dsets]
    features = Features({k: v for d in flat for k, v in d.features.items()})
    columns = [c for d in flat for c in d._data.columns]
    table = pa.Table.from_arrays(columns, schema=features.arrow_schema)
    if info is None:
        info = dsets[0].info.copy()
        info.splits = None
    info.features = features
    fingerprint = _derived("concatenate", "columns", [d._fingerprint for d in dsets])
    out = Dataset(table, info=info, split=split if split is not None else dsets[0].split,
                  fingerprint=fingerprint)
    out._data_files = [f for d in flat for f in d._data_files]
    return _with_common_format(out, dsets)


def _with_common_format(out: Dataset, dsets: list[Dataset]) -> Dataset:
    """The datasets' format on the result when they all have the same one (as datasets)."""
    first = dsets[0]
    if all(d.format == first.format and d._transform is first._transform for d in dsets[1:]):
        out.set_format(first._format_type, first._format_columns, first._output_all_columns,
                       **first._format_kwargs)
        out._transform = first._transform
    return out


def interleave_datasets(
    datasets: list[Any],
    probabilities: list[float] | None = None,
    seed: int | None = None,
    info: DatasetInfo | None = None,
    split: str | None = None,
    stopping_strategy: str = "first_exhausted",
) -> Any:
    """Alternate between datasets: in turn, or drawing a source at random with `probabilities`.

    stopping_strategy "first_exhausted" stops when one source runs out; "all_exhausted"
    goes on (restarting exhausted sources) until every source was used entirely;
    "all_exhausted_without_replacement" uses every row exactly once.
    For the same seed, the rows are those datasets' interleave_datasets gives.
    """
    datasets = list(datasets)
    if _is_iterable(datasets):
        from .iterable_dataset import _interleave_iterable_datasets

        return _interleave_iterable_datasets(datasets, probabilities=probabilities, seed=seed,
                                             info=info, split=split,
                                             stopping_strategy=stopping_strategy)
    if stopping_strategy not in STOPPING_STRATEGIES:
        raise ValueError(
            f"stopping_strategy must be one of {STOPPING_STRATEGIES}, got {stopping_strategy!r}"
        )
    lengths = [len(d) for d in datasets]
    if probabilities is not None:
        if len(probabilities) != len(datasets):
            raise ValueError(
                f"interleave_datasets: {len(probabilities)} probabilities for "
                f"{len(datasets)} datasets"
            )
        if any(p < 0 for p in probabilities) or not np.isclose(sum(probabilities), 1.0):
            raise ValueError(f"probabilities must be >= 0 and sum to 1, got {probabilities}")
    concatenated = concatenate_datasets(datasets, info=info, split=split)
    offsets = np.cumsum([0] + lengths[:-1])
    if probabilities is None:
        indices = _cycle_indices(lengths, offsets, stopping_strategy)
    else:
        indices = _random_indices(lengths, offsets, probabilities, seed, stopping_strategy)
    return concatenated.select(indices)


def _cycle_indices(lengths: list[int], offsets: np.ndarray, strategy: str) -> np.ndarray:
    lengths_arr = np.array(lengths, dtype=np.int64)
    if strategy == "first_exhausted":
        rows = np.arange(min(lengths)).reshape(-1, 1)
        return (rows + offsets.reshape(1, -1)).ravel()
    if strategy == "all_exhausted":
        rows = np.arange(max(lengths)).reshape(-1, 1) % lengths_arr.reshape(1, -1)
        return (rows + offsets.reshape(1, -1)).ravel()
    # without replacement: round robin, skipping the sources that ran out
    out = []
    for i in range(max(lengths)):
        out.extend(int(offsets[j]) + i for j in range(len(lengths)) if i < lengths[j])
    return np.array(out, dtype=np.int64)


def _random_indices(lengths: list[int], offsets: np.ndarray, probabilities: list[float],
                    seed: int | None, strategy: str) -> np.ndarray:
    """Draw sources with numpy's default_rng(seed).choice in blocks of 1000 (as datasets)."""
    n = len(lengths)
    drawable = [p > 0 for p in probabilities]
    empty = [i for i in range(n) if lengths[i] == 0 and drawable[i]]
    if empty:
        raise ValueError(
            f"interleave_datasets: datasets {empty} are empty but have a probability > 0"
        )
    if strategy != "first_exhausted" and not all(drawable):
        never = [i for i in range(n) if not drawable[i]]
        raise ValueError(
            f"interleave_datasets: stopping_strategy={strategy!r} can never exhaust datasets "
            f"{never}: their probability is 0"
        )
    rng = np.random.default_rng(seed)
    current = [0] * n
    exhausted = [False] * n
    out: list[int] = []
    while True:
        for source in rng.choice(n, size=1000, p=probabilities):
            source = int(source)
            # the stopping rule is checked before taking the next row
            if strategy == "first_exhausted" and any(exhausted):
                return np.array(out, dtype=np.int64)
            if strategy != "first_exhausted" and all(exhausted):
                return np.array(out, dtype=np.int64)
            if strategy == "all_exhausted_without_replacement" and exhausted[source]:
                continue
            out.append(int(offsets[source]) + current[source])
            current[source] += 1
            if current[source] >= lengths[source]:
                exhausted[source] = True
                if strategy == "all_exhausted":
                    current[source] = 0  # start the source again (oversampling)
