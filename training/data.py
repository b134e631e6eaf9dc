"""Load a job's data: an uploaded file (via the registry reader) or a hub dataset."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import UserError, ValidationFailed
from registry.datafiles import Limits, read_table


@dataclass(frozen=True)
class FileSource:
    path: Path
    format: str
    label: str  # how messages name it, e.g. "dataset ds_abc (train.csv)"
    limits: Limits | None = None  # None: the settings' dataset caps, the ones the upload was read under


@dataclass(frozen=True)
class HubSource:
    name: str
    config: str | None
    split: str

    @property
    def label(self) -> str:
        return f"hub dataset '{self.name}'" + (f" ({self.config})" if self.config else "") + f" split {self.split}"


Source = FileSource | HubSource


@dataclass
class Rows:
    columns: list[str]
    rows: list[dict[str, Any]]
    source: Source


def load_rows(source: Source) -> Rows:
    if isinstance(source, FileSource):
        table = read_table(source.path, source.format, limits=source.limits, label=source.label)
        return Rows(table.columns, table.rows, source)
    return _load_hub(source)


def _load_hub(source: HubSource) -> Rows:
    import datasets

    try:
        ds = datasets.load_dataset(source.name, source.config, split=source.split)
    except (FileNotFoundError, ConnectionError, OSError, ValueError) as exc:
        raise UserError(
            f"could not load {source.label}: it is not in the local Hugging Face cache and the hub "
            f"could not be reached or does not have it ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(ds, datasets.Dataset):
        raise UserError(f"{source.label}: expected one split, got {type(ds).__name__}; set 'split'")
    rows = ds.to_list()
    # Class-label columns give their names, so labels read like the data's classes.
    for column, feature in ds.features.items():
        if isinstance(feature, datasets.ClassLabel):
            names = feature.names
            for row in rows:
                value = row.get(column)
                if isinstance(value, int) and 0 <= value < len(names):
                    row[column] = names[value]
    return Rows(list(ds.column_names), rows, source)


def map_columns(columns: dict[str, str], rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Each row with the mapped columns (field → column) renamed to the task's field names."""
    for row in rows:
        yield {field: row.get(column) for field, column in columns.items()}


def check_columns(present: list[str], columns: dict[str, str], *, what: str) -> None:
    """Every mapped column must exist; the message names it and the columns present."""
    for field, column in columns.items():
        if column not in present:
            listed = ", ".join(present[:50]) + (f", … ({len(present)} in all)" if len(present) > 50 else "")
            raise ValidationFailed(
                f"column '{column}' (for field '{field}') not found in {what}; columns are: {listed}")
