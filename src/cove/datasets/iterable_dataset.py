"""Streaming datasets: examples read lazily from files, URLs, generators or Arrow tables.

An `IterableDataset` is a chain of example iterables (a source, then map/filter/take/...).
Each iterable keeps a small state dict up to date as it yields (which shard, how many examples
of it), so `state_dict()` after any example and `load_state_dict()` resume exactly after it.
Sources are split into shards (files, or the lists in `gen_kwargs`): `shard()`, DataLoader
workers and `split_dataset_by_node` hand whole shards to each reader when they can.
"""

from __future__ import annotations

import copy
import functools
import itertools
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from cove.datasets.features import Features, List, get_nested_type
from cove.datasets.formatting import _default_dtype, format_table
from cove.datasets.info import DatasetInfo
from cove.datasets.writer import to_arrow_array

ARROW_SLICE = 1000  # rows turned into Python dicts at a time
FORMATS = {None: None, "python": None, "numpy": "numpy", "np": "numpy", "torch": "torch",
           "pt": "torch", "arrow": "arrow", "pa": "arrow", "pandas": "pandas", "pd": "pandas"}


# -- example iterables ------------------------------------------------------------------------


class _ExIterable:
    """A restartable stream of examples.

    `iter(state)` yields example dicts and keeps `state` (from `init_state()`, or a saved copy
    to resume from) describing the position just after the last example it yielded. Objects are
    immutable: `shard`/`reseed` return new ones, so two iterations never share a position.
    """

    kind = "base"

    @property
    def num_shards(self) -> int:
        raise NotImplementedError

    def init_state(self) -> dict:
        raise NotImplementedError

    def iter(self, state: dict) -> Iterator[dict]:
        raise NotImplementedError

    def shard(self, num_shards: int, index: int, contiguous: bool = True) -> _ExIterable:
        raise NotImplementedError

    def reseed(self, seed: int) -> _ExIterable:
        """The same stream with shard order and shuffle buffers drawn from `seed`."""
        raise NotImplementedError


def _shard_indices(n: int, num_shards: int, index: int, contiguous: bool) -> list[int]:
    if contiguous:
        div, mod = divmod(n, num_shards)
        start = div * index + min(index, mod)
        return list(range(start, start + div + (1 if index < mod else 0)))
    return list(range(index, n, num_shards))


class _Source(_ExIterable):
    """Shards read one after the other; `read(shard)` yields lists of rows or Arrow batches."""

    kind = "source"

    def __init__(self, shards: list, read: Callable[[Any], Iterator[Any]]) -> None:
        self.shards = shards
        self.read = read

    @property
    def num_shards(self) -> int:
        return len(self.shards)

    def init_state(self) -> dict:
        return {"type": self.kind, "shard_idx": 0, "shard_example_idx": 0}

    def iter(self, state: dict) -> Iterator[dict]:
        while state["shard_idx"] < len(self.shards):
            skip = state["shard_example_idx"]
            for chunk in self.read(self.shards[state["shard_idx"]]):
                n = len(chunk) if isinstance(chunk, list) else chunk.num_rows
                if skip >= n:  # resuming: whole chunks are skipped without decoding them
                    skip -= n
                    continue
                for start in range(skip, n, ARROW_SLICE):
                    rows = (chunk[start:start + ARROW_SLICE] if isinstance(chunk, list)
                            else chunk.slice(start, ARROW_SLICE).to_pylist())
                    for row in rows:
                        state["shard_example_idx"] += 1
                        yield row
                skip = 0
            state["shard_idx"] += 1
            state["shard_example_idx"] = 0

    def shard(self, num_shards: int, index: int, contiguous: bool = True) -> _Source:
        picked = _shard_indices(len(self.shards), num_shards, index, contiguous)
        return _Source([self.shards[i] for i in picked], self.read)

    def reseed(self, seed: int) -> _Source:
        order = np.random.default_rng(seed).permutation(len(self.shards))
        return _Source([self.shards[i] for i in order], self.read)


class _Wrapper(_ExIterable):
    """An iterable over another one; its state holds the inner state under "inner"."""

    def __init__(self, inner: _ExIterable) -> None:
        self.inner = inner

    @property
    def num_shards(self) -> int:
        return self.inner.num_shards

    def _own_state(self) -> dict:
        return {}

    def init_state(self) -> dict:
        return {"type": self.kind, "inner": self.inner.init_state(), **self._own_state()}

    def _with_inner(self, inner: _ExIterable) -> _Wrapper:
        new = copy.copy(self)
        new.inner = inner
        return new

    def shard(self, num_shards: int, index: int, contiguous: bool = True) -> _ExIterable:
        return self._with_inner(self.inner.shard(num_shards, index, contiguous))

    def reseed(self, seed: int) -> _ExIterable:
        return self._with_inner(self.inner.reseed(seed))


class _RowFn(_Wrapper):
    """Each example replaced by `fn(example)` (column selection, renames, casts)."""

    kind = "row_fn"

    def __init__(self, inner: _ExIterable, fn: Callable[[dict], dict]) -> None:
        super().__init__(inner)
        self.fn = fn

    def iter(self, state: dict) -> Iterator[dict]:
        fn = self.fn
        for example in self.inner.iter(state["inner"]):
            yield fn(example)


class _Transform(_Wrapper):
    """map/filter/batch: `apply(rows, first_index)` -> output rows, one input row or a batch.

    A batch reads ahead of what it yielded, so its state also keeps the inner state from
    before the batch and how many of the batch's outputs were yielded: resuming replays the
    batch and skips those (as datasets does).
    """

    kind = "transform"

    def __init__(self, inner: _ExIterable, apply: Callable[[list[dict], int], list[dict]],
                 batch_size: int | None, drop_last_batch: bool = False) -> None:
        super().__init__(inner)
        self.apply = apply
        self.batch_size = batch_size  # None: one example at a time; <= 0: everything at once
        self.drop_last_batch = drop_last_batch

    def _own_state(self) -> dict:
        return {"previous_state": None, "num_examples_since_previous_state": 0,
                "previous_state_example_idx": 0}

    def iter(self, state: dict) -> Iterator[dict]:
        if self.batch_size is None:
            yield from self._iter_rows(state)
        else:
            yield from self._iter_batches(state)

    def _iter_rows(self, state: dict) -> Iterator[dict]:
        apply = self.apply
        for example in self.inner.iter(state["inner"]):
            index = state["previous_state_example_idx"]
            state["previous_state_example_idx"] = index + 1
            yield from apply([example], index)

    def _iter_batches(self, state: dict) -> Iterator[dict]:
        skip = 0
        if state["previous_state"] is not None:  # resuming inside a batch
            state["inner"] = copy.deepcopy(state["previous_state"])
            skip = state["num_examples_since_previous_state"]
        index = state["previous_state_example_idx"]
        it = self.inner.iter(state["inner"])
        size = self.batch_size if self.batch_size and self.batch_size > 0 else None
        while True:
            before = copy.deepcopy(state["inner"])
            rows = list(itertools.islice(it, size))
            if not rows or (self.drop_last_batch and size and len(rows) < size):
                return
            outputs = self.apply(rows, index)
            state["previous_state"] = before
            state["previous_state_example_idx"] = index
            for k, row in enumerate(outputs):
                if k < skip:
                    continue
                state["num_examples_since_previous_state"] = k + 1
                yield row
            skip = 0
            index += len(rows)
            # The whole batch is out: the next position is simply after it.
            state["previous_state"] = None
            state["num_examples_since_previous_state"] = 0
            state["previous_state_example_idx"] = index


