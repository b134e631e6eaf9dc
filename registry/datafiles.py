"""Read the dataset formats ftserve accepts into columns and rows, with errors a user can act on.

One reader for upload-time checks (API) and training (worker), so both see the same rows.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import ValidationFailed

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "json", ".parquet": "parquet", ".txt": "txt"}


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


def _text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ValidationFailed(
            f"file is not valid UTF-8 (byte {exc.start}, line {line}); re-save it as UTF-8"
        ) from exc


def _read_csv(path: Path) -> Table:
    text = _text(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise ValidationFailed("file is empty: expected a header line and at least one row") from None
    except csv.Error as exc:
        raise ValidationFailed(f"malformed CSV header: {exc}") from exc
    header = [h.strip() for h in header]
    if not any(header):
        raise ValidationFailed("CSV header is empty: the first line must name the columns")
    if len(set(header)) != len(header):
        raise ValidationFailed(f"CSV header has duplicate column names: {', '.join(header)}")
    rows: list[dict[str, Any]] = []
    try:
        for record in reader:
            if not record:
                continue  # blank line
            if len(record) != len(header):
                raise ValidationFailed(
                    f"line {reader.line_num}: {len(record)} fields, expected {len(header)} ({', '.join(header)})"
                )
            rows.append(dict(zip(header, record, strict=True)))
    except csv.Error as exc:
        raise ValidationFailed(f"line {reader.line_num}: malformed CSV: {exc}") from exc
    return Table(header, rows)


def _columns_of(rows: list[dict[str, Any]]) -> list[str]:
    columns: dict[str, None] = {}
    for row in rows:
        for key in row:
            columns.setdefault(key, None)
    return list(columns)


def _read_jsonl(path: Path) -> Table:
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValidationFailed(f"line {number}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
        if not isinstance(obj, dict):
            raise ValidationFailed(f"line {number}: expected a JSON object, got {type(obj).__name__}")
        rows.append(obj)
    return Table(_columns_of(rows), rows)


def _read_json(path: Path) -> Table:
    try:
        obj = json.loads(_text(path))
    except json.JSONDecodeError as exc:
        raise ValidationFailed(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    if not isinstance(obj, list):
        raise ValidationFailed("a .json dataset must be a list of objects")
    for index, item in enumerate(obj):
        if not isinstance(item, dict):
            raise ValidationFailed(f"item {index}: expected a JSON object, got {type(item).__name__}")
    return Table(_columns_of(obj), obj)


def _read_parquet(path: Path) -> Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ValidationFailed(f"not a readable Parquet file: {exc}") from exc
    return Table(list(table.column_names), table.to_pylist())


def _read_txt(path: Path) -> Table:
    text = _text(path).replace("\r\n", "\n")
    docs = [doc.strip("\n") for doc in text.split("\n\n")]
    return Table(["text"], [{"text": doc} for doc in docs if doc.strip()])


_READERS = {
    "csv": _read_csv,
    "jsonl": _read_jsonl,
    "json": _read_json,
    "parquet": _read_parquet,
    "txt": _read_txt,
}


def read_table(path: Path, fmt: str | None = None) -> Table:
    fmt = fmt or format_for(path.name)
    if path.stat().st_size == 0:
        raise ValidationFailed("file is empty")
    table = _READERS[fmt](path)
    if not table.rows:
        raise ValidationFailed("file has no data rows")
    return table
