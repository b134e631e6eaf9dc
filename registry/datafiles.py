"""Read the dataset formats ftserve accepts, row by row and under caps, with errors a user can act on.

One reader for the upload (API: rows → a stored profile) and for training (worker: rows → a list), so both
see the same rows. Nothing reads a whole file into one string: CSV, JSONL and text are read line by line, a
.json list item by item, and Parquet batch by batch after its metadata has been checked against the caps.
"""

from __future__ import annotations

import codecs
import csv
import itertools
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.errors import ValidationFailed, scrub_paths

if TYPE_CHECKING:
    import pyarrow as pa

    from core.settings import Settings

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".txt": "txt"}

# Caps that are not settings: each bounds what one row or one value may cost, whatever the file's size.
MAX_JSON_DEPTH = 32          # nested objects/lists in one JSON value (a row of a .jsonl or .json file, a body)
MAX_INT_DIGITS = 100         # digits of one JSON integer (int() of a long digit string is quadratic)
MAX_ROW_BYTES = 32 * 1024 * 1024  # one CSV/JSONL line, one .json item, one .txt document
MAX_COLUMNS = 1000
MAX_COLUMN_NAME = 256  # characters
PREVIEW_ROWS = 5
PREVIEW_BYTES = 64 * 1024    # the preview's JSON, whatever its cells hold
PREVIEW_CELL_CHARS = 1000    # a longer string cell is cut (then shorter still if the preview is over its bytes)
MAX_DISTINCT = 1000          # value counts are kept for a column with at most this many distinct values …
MAX_COUNTED_CHARS = 256      # … each a number, a boolean or a string of at most this many characters,
VALUE_COUNT_CHARS = 1024 * 1024  # … while all the counted strings of the dataset stay under this many characters.
# A Parquet column chunk is decompressed a page at a time, and one page may be as large as the whole chunk: a
# chunk this large that also expands more than this many times its stored size is refused as a decompression
# bomb (text compresses 3-10x; a 14 KB file of a few long repeated strings expands 30,000x).
BOMB_CHUNK_BYTES = 16 * 1024 * 1024
MAX_EXPANSION = 1000
PROFILE_VERSION = 1
_READ_CHUNK = 1024 * 1024
_BATCH_BYTES = 8 * 1024 * 1024  # Parquet rows are turned into Python objects this many decoded bytes at a time
_MAX_BATCH_ROWS = 4096


class DataFileError(ValidationFailed):
    """The file itself cannot be read as its format under the caps (422 at upload; a changed file later)."""


@dataclass(frozen=True)
class Limits:
    max_rows: int
    max_uncompressed_bytes: int

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Limits:
        from core.settings import get_settings

        s = settings or get_settings()
        return cls(max_rows=s.max_dataset_rows, max_uncompressed_bytes=s.max_dataset_uncompressed_bytes)


@dataclass(frozen=True)
class Table:
    columns: list[str]
    rows: list[dict[str, Any]]


def format_for(file_name: str) -> str:
    suffix = Path(file_name).suffix.lower()
    fmt = FORMATS.get(suffix)
    if fmt is None:
        allowed = ", ".join(FORMATS)
        raise ValidationFailed(f"unsupported file type '{suffix or file_name}'; use one of: {allowed}")
    return fmt


# -- bounded JSON ----------------------------------------------------------------------------------------------

class JsonBoundsError(ValueError):
    """A JSON value nested too deeply or holding too long an integer (the message says which)."""


def _bounded_int(text: str) -> int:
    digits = len(text) - text.startswith("-")
    if digits > MAX_INT_DIGITS:
        raise JsonBoundsError(f"an integer with {digits} digits; at most {MAX_INT_DIGITS} are allowed")
    return int(text)


_DECODER = json.JSONDecoder(parse_int=_bounded_int)
_TOO_DEEP = f"JSON nested deeper than {MAX_JSON_DEPTH} levels"