class _Take(_Wrapper):
    kind = "take"

    def __init__(self, inner: _ExIterable, n: int) -> None:
        super().__init__(inner)
        self.n = n

    def _own_state(self) -> dict:
        return {"taken": 0}

    def iter(self, state: dict) -> Iterator[dict]:
        if state["taken"] >= self.n:
            return
        for example in self.inner.iter(state["inner"]):
            state["taken"] += 1
            yield example
            if state["taken"] >= self.n:
                return

    def shard(self, num_shards: int, index: int, contiguous: bool = True) -> _ExIterable:
        # Each part takes its share of n, as datasets splits take() across workers.
        n = self.n // num_shards + (1 if index < self.n % num_shards else 0)
        return _Take(self.inner.shard(num_shards, index, contiguous), n)

    def reseed(self, seed: int) -> _ExIterable:
        return self  # take(n) keeps the same n examples whatever the shuffling after it


class _Skip(_Take):
    kind = "skip"

    def _own_state(self) -> dict:
        return {"skipped": 0}

    def iter(self, state: dict) -> Iterator[dict]:
        it = self.inner.iter(state["inner"])
        while state["skipped"] < self.n:
            if next(it, None) is None:
                return
            state["skipped"] += 1
        yield from it

    def shard(self, num_shards: int, index: int, contiguous: bool = True) -> _ExIterable:
        n = self.n // num_shards + (1 if index < self.n % num_shards else 0)
        return _Skip(self.inner.shard(num_shards, index, contiguous), n)


class _Step(_Wrapper):
    """Every `step`-th example from `offset`: a node's part when shards don't divide evenly."""

    kind = "step"

    def __init__(self, inner: _ExIterable, step: int, offset: int) -> None:
        super().__init__(inner)
        self.step = step
        self.offset = offset

    def _own_state(self) -> dict:
        return {"example_idx": 0}

    def iter(self, state: dict) -> Iterator[dict]:
        for example in self.inner.iter(state["inner"]):
            index = state["example_idx"]
            state["example_idx"] = index + 1
            if index % self.step == self.offset:
                yield example


class _Shuffle(_Wrapper):
    """A shuffle buffer. Its content is not saved: resuming refills it from the inner position
    (datasets documents the same: the buffered examples are lost)."""

    kind = "shuffle"

    def __init__(self, inner: _ExIterable, buffer_size: int, seed: int) -> None:
        super().__init__(inner)
        self.buffer_size = buffer_size
        self.seed = seed

    def iter(self, state: dict) -> Iterator[dict]:
        rng = np.random.default_rng(self.seed)
        size = self.buffer_size
        buffer: list[dict] = []
        picks: Iterator[int] = iter(())
        for example in self.inner.iter(state["inner"]):
            if len(buffer) < size:
                buffer.append(example)
                continue
            i = next(picks, None)
            if i is None:  # random indices drawn in blocks: one numpy call per 1000 examples
                picks = iter(rng.integers(0, size, 1000).tolist())
                i = next(picks)
            yield buffer[i]
            buffer[i] = example
        rng.shuffle(buffer)
        yield from buffer

    def reseed(self, seed: int) -> _ExIterable:
        new = _Shuffle(self.inner.reseed(seed), self.buffer_size, seed)
        return new


class _Repeat(_Wrapper):
    """The inner stream `num_times` over (None: forever)."""

    kind = "repeat"

    def __init__(self, inner: _ExIterable, num_times: int | None) -> None:
        super().__init__(inner)
        self.num_times = num_times

    def _own_state(self) -> dict:
        return {"repeat_index": 0}

    def iter(self, state: dict) -> Iterator[dict]:
        while self.num_times is None or state["repeat_index"] < self.num_times:
            empty = True
            for example in self.inner.iter(state["inner"]):
                empty = False
                yield example
            state["repeat_index"] += 1
            state["inner"] = self.inner.init_state()
            if empty:  # an empty stream repeated forever would never yield nor end
                return


class _Concatenated(_ExIterable):
    """The children one after the other (concatenate_datasets of streams)."""

    kind = "concatenate"

    def __init__(self, children: list[_ExIterable]) -> None:
        self.children = children

    @property
    def num_shards(self) -> int:
        return min(c.num_shards for c in self.children)

    def init_state(self) -> dict:
        return {"type": self.kind, "ex_iterable_idx": 0,
                "ex_iterables": [c.init_state() for c in self.children]}

    def iter(self, state: dict) -> Iterator[dict]:
        while state["ex_iterable_idx"] < len(self.children):
            i = state["ex_iterable_idx"]
            yield from self.children[i].iter(state["ex_iterables"][i])
            state["ex_iterable_idx"] = i + 1

    def shard(self, num_shards: int, index: int, contiguous: bool = True) -> _ExIterable:
        return type(self)([c.shard(num_shards, index, contiguous) for c in self.children])

    def reseed(self, seed: int) -> _ExIterable:
        return type(self)([c.reseed(seed) for c in self.children])


_END = object()


