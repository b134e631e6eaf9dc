"""A dataset upload, parsed as it streams: the `file` part goes straight to its place in the data dir.

Starlette's form parser would first spool the whole file to the temp dir (outside the data dir, before any
size check); python-multipart's streaming parser lets the bytes be counted, hashed and written where they
belong as they arrive, and cut off at the cap.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import anyio
from fastapi import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from core.errors import PayloadTooLarge, ValidationFailed
from registry.datafiles import format_for
from registry.store import safe_file_name

FLUSH_BYTES = 1024 * 1024
MAX_NAME_CHARS = 256


@dataclass
class Upload:
    path: Path
    file_name: str
    format: str
    size: int
    sha256: str
    name: str | None
    fields: dict[str, str] = field(default_factory=dict)  # the small text fields sent beside the file


@dataclass
class _Part:
    name: str | None = None
    file_name: str | None = None
    data: bytearray = field(default_factory=bytearray)


class _UploadParser:
    """python-multipart callbacks: file bytes are queued here and written by `flush()` off the event loop."""

    def __init__(self, *, target_dir: Path, max_file_bytes: int, format_of: Callable[[str], str] = format_for,
                 text_fields: Collection[str] = ("name",), limit_setting: str = "FTSERVE_MAX_UPLOAD_BYTES") -> None:
        self.target_dir = target_dir
        self.limit_setting = limit_setting
        self.max_file_bytes = max_file_bytes
        self.format_of = format_of
        self.text_fields = frozenset(text_fields)
        self.fields: dict[str, str] = {}
        self.part = _Part()
        self.header_name = bytearray()
        self.header_value = bytearray()
        self.disposition = b""
        self.in_file = False
        self.file_name: str | None = None
        self.format = ""
        self.name: str | None = None
        self.size = 0
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.digest = hashlib.sha256()
        self.out: IO[bytes] | None = None
        self.ended = False

    def callbacks(self) -> dict[str, object]:
        return {"on_part_begin": self.on_part_begin, "on_header_field": self.on_header_field,
                "on_header_value": self.on_header_value, "on_header_end": self.on_header_end,
                "on_headers_finished": self.on_headers_finished, "on_part_data": self.on_part_data,
                "on_part_end": self.on_part_end, "on_end": self.on_end}

    def on_part_begin(self) -> None:
        self.part = _Part()
        self.disposition = b""

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        if bytes(self.header_name).lower() == b"content-disposition":
            self.disposition = bytes(self.header_value)
        self.header_name.clear()
        self.header_value.clear()

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self.disposition)
        self.part.name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in options:
            self.part.file_name = options[b"filename"].decode("utf-8", "replace")
        self.in_file = self.part.name == "file" and self.part.file_name is not None
        if self.in_file:
            if self.file_name is not None:
                raise ValidationFailed("send one file per upload (field 'file')")
            self.file_name = safe_file_name(self.part.file_name or "upload")
            self.format = self.format_of(self.file_name)  # before a byte of it is stored

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.in_file:
            self.size += end - start
            if self.size > self.max_file_bytes:
                raise PayloadTooLarge(f"upload exceeds the limit of {self.max_file_bytes} bytes "
                                      f"({self.limit_setting})")
            chunk = data[start:end]
            self.pending.append(chunk)
            self.pending_bytes += len(chunk)
        elif self.part.name in self.text_fields:
            self.part.data += data[start:end]
            if len(self.part.data) > 4 * MAX_NAME_CHARS:
                raise ValidationFailed(f"{self.part.name}: at most {MAX_NAME_CHARS} characters")

    def on_part_end(self) -> None:
        if self.part.name in self.text_fields and not self.in_file:
            value = self.part.data.decode("utf-8", "replace")
            if len(value) > MAX_NAME_CHARS:
                raise ValidationFailed(f"{self.part.name}: at most {MAX_NAME_CHARS} characters")
            if value:
                self.fields[self.part.name] = value
            if self.part.name == "name":
                self.name = value or None
        self.in_file = False

    def on_end(self) -> None:
        self.ended = True

    @property
    def path(self) -> Path:
        assert self.file_name is not None
        return self.target_dir / self.file_name

    def _write(self, chunks: list[bytes]) -> None:
        if self.out is None:
            self.target_dir.mkdir(parents=True, exist_ok=True)
            self.out = self.path.open("xb")
        for chunk in chunks:
            self.digest.update(chunk)
            self.out.write(chunk)

    async def flush(self, *, force: bool = False) -> None:
        if self.pending and (force or self.pending_bytes >= FLUSH_BYTES):
            chunks, self.pending, self.pending_bytes = self.pending, [], 0
            await anyio.to_thread.run_sync(self._write, chunks)

    def close(self) -> None:
        if self.out is not None:
            self.out.close()


async def receive_upload(request: Request, *, target_dir: Path, max_file_bytes: int,
                         format_of: Callable[[str], str] = format_for, text_fields: Collection[str] = ("name",),
                         what: str = "the dataset", limit_setting: str = "FTSERVE_MAX_UPLOAD_BYTES") -> Upload:
    """Stream the multipart body's `file` part into `target_dir`; on any failure nothing is left there.

    `format_of` names the file's format from its name (a ValidationFailed refuses it before any byte is
    stored); `text_fields` are the small form fields kept beside it."""
    media, params = parse_options_header(request.headers.get("content-type", ""))
    if media != b"multipart/form-data" or not params.get(b"boundary"):
        raise ValidationFailed(f"send {what} as multipart/form-data with a 'file' field")
    state = _UploadParser(target_dir=target_dir, max_file_bytes=max_file_bytes, format_of=format_of,
                          text_fields=text_fields, limit_setting=limit_setting)
    try:
        try:
            parser = MultipartParser(params[b"boundary"], state.callbacks())  # type: ignore[arg-type]
            async for chunk in request.stream():
                parser.write(chunk)
                await state.flush()
            parser.finalize()
        except FormParserError as exc:
            raise ValidationFailed(f"malformed multipart body: {exc}") from exc
        if state.file_name is None:
            raise ValidationFailed("missing field 'file'")
        if not state.ended:
            raise ValidationFailed("malformed multipart body: it ends before its closing boundary")
        if state.out is None:
            state.pending.append(b"")  # an empty file is still a file (the reader then says it is empty)
        await state.flush(force=True)
    except BaseException:
        state.close()
        shutil.rmtree(target_dir, ignore_errors=True)
        raise
    state.close()
    return Upload(path=state.path, file_name=state.path.name, format=state.format, size=state.size,
                  sha256=state.digest.hexdigest(), name=state.name, fields=state.fields)