def _check_depth(value: Any) -> None:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        if depth > MAX_JSON_DEPTH:
            raise JsonBoundsError(_TOO_DEEP)
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def _checked(value: Any, brackets: int) -> Any:
    # Counting the brackets of the text (in C) clears almost every value without walking it.
    if isinstance(value, (dict, list)) and brackets > MAX_JSON_DEPTH:
        _check_depth(value)
    return value


def loads_bounded(text: str) -> Any:
    """json.loads, with nesting depth and integer size capped (JsonBoundsError), never a RecursionError."""
    try:
        return _checked(_DECODER.decode(text), text.count("[") + text.count("{"))
    except RecursionError:
        raise JsonBoundsError(_TOO_DEEP) from None


def json_needs_bounds_check(body: bytes) -> bool:
    """False when a JSON text cannot break the bounds: few brackets and no long run of digits (a cheap scan)."""
    return body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH or _LONG_DIGITS.search(body) is not None


_LONG_DIGITS = re.compile(rb"\d{%d}" % (MAX_INT_DIGITS + 1))


# -- text input ------------------------------------------------------------------------------------------------

def _not_utf8(byte: int, line: int) -> DataFileError:
    return DataFileError(f"file is not valid UTF-8 (byte {byte}, line {line}); re-save it as UTF-8")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, decoded line with its line ending), one line in memory at a time."""
    offset = 0
    with path.open("rb") as f:
        for number in itertools.count(1):
            raw = f.readline(MAX_ROW_BYTES + 1)
            if not raw:
                return
            if len(raw) > MAX_ROW_BYTES:
                raise DataFileError(f"line {number} is longer than {MAX_ROW_BYTES} bytes")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _not_utf8(offset + exc.start, number) from exc
            offset += len(raw)
            yield number, text.removeprefix("\ufeff") if number == 1 else text


def _csv_rows(path: Path) -> Iterator[dict[str, Any]]:
    reader = csv.reader(text for _, text in _lines(path))
    try:
        header = next(reader)
    except StopIteration:
        raise DataFileError("file is empty: expected a header line and at least one row") from None
    except csv.Error as exc:
        raise DataFileError(f"malformed CSV header: {exc}") from exc
    header = [h.strip() for h in header]
    long = next((h for h in header if len(h) > MAX_COLUMN_NAME), None)
    if long is not None:
        raise DataFileError(f"a column name is {len(long)} characters ({long[:40]!r}…); at most {MAX_COLUMN_NAME} "
                            "are allowed")
    if not any(header):
        raise DataFileError("CSV header is empty: the first line must name the columns")
    if len(set(header)) != len(header):
        raise DataFileError(f"CSV header has duplicate column names: {', '.join(header)}")
    if len(header) > MAX_COLUMNS:
        raise DataFileError(f"{len(header)} columns; at most {MAX_COLUMNS} are allowed")
    try:
        for record in reader:
            if not record:
                continue  # blank line
            if len(record) != len(header):
                raise DataFileError(
                    f"line {reader.line_num}: {len(record)} fields, expected {len(header)} ({', '.join(header)})"
                )
            yield dict(zip(header, record, strict=True))
    except csv.Error as exc:
        raise DataFileError(f"line {reader.line_num}: malformed CSV: {exc}") from exc


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DataFileError(f"{where}: expected a JSON object, got {type(value).__name__}")
    return value


def _jsonl_rows(path: Path) -> Iterator[dict[str, Any]]:
    for number, line in _lines(path):
        if not line or line.isspace():
            continue
        try:
            obj = loads_bounded(line)
        except json.JSONDecodeError as exc:
            raise DataFileError(f"line {number}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
        except JsonBoundsError as exc:
            raise DataFileError(f"line {number}: {exc}") from exc
        yield _object(obj, f"line {number}")


def _decoded_chunks(path: Path) -> Iterator[str]:
    """The file as UTF-8 text in chunks; a bad byte is reported with its offset and line."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = newlines = 0
    with path.open("rb") as f:
        first = True
        while True:
            raw = f.read(_READ_CHUNK)
            pending = decoder.getstate()[0]
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as exc:
                seen = (pending + raw)[: exc.start]
                raise _not_utf8(offset - len(pending) + exc.start, newlines + seen.count(b"\n") + 1) from exc
            if first:
                text = text.removeprefix("\ufeff")
                first = False
            if text:
                yield text
            if not raw:
                return
            offset += len(raw)
            newlines += raw.count(b"\n")