class _Interleaved(_Concatenated):
    """Examples taken from the children in turn, or at random with `probabilities`.

    As datasets does, each child's next example is fetched ahead: "first_exhausted" stops right
    after a child yields its last example, "all_exhausted" restarts exhausted children until
    every one has run out once, "all_exhausted_without_replacement" passes over exhausted
    children until all have run out (every example once). The state keeps each child's position before its fetched-ahead
    example, and the number of random picks made (the picks replay from `seed`).
    """

    kind = "interleave"

    def __init__(self, children: list[_ExIterable], probabilities: list[float] | None = None,
                 seed: int | None = None, stopping_strategy: str = "first_exhausted") -> None:
        super().__init__(children)
        self.probabilities = probabilities
        self.seed = seed
        self.stopping_strategy = stopping_strategy

    def init_state(self) -> dict:
        n = len(self.children)
        return {**super().init_state(), "num_picks": 0, "previous_states": [None] * n,
                "is_exhausted": [False] * n}

    def _picks(self, state: dict) -> Iterator[int]:
        n = len(self.children)
        if self.probabilities is None:
            i = state["ex_iterable_idx"]
            while True:
                yield i
                i = (i + 1) % n
        rng = np.random.default_rng(self.seed)
        skip = state["num_picks"]
        while True:
            block = rng.choice(n, size=1000, p=self.probabilities).tolist()
            yield from block[skip:]
            skip = max(skip - len(block), 0)

    def iter(self, state: dict) -> Iterator[dict]:
        children, n = self.children, len(self.children)
        states, previous = state["ex_iterables"], state["previous_states"]
        exhausted = state["is_exhausted"]
        if any(exhausted) if self.stopping_strategy == "first_exhausted" else all(exhausted):
            return  # resuming after the last example
        for i in range(n):  # resuming: replay the examples that were fetched ahead
            if previous[i] is not None:
                states[i] = copy.deepcopy(previous[i])
        iters: list[Iterator[dict] | None] = [None] * n
        nexts: list[Any] = [None] * n

        def fetch(i: int) -> None:
            previous[i] = copy.deepcopy(states[i])
            if iters[i] is None:
                iters[i] = children[i].iter(states[i])
            nexts[i] = next(iters[i], _END)

        without_replacement = self.stopping_strategy == "all_exhausted_without_replacement"
        for i in self._picks(state):
            if without_replacement and exhausted[i]:  # a used-up child is passed over
                state["num_picks"] += 1
                state["ex_iterable_idx"] = (i + 1) % n
                continue
            if nexts[i] is None:
                fetch(i)
            example = nexts[i]
            if example is _END:  # an empty child: nothing more can come
                return
            state["num_picks"] += 1
            state["ex_iterable_idx"] = (i + 1) % n
            fetch(i)
            if nexts[i] is _END:
                state["is_exhausted"][i] = True
                if self.stopping_strategy == "first_exhausted" or all(exhausted):
                    yield example
                    return
                if without_replacement:
                    yield example
                    continue
                states[i] = children[i].init_state()
                previous[i] = None
                iters[i] = nexts[i] = None
            yield example

    def shard(self, num_shards: int, index: int, contiguous: bool = True) -> _ExIterable:
        return _Interleaved([c.shard(num_shards, index, contiguous) for c in self.children],
                            self.probabilities, self.seed, self.stopping_strategy)

    def reseed(self, seed: int) -> _ExIterable:
        return _Interleaved([c.reseed(seed) for c in self.children], self.probabilities,
                            self.seed, self.stopping_strategy)


def _check_state(expected: dict, got: Any, where: str = "state") -> None:
    """A saved state must come from the same chain of operations: compare their shapes."""
    if not isinstance(got, dict) or got.get("type") != expected.get("type"):
        found = got.get("type") if isinstance(got, dict) else type(got).__name__
        raise ValueError(
            f"This state_dict does not match the dataset: at {where} the dataset has a "
            f"{expected.get('type')!r} step but the state has {found!r}. Load a state saved "
            "from the same pipeline of operations."
        )
    missing = set(expected) - set(got)
    if missing:
        raise ValueError(f"This state_dict lacks {sorted(missing)} at {where}.")
    if "inner" in expected:
        _check_state(expected["inner"], got["inner"], f"{where}.inner")
    if "ex_iterables" in expected:
        if len(got["ex_iterables"]) != len(expected["ex_iterables"]):
            raise ValueError(f"This state_dict has {len(got['ex_iterables'])} datasets at {where} "
                             f"where the dataset combines {len(expected['ex_iterables'])}.")
        for k, (e, g) in enumerate(zip(expected["ex_iterables"], got["ex_iterables"],
                                       strict=True)):
            _check_state(e, g, f"{where}.ex_iterables[{k}]")


# -- shard readers (module level, so DataLoader workers can pickle them) ----------------------


def _read_file(file: str, kind: str, reader_kwargs: dict, features: Features | None,
               token: str | bool | None) -> Iterator[pa.RecordBatch]:
    from cove.datasets import packaged
    from cove.datasets.remote import open_file

    with open_file(file, token=token) as f:
        yield from packaged.read_batches(kind, f, name=file, features=features, **reader_kwargs)


def _read_generator(kwargs: dict, generator: Callable, features: Features | None
                    ) -> Iterator[list[dict]]:
    for example in generator(**kwargs):
        yield [_encode(example, features) if features is not None else example]


def _read_table(table: pa.Table) -> Iterator[pa.RecordBatch]:
    yield from table.to_batches()


def _encode(example: dict, features: Features) -> dict:
    extra = set(example) - set(features)
    if extra:
        raise ValueError(f"The example has columns {sorted(extra)} that are not in the "
                         f"features {list(features)}.")
    return features.encode_example(example)


# -- the functions map/filter apply (picklable partials) --------------------------------------


def _call(fn: Callable, inputs: Any, input_columns: list[str] | None, with_indices: bool,
          index: Any, fn_kwargs: dict) -> Any:
    args = [inputs] if input_columns is None else [inputs[c] for c in input_columns]
    if with_indices:
        args.append(index)
    return fn(*args, **fn_kwargs)


def _rows_to_batch(rows: list[dict]) -> dict[str, list]:
    columns: dict[str, list] = {}
    for key in rows[0]:
        columns[key] = [row.get(key) for row in rows]
    return columns


def _batch_to_rows(batch: dict) -> list[dict]:
    lengths = {key: len(column) for key, column in batch.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"Column lengths mismatch: the columns have lengths {lengths}. Make sure the mapped "
            "function returns all columns at the same length, or drop the input columns whose "
            "length differs with `remove_columns`.")
    n = next(iter(lengths.values()), 0)
    keys = list(batch)
    return [{key: batch[key][i] for key in keys} for i in range(n)]


def _drop(example: dict, columns: list[str]) -> dict:
    missing = [c for c in columns if c not in example]
    if missing:
        raise ValueError(f"Column(s) {missing} to remove are not in the dataset: its columns "
                         f"are {list(example)}.")
    return {k: v for k, v in example.items() if k not in columns}


def _map_apply(rows: list[dict], index: int, *, fn: Callable | None, batched: bool,
               input_columns: list[str] | None, with_indices: bool, fn_kwargs: dict,
               remove_columns: list[str], features: Features | None, fmt: str | None,
               source_features: Features | None) -> list[dict]:
    if not batched:
        example = rows[0]
        out = None
        if fn is not None:
            inputs = _format_example(example, fmt, source_features) if fmt else example
            out = _call(fn, inputs, input_columns, with_indices, index, fn_kwargs)
            if out is not None and not isinstance(out, dict):
                raise TypeError("The map function must return a dict (or None), "
                                f"got {type(out).__name__}.")
        result = _drop(example, remove_columns) if remove_columns else dict(example)
        if out:
            result.update(out)
        return [_encode(result, features) if features is not None else result]
    batch = _rows_to_batch(rows)
    out = None
    if fn is not None:
        inputs = _format_batch(batch, fmt, source_features) if fmt else batch
        indices = list(range(index, index + len(rows)))
        out = _call(fn, inputs, input_columns, with_indices, indices, fn_kwargs)
        if out is not None and not isinstance(out, dict):
            raise TypeError("A batched map function must return a dict of columns (or None), "
                            f"got {type(out).__name__}.")
    result = _drop(batch, remove_columns) if remove_columns else dict(batch)
    if out:
        result.update({k: v.to_pylist() if isinstance(v, pa.Array) else v for k, v in out.items()})
    out_rows = _batch_to_rows(result)
    return [_encode(r, features) for r in out_rows] if features is not None else out_rows


