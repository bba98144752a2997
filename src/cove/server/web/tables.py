"""The dataset viewer's reading side: which files make which split, and one page of rows.

Never a whole file: Parquet reads only the row groups a page covers (its footer gives the row
count), CSV, JSON Lines and Arrow streams are read batch by batch up to the page's end.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.ipc as pa_ipc
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from cove.server.gitrepo import Entry

PAGE_ROWS = 100
CELL_CHARS = 300
FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "json",
           ".json": "json", ".arrow": "arrow"}
# The split names the Hub recognises in file and folder names, and what they mean.
SPLIT_WORDS = {
    "train": "train", "training": "train",
    "validation": "validation", "valid": "validation", "val": "validation", "dev": "validation",
    "test": "test", "testing": "test", "eval": "test", "evaluation": "test",
}
_WORDS = re.compile(r"[^a-z0-9]+")


def file_format(path: str) -> str | None:
    return next((f for suffix, f in FORMATS.items() if path.lower().endswith(suffix)), None)


def splits(files: list[Entry]) -> dict[str, list[Entry]]:
    """Data files by split, as the Hub infers them from names (`data/train-00000.parquet`,
    `test.csv`, `validation/x.jsonl`); files naming no split are `train`."""
    out: dict[str, list[Entry]] = {}
    for e in files:
        if file_format(e.path) is None or e.path.rsplit("/", 1)[-1].startswith("."):
            continue
        words = _WORDS.split(e.path.lower().rsplit(".", 1)[0])
        split = next((SPLIT_WORDS[w] for w in words if w in SPLIT_WORDS), "train")
        out.setdefault(split, []).append(e)
    order = ["train", "validation", "test"]
    return dict(sorted(out.items(), key=lambda kv: order.index(kv[0])))


@dataclass
class Page:
    columns: list[tuple[str, str]]  # (name, Arrow type)
    rows: list[list[str]]
    offset: int
    total: int | None  # known for Parquet and Arrow files; None for text formats
    has_more: bool


def _cell(value: Any) -> str:
    if value is None:
        return ""
    text = value.hex() if isinstance(value, bytes) else str(value)
    return text if len(text) <= CELL_CHARS else text[:CELL_CHARS] + "…"


def _page(schema: pa.Schema, table: pa.Table, offset: int, total: int | None,
          has_more: bool) -> Page:
    columns = [(f.name, str(f.type)) for f in schema]
    rows = [[_cell(r[name]) for name, _ in columns] for r in table.to_pylist()]
    return Page(columns, rows, offset, total, has_more)


def read_page(source: BinaryIO, fmt: str, offset: int, limit: int = PAGE_ROWS) -> Page:
    """Rows [offset, offset+limit) of a data file open for reading."""
    if fmt == "parquet":
        pf = pq.ParquetFile(source)
        meta = pf.metadata
        groups, start, seen = [], None, 0
        for i in range(meta.num_row_groups):
            n = meta.row_group(i).num_rows
            if seen + n > offset and seen < offset + limit:
                groups.append(i)
                start = seen if start is None else start
            seen += n
        schema = pf.schema_arrow
        table = pf.read_row_groups(groups) if groups else schema.empty_table()
        table = table.slice(offset - (start or 0), limit)
        return _page(schema, table, offset, meta.num_rows, offset + limit < meta.num_rows)
    if fmt == "arrow":
        return _streamed_page(_arrow_batches(source), offset, limit)
    if fmt in ("csv", "tsv"):
        parse = pa_csv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",")
        return _streamed_page(pa_csv.open_csv(source, parse_options=parse), offset, limit)
    return _streamed_page(pa_json.open_json(source), offset, limit)


def _arrow_batches(source: BinaryIO):
    """An Arrow IPC file (random access) or stream (what `datasets` writes) as a reader."""
    try:
        f = pa_ipc.open_file(source)
    except pa.ArrowInvalid:
        source.seek(0)
        return pa_ipc.open_stream(source)
    return pa.RecordBatchReader.from_batches(f.schema, (f.get_batch(i)
                                                        for i in range(f.num_record_batches)))


def _streamed_page(reader, offset: int, limit: int) -> Page:
    """Skip batches up to `offset`, keep `limit` rows, and look one row further."""
    schema = reader.schema
    kept: list[pa.RecordBatch] = []
    seen = 0
    for batch in _batches(reader):
        end = seen + batch.num_rows
        if end > offset:
            kept.append(batch.slice(max(offset - seen, 0)))
        seen = end
        if seen > offset + limit:
            break
    table = pa.Table.from_batches(kept, schema=schema)
    return _page(schema, table.slice(0, limit), offset, None, table.num_rows > limit)


def _batches(reader) -> Iterator[pa.RecordBatch]:
    while True:
        try:
            yield reader.read_next_batch()
        except StopIteration:
            return
