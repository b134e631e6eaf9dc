"""Printing for the client commands: rich tables on stdout, `--json` documents, errors on stderr, exit codes."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from ftserve import APIConnectionError, APIError, FtserveError

T = TypeVar("T")

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_API_ERROR = 3

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def plain(value: BaseModel) -> Any:
    """The API's JSON for a response model: the fields the server sent (extra ones included)."""
    return value.model_dump(mode="json", exclude_unset=True)


def print_json(value: Any) -> None:
    """One JSON document on stdout (a model, a list of models, or plain data)."""
    if isinstance(value, BaseModel):
        value = plain(value)
    elif isinstance(value, list):
        value = [plain(v) if isinstance(v, BaseModel) else v for v in value]
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={cell(v)}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(cell(v) for v in value)
    if hasattr(value, "isoformat"):
        return value.isoformat(timespec="seconds")
    return str(value)


def table(rows: Iterable[T], columns: Sequence[tuple[str, Callable[[T], Any]]], *, title: str | None = None) -> None:
    t = Table(title=title)
    for i, (header, _) in enumerate(columns):
        t.add_column(header, overflow="fold", no_wrap=i == 0)  # the id stays whole, to copy
    for row in rows:
        t.add_row(*(cell(get(row)) for _, get in columns))
    out.print(t)


def fields(value: BaseModel, names: Sequence[str]) -> None:
    """`name: value` lines for the given fields that have a value."""
    t = Table(show_header=False, box=None)
    t.add_column(style="bold")
    t.add_column(overflow="fold")
    for name in names:
        v = getattr(value, name, None)
        if v not in (None, {}, []):
            t.add_row(name, cell(plain(v) if isinstance(v, BaseModel) else v))
    out.print(t)


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    err.print(f"error: {message}", markup=False)
    raise typer.Exit(code)


def api_error(exc: FtserveError) -> NoReturn:
    """`error: <type>: <message>` on stderr, exit 3."""
    if isinstance(exc, APIError):
        fail(f"{exc.type}: {exc.message}", EXIT_API_ERROR)
    if isinstance(exc, APIConnectionError):
        fail(f"connection_error: {exc}", EXIT_API_ERROR)
    fail(f"{type(exc).__name__}: {exc}", EXIT_API_ERROR)
