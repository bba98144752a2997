"""Readers for the packaged formats: csv, json, parquet, text and arrow, batch by batch.

`read_batches(kind, file, name=...)` turns one binary file object into Arrow record batches
without ever holding the whole file as Python objects: CSV through pyarrow's streaming reader,
JSON Lines in blocks, JSON arrays element by element, Parquet by row group, text by chunks.
"""

from __future__ import annotations

import bz2
import contextlib
import csv as pycsv
import gzip
import io
import json
import lzma
import os
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from cove.datasets.features import Features, cast_array_to_feature, contains_class_label

KINDS = ("csv", "json", "parquet", "text", "arrow")

# by file name ending (before a compression suffix)
EXTENSIONS = {
    ".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".ndjson": "json",
    ".parquet": "parquet", ".txt": "text", ".text": "text", ".arrow": "arrow",
}

# compressed files are decompressed as they are read (seekable, so every reader works)
COMPRESSIONS: dict[str, Callable[[BinaryIO], BinaryIO]] = {
    ".gz": lambda f: gzip.GzipFile(fileobj=f, mode="rb"), ".bz2": bz2.BZ2File,
    ".xz": lzma.LZMAFile,
}
_DECOMPRESSED = (gzip.GzipFile, bz2.BZ2File, lzma.LZMAFile)

CSV_BLOCK = 1 << 20  # bytes per CSV block; types are inferred from the first one
JSON_CHUNK = 4 << 20  # bytes per JSON Lines block (datasets reads 10 MB; less memory)
TEXT_CHUNK = 10 << 20  # characters per text chunk
ARRAY_ROWS = 10_000  # JSON array elements per batch


def _base_name(filename: str) -> str:
    """The lower-case file name without a URL query or a compression suffix."""
    base = os.path.basename(filename.split("?", 1)[0]).lower()
    ext = os.path.splitext(base)[1]
    return base[:-len(ext)] if ext in COMPRESSIONS else base


def infer_kind(filename: str) -> str | None:
    """The packaged kind for a file name by its extension (".tsv" is csv, "x.csv.gz" csv),
    or None."""
    base = _base_name(filename)
    for ext, kind in EXTENSIONS.items():
        if base.endswith(ext):
            return kind
    return None


def default_options(filename: str) -> dict[str, Any]:
    """Reader options implied by the file name: a ".tsv" file is tab-separated."""
    return {"sep": "\t"} if _base_name(filename).endswith(".tsv") else {}


def read_batches(kind: str, file: BinaryIO, *, name: str, features: Features | None = None,
                 **reader_kwargs: Any) -> Iterator[pa.RecordBatch]:
    """Record batches of `file` read as `kind`, cast to `features` when given.

    `name` (the path or URL) names the file in errors. Reader options follow datasets'
    builder configs: csv `sep`/`delimiter`, `header`, `names`/`column_names`, `skiprows`,
    `quotechar`, `escapechar`, `encoding`, `usecols`, `na_values`, ...; json `field`,
    `encoding`, `chunksize`; parquet `columns`, `filters`, `batch_size`; text `sample_by`,
    `keep_linebreaks`, `encoding`, `chunksize`.
    """
    reader = _READERS.get(kind)
    if reader is None:
        raise ValueError(f"Unknown data file format {kind!r}: use one of {', '.join(KINDS)}.")
    decompress = COMPRESSIONS.get(os.path.splitext(name.split("?", 1)[0].lower())[1])
    with decompress(file) if decompress else contextlib.nullcontext(file) as source:
        try:
            for batch in reader(source, name, features, **reader_kwargs):
                yield cast_batch(batch, features, name) if features is not None else batch
        except (EOFError, lzma.LZMAError, OSError) as e:
            # bad data: BadGzipFile, EOFError (truncated), LZMAError, or bz2's plain OSError;
            # other OSErrors (HTTP, disk) pass through as they are
            bad = isinstance(e, (EOFError, lzma.LZMAError, gzip.BadGzipFile)) or type(e) is OSError
            if decompress is None or not bad:
                raise
            raise ValueError(f"Couldn't decompress {name}: {e}") from None


@contextlib.contextmanager
def _text(file: BinaryIO, encoding: str, **kwargs: Any) -> Iterator[io.TextIOWrapper]:
    """`file` decoded as text, handed back undetached (closing the wrapper would close it)."""
    text = io.TextIOWrapper(file, encoding=encoding, **kwargs)
    try:
        yield text
    finally:
        text.detach()


# -- casting --------------------------------------------------------------------------------