_WS = re.compile(r"[ \t\n\r]*")


class _JsonList:
    """Items of a top-level JSON list, decoded one at a time from a sliding window of the text."""

    def __init__(self, chunks: Iterator[str]) -> None:
        self.chunks = chunks
        self.buf = ""
        self.pos = 0
        self.line = 1  # the line number at buf[0]
        self.eof = False

    def _more(self) -> bool:
        self.line += self.buf.count("\n", 0, self.pos)
        self.buf, self.pos = self.buf[self.pos:], 0
        chunk = next(self.chunks, None)
        if chunk is None:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def _peek(self) -> str:
        """The next non-blank character ('' at the end of the file)."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buf) or not self._more():
                return self.buf[self.pos:self.pos + 1]

    def _line_at(self, pos: int) -> int:
        return self.line + self.buf.count("\n", 0, pos)

    def _decode(self, index: int) -> Any:
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                # An item cut by the window's end is read again with more text; any other error is the file's.
                cut = exc.pos >= len(self.buf) - 16 or exc.msg.startswith("Unterminated string")
                if cut and not self.eof and len(self.buf) - self.pos <= MAX_ROW_BYTES:
                    want = 2 * (len(self.buf) - self.pos)  # doubling: a long item costs O(n log n), not O(n²)
                    while len(self.buf) - self.pos < want and self._more():
                        pass
                    continue
                if cut and not self.eof:
                    raise DataFileError(
                        f"item {index} (line {self._line_at(self.pos)}) is larger than {MAX_ROW_BYTES} bytes or "
                        "not closed") from exc
                raise DataFileError(
                    f"item {index}: invalid JSON at line {self.line + exc.lineno - 1}: {exc.msg}") from exc
            except JsonBoundsError as exc:
                raise DataFileError(f"item {index} (line {self._line_at(self.pos)}): {exc}") from exc
            except RecursionError:
                raise DataFileError(f"item {index} (line {self._line_at(self.pos)}): {_TOO_DEEP}") from None
            try:
                _checked(value, self.buf.count("[", self.pos, end) + self.buf.count("{", self.pos, end))
            except JsonBoundsError as exc:
                raise DataFileError(f"item {index} (line {self._line_at(self.pos)}): {exc}") from exc
            where = f"item {index} (line {self._line_at(self.pos)})"
            self.pos = end
            return _object(value, where)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._peek() != "[":
            raise DataFileError("a .json dataset must be a list of objects")
        self.pos += 1
        index = 0
        if self._peek() == "]":
            self.pos += 1
        else:
            while True:
                index += 1
                yield self._decode(index)
                nxt = self._peek()
                self.pos += 1
                if nxt == "]":
                    break
                if nxt != ",":
                    raise DataFileError(f"item {index}: expected ',' or ']' after it (line {self._line_at(self.pos)})")
                self._peek()
        if self._peek():
            raise DataFileError(f"unexpected text after the list (line {self._line_at(self.pos)})")


def _json_rows(path: Path) -> Iterator[dict[str, Any]]:
    return iter(_JsonList(_decoded_chunks(path)))


def _txt_rows(path: Path) -> Iterator[dict[str, Any]]:
    """One row per document; documents are separated by an empty line."""
    doc: list[str] = []
    size = 0
    for number, line in _lines(path):
        text = line.replace("\r\n", "\n")
        if text == "\n":
            joined = "".join(doc).strip("\n")
            if joined.strip():
                yield {"text": joined}
            doc, size = [], 0
            continue
        doc.append(text)
        size += len(text)
        if size > MAX_ROW_BYTES:
            raise DataFileError(f"the document ending at line {number} is longer than {MAX_ROW_BYTES} characters")
    joined = "".join(doc).strip("\n")
    if joined.strip():
        yield {"text": joined}


# -- Parquet ---------------------------------------------------------------------------------------------------

def _type_depth(type_: pa.DataType) -> int:
    return 1 + max((_type_depth(type_.field(i).type) for i in range(type_.num_fields)), default=0)


def _decoded_bytes(array: pa.Array) -> int:
    """Bytes `array` takes once its dictionaries are expanded, computed without expanding them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    type_ = array.type
    if pa.types.is_dictionary(type_):
        values = array.dictionary
        if pa.types.is_binary(values.type) or pa.types.is_string(values.type) or \
                pa.types.is_large_binary(values.type) or pa.types.is_large_string(values.type):
            lengths = pc.take(pc.binary_length(values), array.indices)
            return int(pc.sum(lengths).as_py() or 0) + array.indices.nbytes
        width = values.nbytes // max(1, len(values))
        return array.indices.nbytes + len(array) * width
    if pa.types.is_struct(type_):
        return sum(_decoded_bytes(child) for child in array.flatten()) + len(array) // 8
    if pa.types.is_map(type_):  # no flatten kernel for maps: their keys and items are two arrays
        return _decoded_bytes(array.keys) + _decoded_bytes(array.items) + 8 * len(array)
    if pa.types.is_list(type_) or pa.types.is_large_list(type_) or pa.types.is_fixed_size_list(type_):
        return _decoded_bytes(array.flatten()) + 8 * len(array)
    return int(array.nbytes)