def _filter_apply(rows: list[dict], index: int, *, fn: Callable, batched: bool,
                  input_columns: list[str] | None, with_indices: bool, fn_kwargs: dict,
                  fmt: str | None, source_features: Features | None) -> list[dict]:
    if not batched:
        inputs = _format_example(rows[0], fmt, source_features) if fmt else rows[0]
        return rows if _call(fn, inputs, input_columns, with_indices, index, fn_kwargs) else []
    batch = _rows_to_batch(rows)
    inputs = _format_batch(batch, fmt, source_features) if fmt else batch
    mask = _call(fn, inputs, input_columns, with_indices,
                 list(range(index, index + len(rows))), fn_kwargs)
    mask = list(mask)
    if len(mask) != len(rows):
        raise ValueError(f"A batched filter function must return one boolean per example: "
                         f"got {len(mask)} for a batch of {len(rows)}.")
    return [row for row, keep in zip(rows, mask, strict=True) if keep]


def _batch_apply(rows: list[dict], index: int) -> list[dict]:
    return [_rows_to_batch(rows)]


def _add_column(example: dict, index: int, *, name: str, column: Any) -> dict:
    if index >= len(column):
        raise IndexError(f"add_column: the column {name!r} has {len(column)} values but the "
                         f"dataset has more examples.")
    return {name: column[index]}


def _select(example: dict, columns: list[str]) -> dict:
    missing = [c for c in columns if c not in example]
    if missing:
        raise ValueError(f"Column(s) {missing} are not in the dataset: its columns are "
                         f"{list(example)}.")
    return {c: example[c] for c in columns}


def _rename(example: dict, mapping: dict[str, str]) -> dict:
    missing = [c for c in mapping if c not in example]
    if missing:
        raise ValueError(f"Column(s) {missing} to rename are not in the dataset: its columns "
                         f"are {list(example)}.")
    return {mapping.get(k, k): v for k, v in example.items()}


def _cast(example: dict, features: Features, source: Features | None) -> dict:
    from cove.datasets.packaged import cast_batch

    schema = source.arrow_schema if source is not None else None
    batch = pa.RecordBatch.from_pylist([example], schema=schema)
    return cast_batch(batch, features, "the dataset").to_pylist()[0]


# -- formatting -----------------------------------------------------------------------------


def _to_numpy(value: Any) -> Any:
    if value is None or isinstance(value, (str, bytes)):
        return value
    if isinstance(value, dict):
        return {k: _to_numpy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_to_numpy(v) for v in value]
        if items and all(isinstance(v, np.ndarray) and v.dtype != object for v in items) \
                and len({v.shape for v in items}) == 1:
            return np.stack(items)
        if not items or all(isinstance(v, (str, bytes)) or v is None for v in items):
            return np.array(items, dtype=object) if items else np.array([])
        return items
    return np.asarray(value)