def cast_batch(batch: pa.RecordBatch, features: Features, name: str) -> pa.RecordBatch:
    """`batch` with the columns, order and types of `features` (ClassLabel names to ids)."""
    schema = features.arrow_schema
    have = set(batch.schema.names)
    if have != set(schema.names):
        raise ValueError(
            f"Couldn't cast the data of {name} to the given features: the file has columns "
            f"{sorted(have)} but the features have {sorted(schema.names)}."
        )
    arrays = [cast_array_to_feature(batch.column(field.name), features[field.name], field.name,
                                    name) for field in schema]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _unknown_options(kind: str, options: dict, allowed: Any) -> None:
    extra = sorted(set(options) - set(allowed))
    if extra:
        raise TypeError(f"Unknown {kind} reader option(s) {', '.join(extra)}: the {kind} reader "
                        f"takes {', '.join(sorted(allowed))}.")


# -- csv ------------------------------------------------------------------------------------

_CSV_OPTIONS = {
    "sep", "delimiter", "header", "names", "column_names", "skiprows", "quotechar", "quoting",
    "doublequote", "escapechar", "encoding", "usecols", "na_values", "keep_default_na",
    "true_values", "false_values", "skip_blank_lines", "block_size",
}
_DATE_TYPES = (pa.types.is_date, pa.types.is_time, pa.types.is_timestamp)


def _read_csv(file: BinaryIO, name: str, features: Features | None,
              **options: Any) -> Iterator[pa.RecordBatch]:
    _unknown_options("csv", options, _CSV_OPTIONS)
    sep = options.get("delimiter") or options.get("sep", ",")
    names = options.get("column_names") or options.get("names")
    header = options.get("header", "infer")
    if header not in ("infer", 0, None):
        raise ValueError(f"header={header!r} is not supported for csv: use 'infer', 0 or None.")
    skiprows = options.get("skiprows") or 0
    if not isinstance(skiprows, int):
        raise ValueError("skiprows must be a number of lines for csv (a list is not supported).")
    if names and header == 0:  # the header row is there but replaced by `names`
        skiprows += 1
    quoting = options.get("quoting", 0)
    read = pa_csv.ReadOptions(
        skip_rows=skiprows, column_names=list(names) if names else None,
        autogenerate_column_names=header is None and not names,
        encoding=options.get("encoding") or "utf8",
        block_size=options.get("block_size", CSV_BLOCK),
    )
    parse = pa_csv.ParseOptions(
        delimiter=sep, quote_char=False if quoting == 3 else options.get("quotechar", '"'),
        double_quote=options.get("doublequote", True),
        escape_char=options.get("escapechar") or False, newlines_in_values=True,
        ignore_empty_lines=options.get("skip_blank_lines", True),
    )
    convert_kwargs: dict[str, Any] = {"strings_can_be_null": True}
    if "na_values" in options or options.get("keep_default_na") is False:
        extra = options.get("na_values") or []
        extra = [extra] if isinstance(extra, str) else list(extra)
        default = pa_csv.ConvertOptions().null_values
        convert_kwargs["null_values"] = (
            extra + (default if options.get("keep_default_na", True) else []))
    for key in ("true_values", "false_values"):
        if options.get(key):
            convert_kwargs[key] = list(options[key])
    usecols = options.get("usecols")
    if usecols is not None:
        if not all(isinstance(c, str) for c in usecols):
            raise ValueError("usecols must be column names for csv (positions are not supported).")
        convert_kwargs["include_columns"] = list(usecols)
    if features is not None:  # the features decide the types; ClassLabel columns stay text
        convert_kwargs["column_types"] = {
            f.name: pa.string() if contains_class_label(features[f.name]) else f.type
            for f in features.arrow_schema
        }
    start = file.tell()
    size = None  # unknown for a compressed file: finding it would decompress it all
    if not isinstance(file, _DECOMPRESSED):
        size = file.seek(0, io.SEEK_END) - start
        file.seek(start)
    reader = _open_csv(file, name, read, parse, pa_csv.ConvertOptions(**convert_kwargs))
    # Like pandas, dates and times stay text and an empty column is float64 (NaN); but an
    # empty column in the first block of a bigger file is text: later blocks may hold anything.
    retype = {}
    for f in reader.schema:
        if f.name in convert_kwargs.get("column_types", {}):
            continue
        if any(test(f.type) for test in _DATE_TYPES):
            retype[f.name] = pa.string()
        elif pa.types.is_null(f.type):
            one_block = size is not None and size <= read.block_size
            retype[f.name] = pa.float64() if one_block else pa.string()
    if retype:
        file.seek(start)
        convert_kwargs["column_types"] = {**convert_kwargs.get("column_types", {}), **retype}
        reader = _open_csv(file, name, read, parse, pa_csv.ConvertOptions(**convert_kwargs))
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except pa.ArrowInvalid as e:
            file.seek(start)
            raise _csv_error(e, file, name, sep, parse.quote_char, skiprows, read.encoding) \
                from None
        yield batch