def _parquet_rows(path: Path, limits: Limits) -> Iterator[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with path.open("rb") as f:
        # Opened here, not by path: pyarrow's messages then never carry the server's path.
        try:
            meta = pq.ParquetFile(f).metadata
        except (pa.ArrowException, OSError) as exc:
            raise DataFileError(f"not a readable Parquet file: {exc}") from exc
        if meta.num_rows > limits.max_rows:
            raise DataFileError(_too_many_rows(limits, meta.num_rows))
        groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
        declared = sum(max(g.total_byte_size, sum(g.column(c).total_uncompressed_size for c in range(g.num_columns)))
                       for g in groups)
        if declared > limits.max_uncompressed_bytes:
            raise DataFileError(_too_big(limits, f"its metadata says {declared} bytes"))
        for index, group in enumerate(groups):
            for c in range(group.num_columns):
                chunk = group.column(c)
                size, stored = chunk.total_uncompressed_size, max(1, chunk.total_compressed_size)
                if size > BOMB_CHUNK_BYTES and size > MAX_EXPANSION * stored:
                    raise DataFileError(
                        f"column '{chunk.path_in_schema}' (row group {index + 1}) expands from {stored} to {size} "
                        f"bytes, more than {MAX_EXPANSION} times: refused as a decompression bomb")
        schema = meta.schema
        arrow_schema = schema.to_arrow_schema()
        if len(arrow_schema) > MAX_COLUMNS:
            raise DataFileError(f"{len(arrow_schema)} columns; at most {MAX_COLUMNS} are allowed")
        for field in arrow_schema:
            if _type_depth(field.type) > MAX_JSON_DEPTH:
                raise DataFileError(f"column '{field.name}' is nested deeper than {MAX_JSON_DEPTH} levels")
        # Strings are read as dictionaries and counted before they are expanded: a short file may hold one long
        # value repeated millions of times, which the metadata does not show (it counts the dictionary once).
        strings = [schema.column(i).path for i in range(len(schema)) if schema.column(i).physical_type == "BYTE_ARRAY"]
        f.seek(0)
        try:
            reader = pq.ParquetFile(f, metadata=meta, read_dictionary=strings)
        except (pa.ArrowException, OSError) as exc:
            raise DataFileError(f"not a readable Parquet file: {exc}") from exc
        total = 0
        for index, group in enumerate(groups):
            per_row = max(1, group.total_byte_size // max(1, group.num_rows))
            batch_rows = max(1, min(_MAX_BATCH_ROWS, _BATCH_BYTES // per_row))
            try:
                for batch in reader.iter_batches(batch_size=batch_rows, row_groups=[index], use_threads=False):
                    size = sum(_decoded_bytes(column) for column in batch.columns)
                    total += size
                    if total > limits.max_uncompressed_bytes:
                        raise DataFileError(_too_big(limits, f"over {limits.max_uncompressed_bytes} bytes by row "
                                                             f"group {index + 1}"))
                    step = max(1, math.floor(batch.num_rows * _BATCH_BYTES / max(1, size)))
                    for start in range(0, batch.num_rows, step):
                        yield from batch.slice(start, step).to_pylist()
            except (pa.ArrowException, OSError) as exc:
                raise DataFileError(f"not a readable Parquet file (row group {index + 1}): {exc}") from exc


# -- rows under the caps ---------------------------------------------------------------------------------------

def _too_many_rows(limits: Limits, count: int | None = None) -> str:
    has = f"{count} rows" if count is not None else f"more than {limits.max_rows} rows"
    return f"{has}; the limit is {limits.max_rows} rows (FTSERVE_MAX_DATASET_ROWS)"


def _too_big(limits: Limits, how: str) -> str:
    return (f"the data is over the limit of {limits.max_uncompressed_bytes} bytes decompressed ({how}; "
            "FTSERVE_MAX_DATASET_UNCOMPRESSED_BYTES)")


_READERS: dict[str, Callable[[Path, Limits], Iterator[dict[str, Any]]]] = {
    "csv": lambda path, _: _csv_rows(path),
    "jsonl": lambda path, _: _jsonl_rows(path),
    "json": lambda path, _: _json_rows(path),
    "parquet": _parquet_rows,
    "txt": lambda path, _: _txt_rows(path),
}


def iter_rows(path: Path, fmt: str | None = None, *, limits: Limits | None = None,
              label: str | None = None) -> Iterator[dict[str, Any]]:
    """The file's rows, one at a time; a DataFileError names `label` (default: the file name) and says why."""
    fmt = fmt or format_for(path.name)
    limits = limits or Limits.from_settings()
    label = label or path.name
    try:
        size = path.stat().st_size
        if size == 0:
            raise DataFileError("file is empty")
        if fmt != "parquet" and size > limits.max_uncompressed_bytes:
            raise DataFileError(_too_big(limits, f"the file is {size} bytes"))
        count = 0
        for row in _READERS[fmt](path, limits):
            count += 1
            if count > limits.max_rows:
                raise DataFileError(_too_many_rows(limits))
            yield row
        if count == 0:
            raise DataFileError("file has no data rows")
    except DataFileError as exc:
        raise DataFileError(f"{label}: {scrub_paths(exc.message, path)}") from exc
    except OSError as exc:
        raise DataFileError(f"{label}: cannot be read ({exc.strerror or type(exc).__name__})") from exc


def _columns_of(rows: Iterable[dict[str, Any]]) -> list[str]:
    columns: dict[str, None] = {}
    for row in rows:
        for key in row:
            columns.setdefault(key, None)
    return list(columns)


def read_table(path: Path, fmt: str | None = None, *, limits: Limits | None = None,
               label: str | None = None) -> Table:
    """Every row in memory (training); the same reader and caps as the upload's profile."""
    rows = list(iter_rows(path, fmt, limits=limits, label=label))
    columns = _columns_of(rows)
    if len(columns) > MAX_COLUMNS:
        raise DataFileError(f"{label or path.name}: {len(columns)} columns; at most {MAX_COLUMNS} are allowed")
    return Table(columns, rows)


# -- the profile: what the API knows of a dataset without reading it again -------------------------------------

def kind_of(value: Any) -> str:
    """The JSON-ish type of a cell; a string of whitespace only is "blank" (an empty text is not a text)."""
    if isinstance(value, str):
        return "blank" if not value or value.isspace() else "string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "binary"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, (list, tuple)):
        return "list"
    return type(value).__name__.lower()  # datetime, date, decimal, … (Parquet logical types)


_COUNTABLE = frozenset({"string", "blank", "integer", "float", "boolean"})
# What a kind is called in messages that speak of Python values (e.g. "not a string (int)").
PY_NAMES = {"integer": "int", "float": "float", "boolean": "bool", "object": "dict", "list": "list",
            "binary": "bytes", "null": "NoneType", "string": "str", "blank": "str"}


def preview_cell(value: Any, limit: int = PREVIEW_CELL_CHARS) -> Any:
    """A JSON-safe, bounded rendering of a cell: long strings cut, binary as a placeholder, nesting as JSON."""
    if value is None or isinstance(value, (bool, int)):
        return value if not isinstance(value, int) or abs(value) < 2**63 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + "…"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<binary: {len(value)} bytes>"
    if isinstance(value, (dict, list, tuple)):
        text = json.dumps(_json_safe(value, limit), ensure_ascii=False)
        if len(text) <= limit:
            return json.loads(text)
        return text[:limit] + "…"
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "…"


def _json_safe(value: Any, limit: int) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v, limit) for k, v in list(value.items())[:limit]}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v, limit) for v in value[:limit]]
    return preview_cell(value, limit)