def _to_torch(value: Any) -> Any:
    import torch

    if isinstance(value, dict):
        return {k: _to_torch(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_torch(v) for v in value]
    if isinstance(value, np.ndarray):
        if value.dtype == object or value.dtype.kind in "USO":
            return value.tolist()
        if value.dtype.kind == "f":
            return torch.as_tensor(value, dtype=torch.float32)
        if value.dtype.kind in "iu":
            return torch.as_tensor(value, dtype=torch.int64)
        return torch.as_tensor(value)
    return value


def _format_example(example: dict, fmt: str | None, features: Features | None) -> Any:
    if fmt is None:
        return example
    if fmt == "numpy":
        return {k: _to_numpy(v) for k, v in example.items()}
    if fmt == "torch":
        return {k: _to_torch(_to_numpy(v)) for k, v in example.items()}
    return _format_batch(_rows_to_batch([example]), fmt, features)


def _numpy_column(value: Any) -> Any:
    """A batch column as datasets gives it: numbers as int64 / float32 arrays, ragged rows as
    an object array."""
    if isinstance(value, list):
        out = np.empty(len(value), dtype=object)
        out[:] = value
        return out
    return _default_dtype(value) if isinstance(value, np.ndarray) else value


def _format_batch(batch: dict[str, list], fmt: str | None, features: Features | None) -> Any:
    if fmt is None:
        return batch
    if fmt == "numpy":
        return {k: _numpy_column(_to_numpy(v)) for k, v in batch.items()}
    if fmt == "torch":
        return {k: _to_torch(_to_numpy(v)) for k, v in batch.items()}
    schema = None
    if features is not None and list(features) == list(batch):
        schema = features.arrow_schema
    table = pa.Table.from_pydict(batch, schema=schema)
    return table.to_pandas() if fmt == "pandas" else table


def _rows_table(batch: dict[str, list], features: Features | None) -> pa.Table:
    """A batch of Python values as Arrow (typed by `features` when they match its columns)."""
    if features is not None and list(features) == list(batch):
        types = [get_nested_type(features[k]) for k in batch]
    else:  # columns a map added: their types are inferred
        types = [None] * len(batch)
    arrays = [to_arrow_array(values, t) for values, t in zip(batch.values(), types, strict=True)]
    return pa.Table.from_arrays(arrays, names=list(batch))


def _arrow_backed(ex: _ExIterable) -> bool:
    """Whether datasets formats this stream from its Arrow batches, as a map-style Dataset does
    (numpy scalars, float32 arrays), rather than from Python examples (0-d arrays): Arrow
    sources through the steps that keep Arrow there (checked against datasets 5.2)."""
    if isinstance(ex, _Source):
        return not (isinstance(ex.read, functools.partial) and ex.read.func is _read_generator)
    if isinstance(ex, (_Take, _Shuffle, _Repeat)):  # _Skip is a _Take
        return _arrow_backed(ex.inner)
    if isinstance(ex, _RowFn):
        return (isinstance(ex.fn, functools.partial) and ex.fn.func in (_select, _cast)
                and _arrow_backed(ex.inner))
    if isinstance(ex, _Concatenated):  # and _Interleaved
        return all(_arrow_backed(child) for child in ex.children)
    return False


# -- the datasets -----------------------------------------------------------------------------


class _TorchCompatible:
    """A plain base, so torch's IterableDataset can be added to the bases once torch is in use
    (DataLoader needs that to iterate rather than index) without importing torch here."""


def _add_torch_base(cls: type) -> None:
    if "torch" in sys.modules:
        import torch.utils.data

        # Not issubclass: ABCMeta caches the negative answer it gave before the bases changed.
        if torch.utils.data.IterableDataset not in cls.__mro__:
            cls.__bases__ += (torch.utils.data.IterableDataset,)


class IterableDataset(_TorchCompatible):
    """A dataset read lazily, example by example (datasets.IterableDataset)."""

    def __init__(self, ex_iterable: _ExIterable, info: DatasetInfo | None = None,
                 split: str | None = None, formatting: str | None = None,
                 shuffle_seed: int | None = None,
                 distributed: tuple[int, int] | None = None) -> None:
        _add_torch_base(IterableDataset)
        self._ex_iterable = ex_iterable
        self._info = info.copy() if info is not None else DatasetInfo()
        self._split = split
        self._formatting = formatting
        self._shuffle_seed = shuffle_seed
        self._distributed = distributed
        self._epoch = 0
        self._starting_state: dict | None = None
        self._state: dict | None = None

    def __setstate__(self, state: dict) -> None:
        self.__dict__ = state
        _add_torch_base(IterableDataset)

    # -- constructors ---------------------------------------------------------------------

    @classmethod
    def _from_files(cls, files: list[str], kind: str, *, reader_kwargs: dict | None = None,
                    features: Features | None = None, token: str | bool | None = None,
                    info: DatasetInfo | None = None, split: str | None = None
                    ) -> IterableDataset:
        """One shard per file (local path or http(s) URL), read when iterated."""
        if isinstance(files, str):
            files = [files]
        info = info.copy() if info is not None else DatasetInfo()
        features = features if features is not None else info.features
        info.features = features
        read = functools.partial(_read_file, kind=kind, reader_kwargs=dict(reader_kwargs or {}),
                                 features=features, token=token)
        return cls(_Source(list(files), read), info=info, split=split)

    @classmethod
    def _from_arrow_tables(cls, tables: list[pa.Table], *, info: DatasetInfo | None = None,
                           split: str | None = None) -> IterableDataset:
        """One shard per table: what Dataset.to_iterable_dataset(num_shards) hands over."""
        if not tables:
            raise ValueError("_from_arrow_tables needs at least one table.")
        info = info.copy() if info is not None else DatasetInfo()
        if info.features is None:
            info.features = Features.from_arrow_schema(tables[0].schema)
        return cls(_Source(list(tables), _read_table), info=info, split=split)

    @classmethod
    def from_generator(cls, generator: Callable[..., Iterable[dict]],
                       features: Features | None = None, gen_kwargs: dict | None = None,
                       split: str = "train") -> IterableDataset:
        """Examples of `generator(**gen_kwargs)`; lists in `gen_kwargs` are its shards (each
        shard calls the generator with one-element lists)."""
        if features is not None and not isinstance(features, Features):
            features = Features(features)
        gen_kwargs = dict(gen_kwargs or {})
        lengths = {k: len(v) for k, v in gen_kwargs.items() if isinstance(v, list)}
        if len(set(lengths.values())) > 1:
            raise ValueError(
                "Sharding is ambiguous for this dataset: the lists in gen_kwargs have "
                f"different lengths {lengths}. Make them the same length (one entry per "
                "shard) or pass the other values as tuples.")
        n = next(iter(lengths.values()), None)
        if n is None:
            shards = [gen_kwargs]
        else:
            shards = [{k: [v[i]] if k in lengths else v for k, v in gen_kwargs.items()}
                      for i in range(n)]
        read = functools.partial(_read_generator, generator=generator, features=features)
        return cls(_Source(shards, read), info=DatasetInfo(features=features), split=split)

    @classmethod
    def from_dict(cls, mapping: dict, features: Features | None = None,
                  info: DatasetInfo | None = None, split: str | None = None,
                  num_shards: int = 1) -> IterableDataset:
        """Columns of Python values, in `num_shards` contiguous shards."""
        if features is not None and not isinstance(features, Features):
            features = Features(features)
        if features is not None:
            table = pa.Table.from_pydict(features.encode_batch(mapping),
                                         schema=features.arrow_schema)
        else:
            table = pa.Table.from_pydict(dict(mapping))
        return cls._from_table_shards(table, features, info, split, num_shards)

    @classmethod
    def from_list(cls, mapping: list[dict], features: Features | None = None,
                  info: DatasetInfo | None = None, split: str | None = None,
                  num_shards: int = 1) -> IterableDataset:
        """Rows as dicts, in `num_shards` contiguous shards."""
        columns = {key: [row.get(key) for row in mapping] for key in (mapping[0] if mapping
                                                                     else {})}
        return cls.from_dict(columns, features, info, split, num_shards)

    @classmethod
    def from_pandas(cls, df: Any, features: Features | None = None,
                    info: DatasetInfo | None = None, split: str | None = None,
                    preserve_index: bool | None = None, num_shards: int = 1) -> IterableDataset:
        """A pandas DataFrame, in `num_shards` contiguous shards."""
        if features is not None and not isinstance(features, Features):
            features = Features(features)
        schema = features.arrow_schema if features is not None else None
        table = pa.Table.from_pandas(df, schema=schema, preserve_index=preserve_index)
        return cls._from_table_shards(table, features, info, split, num_shards)

    @classmethod
    def _from_table_shards(cls, table: pa.Table, features: Features | None,
                           info: DatasetInfo | None, split: str | None, num_shards: int
                           ) -> IterableDataset:
        if num_shards < 1:
            raise ValueError(f"num_shards must be at least 1, got {num_shards}.")
        info = info.copy() if info is not None else DatasetInfo()
        info.features = features if features is not None else Features.from_arrow_schema(
            table.schema)
        bounds = [table.num_rows * k // num_shards for k in range(num_shards + 1)]
        shards = [table.slice(a, b - a) for a, b in itertools.pairwise(bounds)]
        return cls._from_arrow_tables(shards, info=info, split=split)

    @classmethod
    def from_csv(cls, path_or_paths: Any, split: str | None = None,
                 features: Features | None = None, **kwargs: Any) -> IterableDataset:
        """CSV files (local or http(s)), one shard each; kwargs are the CSV reader's options."""
        return cls._from_paths(path_or_paths, "csv", split, features, kwargs)

    @classmethod
    def from_json(cls, path_or_paths: Any, split: str | None = None,
                  features: Features | None = None, field: str | None = None,
                  **kwargs: Any) -> IterableDataset:
        """JSON / JSON Lines files, one shard each (`field`: the list inside one object)."""
        if field is not None:
            kwargs["field"] = field
        return cls._from_paths(path_or_paths, "json", split, features, kwargs)

    @classmethod
    def from_parquet(cls, path_or_paths: Any, split: str | None = None,
                     features: Features | None = None, columns: list[str] | None = None,
                     filters: Any = None, **kwargs: Any) -> IterableDataset:
        """Parquet files, one shard each, read row group by row group."""
        if columns is not None:
            kwargs["columns"] = columns
        if filters is not None:
            kwargs["filters"] = filters
        return cls._from_paths(path_or_paths, "parquet", split, features, kwargs)

    @classmethod
    def from_text(cls, path_or_paths: Any, split: str | None = None,
                  features: Features | None = None, **kwargs: Any) -> IterableDataset:
        """Text files, a "text" column of lines (or paragraphs / documents: `sample_by`)."""
        return cls._from_paths(path_or_paths, "text", split, features, kwargs)

    @classmethod
    def from_file(cls, filename: str) -> IterableDataset:
        """An Arrow IPC stream file, as datasets writes its cache files."""
        return cls._from_paths(filename, "arrow", None, None, {})

    @classmethod
    def _from_paths(cls, path_or_paths: Any, kind: str, split: str | None,
                    features: Features | None, reader_kwargs: dict) -> IterableDataset:
        paths = (path_or_paths if isinstance(path_or_paths, (list, tuple))
                 else [path_or_paths])
        files = [os.fsdecode(p) if isinstance(p, bytes) else os.fspath(p) for p in paths]
        return cls._from_files(files, kind, reader_kwargs=reader_kwargs, features=features,
                               split=split)

    # -- properties -----------------------------------------------------------------------

    @property
    def info(self) -> DatasetInfo:
        return self._info

    @property
    def split(self) -> str | None:
        return self._split

    @property
    def features(self) -> Features | None:
        return self._info.features

    @property
    def column_names(self) -> list[str] | None:
        return list(self.features) if self.features is not None else None

    @property
    def n_shards(self) -> int:
        if self._distributed and self._ex_iterable.num_shards % self._distributed[1] == 0:
            return self._ex_iterable.num_shards // self._distributed[1]
        return self._ex_iterable.num_shards

    @property
    def num_shards(self) -> int:
        return self.n_shards

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def num_columns(self) -> int | None:
        return len(self.features) if self.features is not None else None

    description = property(lambda self: self._info.description)
    citation = property(lambda self: self._info.citation)
    homepage = property(lambda self: self._info.homepage)
    license = property(lambda self: self._info.license)
    builder_name = property(lambda self: self._info.builder_name)
    config_name = property(lambda self: self._info.config_name)
    version = property(lambda self: self._info.version)
    dataset_size = property(lambda self: self._info.dataset_size)
    download_size = property(lambda self: self._info.download_size)

    def __repr__(self) -> str:
        names = self.column_names if self.column_names is not None else "Unknown"
        return f"IterableDataset({{\n    features: {names},\n    num_shards: {self.n_shards}\n}})"

    # -- iteration ------------------------------------------------------------------------

    def _effective_seed(self) -> int | None:
        if self._shuffle_seed is None:
            return None
        if self._epoch == 0:
            return self._shuffle_seed
        return int(np.random.default_rng([self._shuffle_seed, self._epoch]).integers(2**63))

    def _prepared(self) -> _ExIterable:
        """The chain for this epoch, this node and this DataLoader worker."""
        ex = self._ex_iterable
        seed = self._effective_seed()
        if seed is not None:
            ex = ex.reseed(seed)
        if self._distributed:
            rank, world_size = self._distributed
            if ex.num_shards % world_size == 0:
                ex = ex.shard(world_size, rank, contiguous=False)
            else:
                ex = _Step(ex, world_size, rank)
        if "torch" in sys.modules:
            from torch.utils.data import get_worker_info

            worker = get_worker_info()
            if worker is not None and worker.num_workers > 1:
                if ex.num_shards < worker.num_workers:
                    warnings.warn(
                        f"The dataset has {ex.num_shards} shard(s) for {worker.num_workers} "
                        "DataLoader workers: the extra workers get no data. Use at most "
                        f"{ex.num_shards} workers, or more files / gen_kwargs shards.",
                        stacklevel=2)
                ex = ex.shard(worker.num_workers, worker.id, contiguous=False)
        return ex

    def _iter_examples(self) -> Iterator[dict]:
        ex = self._prepared()
        state = ex.init_state()
        if self._starting_state is not None:
            saved = self._starting_state["examples_iterable"]
            _check_state(state, saved)
            state = copy.deepcopy(saved)
        self._state = {"examples_iterable": state, "epoch": self._epoch}
        return ex.iter(state)

    def __iter__(self) -> Iterator[Any]:
        # Not a generator function: the position is reset as soon as iter() is called, so
        # state_dict() right after it is the start, not where a previous iteration ended.
        examples = self._iter_examples()
        fmt, features = self._formatting, self.features
        if fmt is None:
            return examples
        if _arrow_backed(self._ex_iterable):
            return (format_table(_rows_table(_rows_to_batch([example]), features), "row", fmt)
                    for example in examples)
        return (_format_example(example, fmt, features) for example in examples)

    def iter(self, batch_size: int, drop_last_batch: bool = False) -> Iterator[Any]:
        """Batches (dicts of columns, or the format's type) of `batch_size` examples."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        return self._iter_batches(self._iter_examples(), batch_size, drop_last_batch)

    def _iter_batches(self, it: Iterator[dict], batch_size: int, drop_last_batch: bool
                      ) -> Iterator[Any]:
        fmt, features = self._formatting, self.features
        arrow = fmt is not None and _arrow_backed(self._ex_iterable)
        while rows := list(itertools.islice(it, batch_size)):
            if drop_last_batch and len(rows) < batch_size:
                return
            batch = _rows_to_batch(rows)
            yield (format_table(_rows_table(batch, features), "batch", fmt) if arrow
                   else _format_batch(batch, fmt, features))

    def _head(self, n: int = 5) -> dict[str, list]:
        rows = list(self._with(formatting=None).take(n))
        return _rows_to_batch(rows) if rows else {}

    def to_list(self) -> list[dict]:
        """Every example as a Python dict (reads the whole stream)."""
        return list(self._with(formatting=None))

    def to_dict(self, batch_size: int | None = None, batched: bool = False
                ) -> dict[str, list] | Iterator[dict[str, list]]:
        """The whole stream as columns, or an iterator of column batches when `batched`."""
        plain = self._with(formatting=None)
        if batched:
            return plain.iter(batch_size or 1000)
        rows = list(plain)
        return _rows_to_batch(rows) if rows else {}

    def to_pandas(self, batch_size: int | None = None, batched: bool = False) -> Any:
        """The whole stream as a pandas DataFrame, or an iterator of them when `batched`."""
        pandas = self._with(formatting="pandas")
        if batched:
            return pandas.iter(batch_size or 1000)
        import pandas as pd

        frames = list(pandas.iter(batch_size or 10_000))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def state_dict(self) -> dict:
        """Where iteration stands: pass it to load_state_dict() to resume after the last
        example yielded. A shuffle buffer's content is not kept (datasets does the same)."""
        if self._state is None:
            return {"examples_iterable": self._prepared().init_state(), "epoch": self._epoch}
        return copy.deepcopy(self._state)

    def load_state_dict(self, state_dict: dict) -> None:
        """The next iterations start where `state_dict` was saved."""
        if not isinstance(state_dict, dict) or "examples_iterable" not in state_dict:
            raise ValueError("load_state_dict expects a dict from IterableDataset.state_dict().")
        _check_state(self._prepared().init_state(), state_dict["examples_iterable"])
        self._epoch = state_dict.get("epoch", self._epoch)
        self._starting_state = copy.deepcopy(state_dict)

    def set_epoch(self, epoch: int) -> None:
        """A new shard order and shuffle buffer per epoch (when shuffled)."""
        self._epoch = epoch

    # -- transforms -----------------------------------------------------------------------

    def _with(self, ex_iterable: _ExIterable | None = None, **changes: Any) -> IterableDataset:
        new = IterableDataset(
            ex_iterable if ex_iterable is not None else self._ex_iterable,
            info=changes.pop("info", self._info), split=self._split,
            formatting=changes.pop("formatting", self._formatting),
            shuffle_seed=changes.pop("shuffle_seed", self._shuffle_seed),
            distributed=changes.pop("distributed", self._distributed),
        )
        new._epoch = self._epoch
        return new

    def _with_features(self, ex_iterable: _ExIterable, features: Features | None
                       ) -> IterableDataset:
        info = self._info.copy()
        info.features = features
        return self._with(ex_iterable, info=info)

    def with_format(self, type: str | None = None) -> IterableDataset:  # noqa: A002 - HF name
        """Examples as Python objects (None), NumPy arrays, torch tensors, Arrow or pandas."""
        if type not in FORMATS:
            raise ValueError(f"Unknown format {type!r}: use one of "
                             f"{[k for k in FORMATS if k is not None]} or None.")
        return self._with(formatting=FORMATS[type])

    def map(self, function: Callable | None = None, with_indices: bool = False,
            input_columns: str | list[str] | None = None, batched: bool = False,
            batch_size: int | None = 1000, drop_last_batch: bool = False,
            remove_columns: str | list[str] | None = None, features: Features | None = None,
            fn_kwargs: dict | None = None) -> IterableDataset:
        """Apply `function` to each example (or batch, a dict of lists) as it is read."""
        remove = [remove_columns] if isinstance(remove_columns, str) else list(remove_columns or [])
        columns = [input_columns] if isinstance(input_columns, str) else input_columns
        self._check_columns(remove, "remove")
        self._check_columns(columns or [], "use as input")
        if features is not None and not isinstance(features, Features):
            features = Features(features)
        apply = functools.partial(
            _map_apply, fn=function, batched=batched, input_columns=columns,
            with_indices=with_indices, fn_kwargs=dict(fn_kwargs or {}), remove_columns=remove,
            features=features, fmt=self._formatting, source_features=self.features)
        size = (batch_size if batch_size is not None else -1) if batched else None
        ex = _Transform(self._ex_iterable, apply, size, drop_last_batch and batched)
        return self._with_features(ex, features)

    def filter(self, function: Callable, with_indices: bool = False,
               input_columns: str | list[str] | None = None, batched: bool = False,
               batch_size: int | None = 1000, fn_kwargs: dict | None = None
               ) -> IterableDataset:
        """Keep the examples for which `function` is true (a list of booleans if batched)."""
        columns = [input_columns] if isinstance(input_columns, str) else input_columns
        self._check_columns(columns or [], "use as input")
        apply = functools.partial(
            _filter_apply, fn=function, batched=batched, input_columns=columns,
            with_indices=with_indices, fn_kwargs=dict(fn_kwargs or {}), fmt=self._formatting,
            source_features=self.features)
        size = (batch_size if batch_size is not None else -1) if batched else None
        return self._with(_Transform(self._ex_iterable, apply, size))

    def batch(self, batch_size: int, drop_last_batch: bool = False) -> IterableDataset:
        """Each example becomes a batch: a dict of lists of `batch_size` values."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
        ex = _Transform(self._ex_iterable, _batch_apply, batch_size, drop_last_batch)
        features = None
        if self.features is not None:
            features = Features({k: List(v) for k, v in self.features.items()})
        return self._with_features(ex, features)

    def repeat(self, num_times: int | None) -> IterableDataset:
        """The stream `num_times` over; None repeats it forever."""
        if num_times is not None and num_times < 0:
            raise ValueError(f"num_times must be >= 0 or None, got {num_times}.")
        return self._with(_Repeat(self._ex_iterable, num_times))

    def add_column(self, name: str, column: list | np.ndarray) -> IterableDataset:
        """A new column: example i gets `column[i]`."""
        if self.features is not None and name in self.features:
            raise ValueError(f"Column {name!r} already exists in the dataset.")
        return self.map(functools.partial(_add_column, name=name, column=column),
                        with_indices=True)

    def take(self, n: int) -> IterableDataset:
        """The first `n` examples."""
        return self._with(_Take(self._ex_iterable, n))

    def skip(self, n: int) -> IterableDataset:
        """All but the first `n` examples."""
        return self._with(_Skip(self._ex_iterable, n))

    def shuffle(self, seed: int | None = None, generator: np.random.Generator | None = None,
                buffer_size: int = 1000) -> IterableDataset:
        """Shuffle the shard order and draw examples at random from a buffer of `buffer_size`.

        Each epoch (`set_epoch`) gets its own order, derived from `seed`.
        """
        if buffer_size < 1:
            raise ValueError(f"buffer_size must be at least 1, got {buffer_size}.")
        if seed is None:
            rng = generator if generator is not None else np.random.default_rng()
            seed = int(rng.integers(2**63))
        return self._with(_Shuffle(self._ex_iterable, buffer_size, seed), shuffle_seed=seed)

    def shard(self, num_shards: int, index: int, contiguous: bool = True) -> IterableDataset:
        """Part `index` of `num_shards`: whole data shards (files, gen_kwargs entries)."""
        if not 0 <= index < num_shards:
            raise ValueError(f"index must be in [0, {num_shards}), got {index}.")
        return self._with(self._ex_iterable.shard(num_shards, index, contiguous))

    def _check_columns(self, columns: list[str], verb: str) -> None:
        """Unknown columns are an error now when the features are known (else while reading)."""
        if self.features is None:
            return
        missing = [c for c in columns if c not in self.features]
        if missing:
            raise ValueError(f"Column(s) {missing} to {verb} are not in the dataset: its "
                             f"columns are {list(self.features)}.")

    def select_columns(self, column_names: str | list[str]) -> IterableDataset:
        columns = [column_names] if isinstance(column_names, str) else list(column_names)
        self._check_columns(columns, "select")
        ex = _RowFn(self._ex_iterable, functools.partial(_select, columns=columns))
        features = (Features({c: self.features[c] for c in columns})
                    if self.features is not None else None)
        return self._with_features(ex, features)

    def remove_columns(self, column_names: str | list[str]) -> IterableDataset:
        columns = [column_names] if isinstance(column_names, str) else list(column_names)
        self._check_columns(columns, "remove")
        ex = _RowFn(self._ex_iterable, functools.partial(_drop, columns=columns))
        features = (Features({k: v for k, v in self.features.items() if k not in columns})
                    if self.features is not None else None)
        return self._with_features(ex, features)

    def rename_columns(self, column_mapping: dict[str, str]) -> IterableDataset:
        mapping = dict(column_mapping)
        self._check_columns(list(mapping), "rename")
        ex = _RowFn(self._ex_iterable, functools.partial(_rename, mapping=mapping))
        features = (Features({mapping.get(k, k): v for k, v in self.features.items()})
                    if self.features is not None else None)
        return self._with_features(ex, features)

    def rename_column(self, original_column_name: str, new_column_name: str
                      ) -> IterableDataset:
        return self.rename_columns({original_column_name: new_column_name})

    def cast(self, features: Features) -> IterableDataset:
        """Cast every column to `features` (Arrow casts; ClassLabel names become ids)."""
        features = features if isinstance(features, Features) else Features(features)
        if self.features is not None and set(features) != set(self.features):
            raise ValueError(f"cast needs the same columns: the dataset has "
                             f"{list(self.features)}, the features {list(features)}.")
        ex = _RowFn(self._ex_iterable,
                    functools.partial(_cast, features=features, source=self.features))
        return self._with_features(ex, features)

    def cast_column(self, column: str, feature: Any) -> IterableDataset:
        """Cast one column to `feature`."""
        if self.features is None:
            raise ValueError("cast_column needs the dataset's features, which are unknown here "
                             "(e.g. after map without features=): use cast(features) instead.")
        self._check_columns([column], "cast")
        features = self.features.copy()
        features[column] = feature
        return self.cast(features)


class IterableDatasetDict(dict):
    """Streaming splits by name (datasets.IterableDatasetDict); verbs apply to every split."""

    def _apply(self, verb: str, *args: Any, **kwargs: Any) -> IterableDatasetDict:
        return IterableDatasetDict({k: getattr(v, verb)(*args, **kwargs) for k, v in self.items()})

    def __repr__(self) -> str:
        body = ",\n".join(f"    {k}: " + repr(v).replace("\n", "\n    ") for k, v in self.items())
        return f"IterableDatasetDict({{\n{body}\n}})"

    @property
    def column_names(self) -> dict[str, list[str] | None]:
        return {k: v.column_names for k, v in self.items()}

    @property
    def num_shards(self) -> dict[str, int]:
        return {k: v.n_shards for k, v in self.items()}

    @property
    def num_columns(self) -> dict[str, int | None]:
        return {k: v.num_columns for k, v in self.items()}

    def map(self, *args: Any, **kwargs: Any) -> IterableDatasetDict:
        return self._apply("map", *args, **kwargs)

    def filter(self, *args: Any, **kwargs: Any) -> IterableDatasetDict:
        return self._apply("filter", *args, **kwargs)

    def shuffle(self, *args: Any, **kwargs: Any) -> IterableDatasetDict:
        return self._apply("shuffle", *args, **kwargs)

    def with_format(self, type: str | None = None) -> IterableDatasetDict:  # noqa: A002
        return self._apply("with_format", type)

    def select_columns(self, column_names: str | list[str]) -> IterableDatasetDict:
        return self._apply("select_columns", column_names)

    def remove_columns(self, column_names: str | list[str]) -> IterableDatasetDict:
        return self._apply("remove_columns", column_names)

    def rename_column(self, original_column_name: str, new_column_name: str
                      ) -> IterableDatasetDict:
        return self._apply("rename_column", original_column_name, new_column_name)

    def rename_columns(self, column_mapping: dict[str, str]) -> IterableDatasetDict:
        return self._apply("rename_columns", column_mapping)

    def cast(self, features: Features) -> IterableDatasetDict:
        return self._apply("cast", features)

    def cast_column(self, column: str, feature: Any) -> IterableDatasetDict:
        return self._apply("cast_column", column, feature)


# -- combining streams (concatenate_datasets / interleave_datasets dispatch here) ------------


def _combined_features(dsets: list[IterableDataset]) -> Features | None:
    known = [d.features for d in dsets]
    if any(f is None for f in known):
        return None
    for other in known[1:]:
        if other != known[0]:
            raise ValueError(f"The datasets' features differ and cannot be combined: "
                             f"{known[0]} and {other}. Cast them to the same features first.")
    return known[0]


def _epoch_chain(dataset: IterableDataset) -> _ExIterable:
    """A dataset's chain with its own shuffling applied, to be part of a combined stream."""
    seed = dataset._effective_seed()
    return dataset._ex_iterable.reseed(seed) if seed is not None else dataset._ex_iterable


def _check_combinable(dsets: list[IterableDataset]) -> None:
    if not dsets:
        raise ValueError("Need at least one dataset to combine.")
    for d in dsets:
        if not isinstance(d, IterableDataset):
            raise TypeError(f"Cannot combine an IterableDataset with a {type(d).__name__}: "
                            "convert it with to_iterable_dataset() first.")
        if d._distributed is not None:
            raise ValueError("Combine the datasets before split_dataset_by_node, not after.")


def _concatenate_iterable_datasets(dsets: list[IterableDataset], info: DatasetInfo | None = None,
                                   split: str | None = None) -> IterableDataset:
    """`dsets` read one after the other (concatenate_datasets, axis=0)."""
    _check_combinable(dsets)
    info = info.copy() if info is not None else dsets[0].info.copy()
    info.features = _combined_features(dsets)
    ex = _Concatenated([_epoch_chain(d) for d in dsets])
    return IterableDataset(ex, info=info, split=split if split is not None else dsets[0].split)


def _interleave_iterable_datasets(dsets: list[IterableDataset],
                                  probabilities: list[float] | None = None,
                                  seed: int | None = None, info: DatasetInfo | None = None,
                                  split: str | None = None,
                                  stopping_strategy: str = "first_exhausted") -> IterableDataset:
    """Examples from `dsets` in turn, or drawn with `probabilities` (interleave_datasets)."""
    _check_combinable(dsets)
    strategies = ("first_exhausted", "all_exhausted", "all_exhausted_without_replacement")
    if stopping_strategy not in strategies:
        raise ValueError(f"stopping_strategy must be one of {strategies}, got "
                         f"{stopping_strategy!r}.")
    if probabilities is not None:
        if len(probabilities) != len(dsets) or abs(sum(probabilities) - 1) > 1e-6:
            raise ValueError(f"probabilities must have one entry per dataset ({len(dsets)}) "
                             f"and sum to 1, got {probabilities}.")
        if seed is None:
            seed = int(np.random.default_rng().integers(2**63))
    info = info.copy() if info is not None else dsets[0].info.copy()
    info.features = _combined_features(dsets)
    ex = _Interleaved([_epoch_chain(d) for d in dsets], probabilities, seed, stopping_strategy)
    return IterableDataset(ex, info=info, split=split if split is not None else dsets[0].split)