def _open_csv(file: BinaryIO, name: str, read, parse, convert) -> pa_csv.CSVStreamingReader:
    try:
        return pa_csv.open_csv(file, read_options=read, parse_options=parse,
                               convert_options=convert)
    except pa.ArrowInvalid as e:
        if "Empty CSV file" in str(e):
            raise ValueError(f"{name} is an empty CSV file (no header row).") from None
        file.seek(0)
        raise _csv_error(e, file, name, parse.delimiter, parse.quote_char, read.skip_rows,
                         read.encoding) from None


def _csv_error(error: Exception, file: BinaryIO, name: str, sep: str, quote: Any,
               skiprows: int, encoding: str) -> ValueError:
    """A ValueError for a bad CSV, naming the first line whose field count is wrong.

    pyarrow's streaming reader does not know line numbers, so on this error path the file is
    scanned again with Python's csv module (streaming, one row at a time).
    """
    with _text(file, encoding, newline="") as text:
        for _ in range(skiprows):
            text.readline()
        rows = pycsv.reader(text, delimiter=sep, quotechar=quote or '"',
                            quoting=pycsv.QUOTE_NONE if quote is False else pycsv.QUOTE_MINIMAL)
        expected = None
        for row in rows:
            if not row:
                continue
            if expected is None:
                expected = len(row)
            elif len(row) != expected:
                line = rows.line_num + skiprows
                return ValueError(f"Malformed CSV in {name} at line {line}: expected "
                                  f"{expected} fields, got {len(row)}: {sep.join(row)[:200]!r}")
    message = str(error)
    if "conversion error" in message:
        return ValueError(f"Couldn't read {name}: {message}. Column types are inferred from the "
                          f"first block of the file; pass features= to set them.")
    return ValueError(f"Malformed CSV in {name}: {message}")


# -- json -----------------------------------------------------------------------------------

_JSON_OPTIONS = {"field", "encoding", "chunksize"}


def _read_json(file: BinaryIO, name: str, features: Features | None,
               **options: Any) -> Iterator[pa.RecordBatch]:
    _unknown_options("json", options, _JSON_OPTIONS)
    encoding = options.get("encoding") or "utf-8"
    chunksize = options.get("chunksize") or JSON_CHUNK
    if options.get("field") is not None:
        yield from _json_field(file, name, options["field"], encoding)
        return
    start = file.tell()
    head = file.read(64)
    file.seek(start)
    first = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if first == b"[":
        blocks = _array_as_lines(file, name, encoding)
    else:
        blocks = _line_blocks(file, encoding, chunksize)
    schema = labels = None
    if features is not None:
        # columns holding ClassLabels are parsed as whatever they hold (names or ids) and
        # encoded by cast_batch; the others are parsed straight to their type
        labels = [name for name, feature in features.items() if contains_class_label(feature)]
        schema = pa.schema([f for f in features.arrow_schema if f.name not in labels])
    line = 1
    for block in blocks:
        try:
            table = _parse_json_block(block, schema)
        except pa.ArrowInvalid as e:
            if line == 1 and first == b"{":  # maybe one JSON object of columns, not JSON Lines
                file.seek(start)
                whole = _whole_object(file, encoding)
                if whole is not None:
                    yield from _columns_table(whole, name).to_batches()
                    return
            raise _json_line_error(block, line, name, e) from None
        if labels is not None:  # a field no line has is null, as with the explicit schema
            for column in labels:
                if column not in table.column_names:
                    table = table.append_column(column, pa.nulls(table.num_rows))
        elif schema is None:
            schema = table.schema
        elif table.schema != schema:
            new = sorted(set(table.schema.names) - set(schema.names))
            if new:
                raise ValueError(f"{name} has fields {new} after line {line} that earlier lines "
                                 f"lack: pass features= listing every field.")
            table = table.select(schema.names).cast(schema)
        line += block.count(b"\n")
        yield from table.to_batches()