def fit_preview(rows: list[dict[str, Any]], budget: int = PREVIEW_BYTES) -> list[dict[str, Any]]:
    """Cut cells shorter until the preview's JSON is under `budget` bytes; drop rows only if that is not enough."""
    limit = PREVIEW_CELL_CHARS
    preview = rows
    while True:
        if len(json.dumps(preview, ensure_ascii=False).encode()) < budget:
            return preview
        if limit <= 16:
            if not preview:
                return preview
            rows = rows[:-1]
        else:
            limit //= 2
        preview = [{k: preview_cell(v, limit) for k, v in row.items()} for row in rows]


class _Column:
    __slots__ = ("counts", "kinds")

    def __init__(self) -> None:
        self.kinds: dict[str, list[int]] = {}  # kind → [rows, first row]
        self.counts: dict[tuple[str, Any], int] | None = {}


class Profiler:
    """Builds a profile from rows as they stream by: one pass, memory bounded by the caps above."""

    def __init__(self) -> None:
        self.columns: dict[str, _Column] = {}
        self.rows = 0
        self.preview: list[dict[str, Any]] = []
        self.counted_chars = 0

    def _column(self, name: str) -> _Column:
        column = self.columns.get(name)
        if column is None:
            if len(self.columns) >= MAX_COLUMNS:
                raise DataFileError(f"more than {MAX_COLUMNS} columns")
            if len(name) > MAX_COLUMN_NAME:  # names are echoed in every response and message about the dataset
                raise DataFileError(f"a column name is {len(name)} characters ({name[:40]!r}…); at most "
                                    f"{MAX_COLUMN_NAME} are allowed")
            column = self.columns[name] = _Column()
            if self.rows > 1:  # the rows before this one did not have it
                column.kinds["null"] = [self.rows - 1, 1]
        return column

    def _drop_counts(self, column: _Column) -> None:
        """Stop counting a column's values, and give back the characters its strings took of the budget."""
        self.counted_chars -= sum(len(value) for _, value in column.counts or {} if isinstance(value, str))
        column.counts = None

    def _drop_largest_counts(self) -> None:
        counted = [c for c in self.columns.values() if c.counts]
        self._drop_counts(max(counted, key=lambda c: len(c.counts or ())))

    def add(self, row: dict[str, Any]) -> None:
        self.rows += 1
        number = self.rows
        if len(self.preview) < PREVIEW_ROWS:
            self.preview.append({str(k): preview_cell(v) for k, v in row.items()})
        for name, value in row.items():
            column = self._column(name)
            kind = kind_of(value)
            seen = column.kinds.get(kind)
            if seen is None:
                column.kinds[kind] = [1, number]
            else:
                seen[0] += 1
            counts = column.counts
            if counts is None or kind == "null":
                continue
            if kind not in _COUNTABLE or (kind in ("string", "blank") and len(value) > MAX_COUNTED_CHARS):
                self._drop_counts(column)
                continue
            key = (kind, value)
            if key in counts:
                counts[key] += 1
                continue
            if len(counts) >= MAX_DISTINCT:
                self._drop_counts(column)
                continue
            counts[key] = 1
            if isinstance(value, str):
                self.counted_chars += len(value)
                while self.counted_chars > VALUE_COUNT_CHARS:
                    self._drop_largest_counts()
        if len(row) != len(self.columns):
            for name, column in self.columns.items():
                if name not in row:
                    seen = column.kinds.get("null")
                    if seen is None:
                        column.kinds["null"] = [1, number]
                    else:
                        seen[0] += 1

    def profile(self) -> DatasetProfile:
        columns = list(self.columns)
        values: dict[str, list[list[Any]] | None] = {}
        for name, column in self.columns.items():
            if column.counts is None:
                values[name] = None
                continue
            pairs = sorted(column.counts.items(), key=lambda item: (-item[1], str(item[0][1])))
            values[name] = [[preview_cell(value), count] for (_, value), count in pairs]
        return DatasetProfile({
            "version": PROFILE_VERSION,
            "num_rows": self.rows,
            "columns": columns,
            "types": {name: {kind: {"rows": n, "first_row": first} for kind, (n, first) in column.kinds.items()}
                      for name, column in self.columns.items()},
            "value_counts": values,
            "preview": fit_preview(self.preview),
        })


