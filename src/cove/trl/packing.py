"""Packing tokenized examples into rows of at most `seq_length` tokens (trl.pack_dataset).

Strategies, as TRL's:

    bfd        best-fit decreasing: whole examples (cut to seq_length) are placed, longest first,
               in the row with the least room that fits them; a "seq_lengths" column keeps each
               row's example lengths, so training can restart positions and never attend across
               examples (padding-free)
    bfd_split  the same, but an example longer than seq_length is split into pieces of
               seq_length (the last one shorter) instead of cut
    wrapped    every example's tokens end to end, cut every seq_length tokens: no room is
               wasted, but rows hold pieces of examples that see each other

Rows are packed within each `map` batch (1000 examples unless map_kwargs say otherwise).
"""

from __future__ import annotations

import bisect
from collections import defaultdict, deque
from typing import Any

STRATEGIES = ("bfd", "bfd_split", "wrapped")


def _columns(batch: dict[str, list]) -> list[str]:
    names = list(batch)
    for name in names:
        values = batch[name]
        if any(not isinstance(v, list | tuple) for v in values):
            raise TypeError(f"packing needs every column to hold lists (of tokens); {name!r} "
                            "does not: select the token columns first")
    first = [len(v) for v in batch[names[0]]]
    for name in names[1:]:
        if [len(v) for v in batch[name]] != first:
            raise ValueError(f"packing needs the columns' lists to have the same lengths in "
                             f"every row; {name!r} and {names[0]!r} differ")
    return names


def _pieces(batch: dict[str, list], names: list[str], seq_length: int,
            split: bool) -> dict[str, list]:
    """The examples that are not empty, each cut to seq_length, or split into pieces of it."""
    out: dict[str, list] = {name: [] for name in names}
    for i, first in enumerate(batch[names[0]]):
        n = len(first)
        if n == 0:
            continue
        starts = range(0, n, seq_length) if split else (0,)
        for start in starts:
            for name in names:
                out[name].append(list(batch[name][i][start:start + seq_length]))
    return out


def _best_fit_decreasing(lengths: list[int], seq_length: int) -> list[list[int]]:
    """Rows of example indices: longest first (ties in order), each into the row with the
    smallest room that fits it (the earliest such row), else a new row."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])  # sorted() is stable
    rows: list[list[int]] = []
    room_to_rows: dict[int, deque[int]] = defaultdict(deque)  # room left -> rows, oldest first
    rooms: list[int] = []  # the distinct rooms some row has, ascending
    for i in order:
        n = lengths[i]
        at = bisect.bisect_left(rooms, n)
        if at < len(rooms):
            room = rooms[at]
            row = room_to_rows[room].popleft()
            if not room_to_rows[room]:
                rooms.pop(at)
        else:
            room, row = seq_length, len(rows)
            rows.append([])
        rows[row].append(i)
        left = room - n
        if left > 0:
            if not room_to_rows[left]:
                bisect.insort(rooms, left)
            room_to_rows[left].append(row)
    return rows


def _pack_bfd(batch: dict[str, list], seq_length: int, split: bool) -> dict[str, list]:
    names = _columns(batch)
    pieces = _pieces(batch, names, seq_length, split)
    lengths = [len(v) for v in pieces[names[0]]]
    rows = _best_fit_decreasing(lengths, seq_length)
    out: dict[str, list] = {name: [[t for i in row for t in pieces[name][i]] for row in rows]
                            for name in names}
    out["seq_lengths"] = [[lengths[i] for i in row] for row in rows]
    return out


def _pack_wrapped(batch: dict[str, list], seq_length: int) -> dict[str, list]:
    names = _columns(batch)
    out = {}
    for name in names:
        flat = [t for example in batch[name] for t in example]
        out[name] = [flat[i:i + seq_length] for i in range(0, len(flat), seq_length)]
    return out


def pack_dataset(dataset: Any, seq_length: int, strategy: str = "bfd",
                 map_kwargs: dict[str, Any] | None = None) -> Any:
    """`dataset` (a Dataset or DatasetDict whose columns all hold token lists, e.g. input_ids
    and labels) with its examples packed into rows of at most `seq_length` tokens; "bfd" and
    "bfd_split" add a "seq_lengths" column. `map_kwargs` go to `dataset.map`."""
    if strategy not in STRATEGIES:
        raise ValueError(f"Invalid packing strategy {strategy!r}: expected one of "
                         f"{', '.join(STRATEGIES)}")
    if not isinstance(seq_length, int) or seq_length < 1:
        raise ValueError(f"seq_length must be a positive int, got {seq_length!r}")
    if strategy == "wrapped":
        function, fn_kwargs = _pack_wrapped, {"seq_length": seq_length}
    else:
        function = _pack_bfd
        fn_kwargs = {"seq_length": seq_length, "split": strategy == "bfd_split"}
    return dataset.map(function, batched=True, fn_kwargs=fn_kwargs, **(map_kwargs or {}))
