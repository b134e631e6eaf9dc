"""The artifact store layout on disk. Every path from a user goes through `_inside` first."""

from __future__ import annotations

import errno
import os
import re
import shutil
from pathlib import Path

from core.errors import ValidationFailed

_SAFE_ID = re.compile(r"^[a-z0-9_]{1,64}$")
MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def _newest_mtime(folder: Path) -> float:
    """The latest change anywhere under `folder` (a file written into a subfolder does not touch the folder's own
    mtime)."""
    newest = folder.stat().st_mtime
    for root, dirs, files in os.walk(folder):
        for name in (*dirs, *files):
            newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return newest


class ArtifactStore:
    """Local data dir now; the same small interface can later front object storage."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def _inside(self, *parts: str) -> Path:
        path = self.root.joinpath(*parts).resolve()
        if self.root not in path.parents and path != self.root:
            raise ValidationFailed("path escapes the data dir")
        return path

    @staticmethod
    def _check_id(value: str) -> str:
        if not _SAFE_ID.match(value):
            raise ValidationFailed(f"invalid id '{value}'")
        return value

    def dataset_dir(self, dataset_id: str) -> Path:
        return self._inside("datasets", self._check_id(dataset_id))

    def dataset_file(self, dataset_id: str, file_name: str) -> Path:
        safe = safe_file_name(file_name)
        return self._inside("datasets", self._check_id(dataset_id), safe)

    def job_dir(self, job_id: str) -> Path:
        return self._inside("jobs", self._check_id(job_id))

    def checkpoints_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "checkpoints"

    def attempt_checkpoints_dir(self, job_id: str, attempt: int) -> Path:
        """Each attempt writes and rotates checkpoints in a folder of its own, so an attempt that lost the job
        but still runs cannot delete what the next attempt resumes from."""
        return self.checkpoints_dir(job_id) / f"attempt-{int(attempt)}"

    def import_dir(self, import_id: str) -> Path:
        """Where an archive import is received and unpacked before its version is published (same filesystem as
        models/, so publishing is a rename)."""
        return self._inside("imports", self._check_id(import_id))

    def sweep_request_dirs(self, *, older_than_seconds: float) -> list[str]:
        """Remove what an API process left in imports/ when it died during a request: an archive upload being
        unpacked (`imp_…`) or a merged export being streamed (`exp_…`). Only folders untouched for
        `older_than_seconds` go, so that another API replica's request in flight is left alone; a worker's Hub
        import (`job_…`) is its job's to clean up."""
        import time

        folder = self.root / "imports"
        removed: list[str] = []
        if not folder.is_dir():
            return removed
        cutoff = time.time() - older_than_seconds
        for entry in folder.iterdir():
            if not entry.name.startswith(("imp_", "exp_")) or not entry.is_dir():
                continue
            try:
                if _newest_mtime(entry) < cutoff:
                    shutil.rmtree(entry)
                    removed.append(entry.name)
            except FileNotFoundError:
                continue  # its own request removed it meanwhile
        return removed

    def model_dir(self, name: str) -> Path:
        if not MODEL_NAME.match(name):
            raise ValidationFailed(f"invalid model name '{name}'")
        return self._inside("models", name)

    def version_dir(self, name: str, version: int) -> Path:
        return self.model_dir(name) / str(int(version))

    def derived_dir(self, name: str, version: int) -> Path:
        """Files derived from a version at serving time (e.g. its ONNX export): never inside the version dir,
        which is immutable (and hard-linked into other versions); removed with the version."""
        if not MODEL_NAME.match(name):
            raise ValidationFailed(f"invalid model name '{name}'")
        return self._inside("cache", name, str(int(version)))

    def staging_dir(self, name: str, job_id: str, attempt: int) -> Path:
        """Where an attempt writes its version before the rename that publishes it (one per attempt, so two
        attempts of a job never write into the same folder)."""
        return self.model_dir(name) / f".tmp-{self._check_id(job_id)}-{int(attempt)}"

    def staging_dirs(self, name: str, job_id: str) -> list[Path]:
        """Every attempt's staging folder of a job, e.g. leftovers of attempts whose worker was lost."""
        folder = self.model_dir(name)
        pattern = re.compile(rf"\.tmp-{re.escape(self._check_id(job_id))}-\d+")
        return sorted(p for p in folder.iterdir() if pattern.fullmatch(p.name)) if folder.is_dir() else []

    def publish(self, staging: Path, name: str, version: int) -> Path:
        final = self.version_dir(name, version)
        if final.exists():
            # A half-finished earlier attempt could not have got here (rename is atomic), so this
            # is a leftover of a version whose row was never committed: replace it.
            shutil.rmtree(final)
        os.replace(staging, final)
        return final

    def unpublish(self, name: str, version: int, staging: Path) -> None:
        """Undo `publish` for a version whose row did not commit, so a retry can publish it again."""
        os.replace(self.version_dir(name, version), staging)

    def publish_lock_path(self, name: str) -> Path:
        """A lock file held from publishing a version directory until its row is known to be committed or
        not: no other job may replace `<name>/<version>` while that is undecided."""
        folder = self.model_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        return folder / ".publish.lock"

    @staticmethod
    def link_tree(source: Path, target: Path) -> None:
        """Copy a folder as hard links (instant, no extra space), or as real copies across filesystems.

        Hard-linked files must never be written in place: replace them (write elsewhere, `os.replace`).
        """
        shutil.copytree(source, target, copy_function=_link_or_copy)

    def remove_tree(self, path: Path) -> None:
        path = self._inside(*path.resolve().relative_to(self.root).parts)
        shutil.rmtree(path, ignore_errors=False) if path.exists() else None


def version_dir_beside(folder: Path, name: str, version: int) -> Path:
    """The folder of version `name:version` in the store that holds `folder` (a published version's folder or a
    staging one, both `models/<name>/<entry>`): how a LoRA adapter finds the registered version it was trained on
    without knowing where the data dir is."""
    if not MODEL_NAME.match(name):
        raise ValidationFailed(f"invalid model name '{name}'")
    return Path(folder).resolve().parent.parent / name / str(int(version))


def safe_file_name(file_name: str) -> str:
    """Keep the base name only, with a conservative character set."""
    base = os.path.basename(file_name.replace("\\", "/")).strip()
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base)
    if not base or base.startswith("."):
        base = "upload" + base
    return base[:200]


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
        shutil.copy2(source, target)