@dataclass(frozen=True)
class DatasetProfile:
    """The stored profile (Dataset.profile): what checks and GET /datasets/{id} need, without the file."""

    data: dict[str, Any]

    @property
    def num_rows(self) -> int:
        return int(self.data["num_rows"])

    @property
    def columns(self) -> list[str]:
        return list(self.data["columns"])

    @property
    def preview(self) -> list[dict[str, Any]]:
        return list(self.data["preview"])

    def kinds(self, column: str) -> dict[str, tuple[int, int]]:
        """kind → (rows, first row number) for one column."""
        return {k: (v["rows"], v["first_row"]) for k, v in self.data["types"].get(column, {}).items()}

    def first_row(self, column: str, *, kinds: Iterable[str] | None = None,
                  other_than: Iterable[str] = ()) -> tuple[int, str] | None:
        """(first row, kind) of the earliest row whose value in `column` is of one of `kinds` (or of any kind
        not in `other_than`); None when there is none."""
        wanted = set(kinds) if kinds is not None else None
        excluded = set(other_than)
        hits = [(first, kind) for kind, (_, first) in self.kinds(column).items()
                if (wanted is None or kind in wanted) and kind not in excluded]
        return min(hits) if hits else None

    def value_counts(self, column: str) -> list[tuple[Any, int]] | None:
        """[(value, rows)] for a column with few distinct scalar values; None when not counted."""
        pairs = self.data["value_counts"].get(column)
        return None if pairs is None else [(value, count) for value, count in pairs]

    def column_types(self) -> dict[str, list[str]]:
        """Per column, the value types seen (a blank string is a string here)."""
        out: dict[str, list[str]] = {}
        for column in self.columns:
            out[column] = sorted({"string" if kind == "blank" else kind for kind in self.kinds(column)})
        return out


def profile_rows(rows: Iterable[dict[str, Any]]) -> DatasetProfile:
    profiler = Profiler()
    for row in rows:
        profiler.add(row)
    return profiler.profile()


def profile_file(path: Path, fmt: str | None = None, *, limits: Limits | None = None,
                 label: str | None = None) -> DatasetProfile:
    """Read the file once, under the caps, into its profile (the rows are not kept)."""
    label = label or path.name
    profiler = Profiler()
    for row in iter_rows(path, fmt, limits=limits, label=label):
        try:
            profiler.add(row)
        except DataFileError as exc:
            raise DataFileError(f"{label}: {exc.message}") from exc
    return profiler.profile()
