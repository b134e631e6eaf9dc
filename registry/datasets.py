"""Stored dataset profiles and cached row checks: what the API reads instead of the dataset's file."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.exc import IntegrityError

from core.errors import Conflict, ValidationFailed
from registry.datafiles import PROFILE_VERSION, DataFileError, DatasetProfile, Limits, profile_file
from registry.db import session_scope
from registry.models import Dataset, DatasetCheck

log = logging.getLogger("ftserve.registry")
# Part of every check key: a change to what a row check looks at makes the old outcomes miss.
CHECK_VERSION = 1


def profile_of(ds: Dataset, *, path: Path, limits: Limits) -> DatasetProfile:
    """The profile stored at upload; a dataset stored before profiles existed gets one now, saved once."""
    if ds.profile is not None and ds.profile.get("version") == PROFILE_VERSION:
        return DatasetProfile(ds.profile)
    try:
        profile = profile_file(path, ds.format, limits=limits, label=ds.file_name)
    except DataFileError as exc:  # it was readable at upload: the file has changed, or the caps have
        raise Conflict(f"dataset {ds.id} ({ds.name}) can no longer be read: {exc.message}") from exc
    # In a transaction of its own, so the profile is kept even when the request that needed it fails.
    with session_scope() as s:
        stored = s.get(Dataset, ds.id)
        if stored is not None:
            stored.profile = profile.data
    return profile


def check_key(task: str, columns: dict[str, str]) -> str:
    blob = json.dumps({"task": task, "columns": columns, "version": CHECK_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def cached_check(ds: Dataset, *, key: str, run: Callable[[], None]) -> None:
    """Run a row check once per (dataset, key) and replay its outcome: None passes, else its 422 again.

    `run` raises ValidationFailed for rows that fail the check (kept) and DataFileError for a file that can no
    longer be read (not kept: a 409, as the file has changed since its upload).
    """
    with session_scope() as s:
        done = s.get(DatasetCheck, (ds.id, key))
        if done is not None:
            if done.error is not None:
                raise ValidationFailed(done.error)
            return
    error: ValidationFailed | None = None
    try:
        run()
    except DataFileError as exc:
        raise Conflict(f"dataset {ds.id} ({ds.name}) can no longer be read: {exc.message}") from exc
    except ValidationFailed as exc:
        error = exc
    try:
        # Its own transaction: a failed check is kept although the request it failed is rolled back.
        with session_scope() as s:
            s.add(DatasetCheck(dataset_id=ds.id, key=key, error=None if error is None else error.message))
    except IntegrityError:
        # A concurrent request stored the same outcome first, or the dataset was deleted meanwhile: the
        # outcome is the same either way, only the cache row is not ours.
        log.info("row check for %s was stored by another request", ds.id)
    if error is not None:
        raise error