def _parse_json_block(block: bytes, schema: pa.Schema | None) -> pa.Table:
    parse = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="infer",
                                 newlines_in_values=False)
    read = pa_json.ReadOptions(use_threads=False, block_size=max(len(block), 1 << 16) + 1)
    return pa_json.read_json(io.BytesIO(block), read_options=read, parse_options=parse)


def _line_blocks(file: BinaryIO, encoding: str, chunksize: int) -> Iterator[bytes]:
    """Blocks of whole lines, re-encoded to UTF-8 (pyarrow reads only UTF-8)."""
    first = True
    while True:
        block = file.read(chunksize)
        if not block:
            return
        block += file.readline()
        if first and block.startswith(b"\xef\xbb\xbf"):
            block = block[3:]
        first = False
        if encoding.replace("_", "-").lower() not in ("utf-8", "utf8"):
            block = block.decode(encoding).encode()
        if block.strip():
            yield block


def _array_as_lines(file: BinaryIO, name: str, encoding: str) -> Iterator[bytes]:
    """A JSON array's elements, decoded one at a time, as blocks of JSON Lines.

    Objects pass through; other elements (strings, numbers) become {"text": element} rows.
    """
    with _text(file, encoding) as text:
        yield from _array_elements(text, name)


def _array_elements(text: io.TextIOWrapper, name: str) -> Iterator[bytes]:
    decoder = json.JSONDecoder()
    buf = text.read(1 << 20).lstrip("\ufeff \t\r\n")
    pos, line = 1, 1  # after the "["
    lines: list[str] = []
    eof = False
    while True:
        while pos < len(buf) and buf[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(buf) or (not eof and len(buf) - pos < 1 << 16):
            more = "" if eof else text.read(1 << 20)
            eof = eof or not more
            line += buf.count("\n", 0, pos)
            buf, pos = buf[pos:] + more, 0
            if not buf:
                raise ValueError(f"Malformed JSON in {name} near line {line}: the array is not "
                                 f"closed with ']'.")
            continue
        if buf[pos] == "]":
            break
        try:
            value, end = decoder.raw_decode(buf, pos)
        except json.JSONDecodeError as e:
            if not eof:  # the element may continue past the buffer
                more = text.read(1 << 20)
                eof = not more
                buf += more
                continue
            at = line + buf.count("\n", 0, e.pos)
            raise ValueError(f"Malformed JSON in {name} at line {at}: {e.msg}.") from None
        lines.append(json.dumps(value if isinstance(value, dict) else {"text": value}))
        pos = end
        if len(lines) >= ARRAY_ROWS:
            yield "\n".join(lines).encode()
            lines = []
    if lines:
        yield "\n".join(lines).encode()


def _whole_object(file: BinaryIO, encoding: str) -> dict | None:
    try:
        with _text(file, encoding) as text:
            value = json.load(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _json_field(file: BinaryIO, name: str, field: str, encoding: str) -> Iterator[pa.RecordBatch]:
    """`field` of a file holding one JSON object: a list of rows or a dict of columns."""
    try:
        with _text(file, encoding) as text:
            data = json.load(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"Malformed JSON in {name} at line {e.lineno}: {e.msg}.") from None
    if not isinstance(data, dict) or field not in data:
        keys = sorted(data) if isinstance(data, dict) else []
        raise ValueError(f"{name} has no field {field!r}: its top-level fields are {keys}.")
    value = data[field]
    if isinstance(value, list):
        rows = [row if isinstance(row, dict) else {"text": row} for row in value]
        block = "\n".join(json.dumps(row) for row in rows).encode()
        if not block:
            return
        try:
            yield from _parse_json_block(block, None).to_batches()
        except pa.ArrowInvalid as e:
            raise ValueError(f"Couldn't read field {field!r} of {name}: {e}") from None
    elif isinstance(value, dict):
        yield from _columns_table(value, name).to_batches()
    else:
        raise ValueError(f"Field {field!r} of {name} is a {type(value).__name__}: it must be a "
                         f"list of rows or an object of columns.")


def _columns_table(columns: dict, name: str) -> pa.Table:
    try:
        return pa.table(columns)
    except (pa.ArrowInvalid, TypeError, ValueError) as e:
        raise ValueError(f"{name} holds one JSON object, not JSON Lines, and its values are "
                         f"not columns of equal length: {e}") from None


def _json_line_error(block: bytes, first_line: int, name: str, error: Exception) -> ValueError:
    for n, raw in enumerate(block.split(b"\n")):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return ValueError(f"Malformed JSON in {name} at line {first_line + n}: {e}: "
                              f"{raw[:200].decode(errors='replace')!r}")
        if not isinstance(value, dict):
            return ValueError(f"Malformed JSON Lines in {name} at line {first_line + n}: each "
                              f"line must be an object, got {raw[:200].decode(errors='replace')!r}")
    return ValueError(f"Couldn't read {name} from line {first_line}: {error}. Field types are "
                      f"inferred from the first block of the file; pass features= to set them.")


# -- parquet --------------------------------------------------------------------------------

_PARQUET_OPTIONS = {"columns", "filters", "batch_size"}


def _read_parquet(file: BinaryIO, name: str, features: Features | None,
                  **options: Any) -> Iterator[pa.RecordBatch]:
    _unknown_options("parquet", options, _PARQUET_OPTIONS)
    try:
        pf = pq.ParquetFile(file)
    except pa.ArrowInvalid as e:
        raise ValueError(f"{name} is not a Parquet file: {e}") from None
    columns = options.get("columns")
    if columns is None and features is not None:
        columns = list(features)
    filters = options.get("filters")
    expression = pq.filters_to_expression(filters) if filters is not None else None
    for batch in pf.iter_batches(batch_size=options.get("batch_size") or 10_000,
                                 columns=columns, use_threads=False):
        if expression is not None:
            table = pa.Table.from_batches([batch]).filter(expression)
            yield from table.to_batches()
        else:
            yield batch


# -- text -----------------------------------------------------------------------------------

_TEXT_OPTIONS = {"sample_by", "keep_linebreaks", "encoding", "encoding_errors", "chunksize"}


def _read_text(file: BinaryIO, name: str, features: Features | None,
               **options: Any) -> Iterator[pa.RecordBatch]:
    _unknown_options("text", options, _TEXT_OPTIONS)
    sample_by = options.get("sample_by", "line")
    if sample_by not in ("line", "paragraph", "document"):
        raise ValueError(f"sample_by={sample_by!r}: use 'line', 'paragraph' or 'document'.")
    column = list(features)[0] if features is not None else "text"
    keep = options.get("keep_linebreaks", False)
    chunksize = options.get("chunksize") or TEXT_CHUNK
    encoding = options.get("encoding") or "utf-8"

    def table(values: list[str]) -> pa.RecordBatch:
        return pa.RecordBatch.from_arrays([pa.array(values, pa.string())], names=[column])

    # universal newlines: "\r\n" and "\r" read as "\n", as datasets reads text files
    with _text(file, encoding, errors=options.get("encoding_errors") or "strict") as text:
        try:
            yield from _text_rows(text, sample_by, keep, chunksize, table)
        except UnicodeDecodeError as e:
            raise ValueError(f"{name} is not valid {encoding} text: {e}") from None


def _text_rows(text: io.TextIOWrapper, sample_by: str, keep: bool, chunksize: int,
               table: Callable[[list[str]], pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Rows of text: one per line, per paragraph (blank-line separated) or per document."""
    if sample_by == "document":
        yield table([text.read()])
    elif sample_by == "line":
        while chunk := text.read(chunksize):
            chunk += text.readline()
            lines = chunk.split("\n")  # only "\n" ends a line, as in datasets
            tail = lines.pop()  # after the last newline: a last line without one, or ""
            if keep:
                lines = [line + "\n" for line in lines]
            yield table(lines + [tail] if tail else lines)
    else:
        rest = ""
        while chunk := text.read(chunksize):
            parts = (rest + chunk + text.readline()).split("\n\n")
            rest = parts.pop()
            if kept := [p for p in parts if p]:
                yield table(kept)
        if rest:
            yield table([rest])


# -- arrow ----------------------------------------------------------------------------------


def _read_arrow(file: BinaryIO, name: str, features: Features | None,
                **options: Any) -> Iterator[pa.RecordBatch]:
    _unknown_options("arrow", options, ())
    start = file.tell()
    magic = file.read(6)
    file.seek(start)
    try:
        if magic == b"ARROW1":  # the IPC file format; datasets' own files are streams
            reader = pa.ipc.open_file(file)
            for i in range(reader.num_record_batches):
                yield reader.get_batch(i)
        else:
            yield from pa.ipc.open_stream(file)
    except pa.ArrowInvalid as e:
        raise ValueError(f"{name} is not an Arrow IPC stream or file: {e}") from None


_READERS: dict[str, Callable[..., Iterator[pa.RecordBatch]]] = {
    "csv": _read_csv, "json": _read_json, "parquet": _read_parquet, "text": _read_text,
    "arrow": _read_arrow,
}
