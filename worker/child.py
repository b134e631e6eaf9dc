"""One training attempt, run as a child process of the Celery task (`python -m worker.child JOB WORKER`).

The child writes progress, events and the outcome to the job row. Its parent (worker.execute)
supervises it: heartbeat, cancel escalation, maximum duration, and the outcome of a crash.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError

from core.cpus import size_torch_threads
from core.errors import Conflict, UserError, ValidationFailed
from core.logging import setup_logging
from core.settings import Settings, configure_environment, get_settings
from registry import jobs as jobrepo
from registry import versions
from registry.db import session_scope
from registry.models import Dataset, ModelVersion
from registry.store import ArtifactStore
from training.spec import JobSpec
from worker import failpoints

log = logging.getLogger("ftserve.child")


def newest_checkpoint(directory: Path) -> Path | None:
    best: tuple[int, Path] | None = None
    if directory.is_dir():
        for path in directory.iterdir():
            m = re.fullmatch(r"checkpoint-(\d+)", path.name)
            if m and (path / "trainer_state.json").exists() and (best is None or int(m.group(1)) > best[0]):
                best = (int(m.group(1)), path)
    return best[1] if best else None


class JobCallbacks:
    """Training callbacks backed by the job row; writes are throttled."""

    def __init__(self, job_id: str, settings: Settings) -> None:
        self.job_id = job_id
        self.settings = settings
        self._last_progress = 0.0
        self._last_stop_check = 0.0
        self._stop = False

    def on_progress(self, progress: dict[str, Any]) -> None:
        now = time.monotonic()
        final = progress.get("step") == progress.get("total_steps")
        if final or now - self._last_progress >= self.settings.progress_interval_seconds:
            self._last_progress = now
            with session_scope() as s:
                jobrepo.set_progress(s, self.job_id, progress)

    def on_event(self, type_: str, message: str, data: dict[str, Any]) -> None:
        with session_scope() as s:
            jobrepo.add_event(s, self.job_id, type_, message, data)

    def on_data(self, stats: dict[str, int]) -> None:
        with session_scope() as s:
            jobrepo.get_job(s, self.job_id).data_stats = stats

    def should_stop(self) -> bool:
        now = time.monotonic()
        if not self._stop and now - self._last_stop_check >= 1.0:
            self._last_stop_check = now
            with session_scope() as s:
                self._stop = jobrepo.is_cancel_requested(s, self.job_id)
        return self._stop


def _sources(spec: JobSpec, store: ArtifactStore) -> Any:
    from training.data import FileSource, HubSource
    from training.runner import TrainingData

    def source_for(ref: Any) -> tuple[Any, dict[str, Any]]:
        if ref.id is not None:
            with session_scope() as s:
                ds = s.get(Dataset, ref.id)
                if ds is None:
                    raise ValidationFailed(f"dataset '{ref.id}' no longer exists")
                path = store.dataset_file(ds.id, ds.file_name)
                return FileSource(path, ds.format, f"dataset {ds.id} ({ds.name})"), {
                    "dataset_id": ds.id, "dataset_sha256": ds.sha256}
        split = getattr(ref, "split", None) or "validation"
        return HubSource(ref.hub, ref.config, split), {"hub": {"name": ref.hub, "config": ref.config,
                                                                "split": split}}

    train, provenance = source_for(spec.dataset)
    validation = None
    if spec.validation.split_ratio is None:
        validation, val_prov = source_for(spec.validation)
        provenance["validation"] = val_prov
    return TrainingData(train=train, validation=validation, split_ratio=spec.validation.split_ratio or 0.1,
                        provenance=provenance)


def _model_source(resolved: str, store: ArtifactStore) -> str:
    kind, _, rest = resolved.partition(":")
    if kind == "hub":
        return rest
    name, _, version = rest.rpartition(":")
    return str(store.version_dir(name, int(version)))


def _register(job_id: str, spec: JobSpec, result: Any, store: ArtifactStore, staging: Path) -> int:
    from training import model_card

    for _ in range(5):
        try:
            with session_scope() as s:
                job = jobrepo.get_job(s, job_id)
                versions.ensure_model(s, name=spec.model_name, task=spec.task, owner=job.owner)
                version = versions.next_version(s, spec.model_name)
                data = result.training_params.get("data", {})
                mv = ModelVersion(
                    name=spec.model_name, version=version, task=spec.task, owner=job.owner, job_id=job_id,
                    base_model=spec.base_model, base_model_resolved=job.base_model_resolved or "",
                    dataset_id=data.get("dataset_id"), dataset_sha256=data.get("dataset_sha256"),
                    dataset_hub=data.get("hub"), hyperparameters=spec.hyperparameters,
                    metrics=result.metrics, path=str(store.version_dir(spec.model_name, version)),
                )
                s.add(mv)
                s.flush()  # takes the (name, version) key before the directory is published
                (staging / "README.md").write_text(model_card.render(
                    name=spec.model_name, version=version, task=spec.task,
                    params=result.training_params, metrics=result.metrics))
                store.publish(staging, spec.model_name, version)
                jobrepo.finish(s, job_id, status=jobrepo.SUCCEEDED, metrics=result.metrics, model_version=version)
                return version
        except IntegrityError:
            log.info("version number taken by a concurrent job; retrying")
    raise RuntimeError("could not allocate a model version after 5 tries")


def run_attempt(job_id: str, worker_id: str, settings: Settings) -> None:
    from training.runner import Cancelled, run

    store = ArtifactStore(settings.data_dir)
    callbacks = JobCallbacks(job_id, settings)
    with session_scope() as s:
        job = jobrepo.get_job(s, job_id)
        spec = JobSpec.model_validate(job.spec)
        resolved = job.base_model_resolved or f"hub:{spec.base_model}"
        attempt = job.attempt
    checkpoints = store.checkpoints_dir(job_id)
    resume_from = newest_checkpoint(checkpoints)
    if resume_from is not None:
        step = int(resume_from.name.split("-")[1])
        callbacks.on_event("status", f"attempt {attempt} resumes from step {step}",
                           {"status": "running", "resumed_from_step": step, "attempt": attempt})
    else:
        callbacks.on_event("status", f"attempt {attempt} started", {"status": "running", "attempt": attempt})
    staging = store.staging_dir(spec.model_name, job_id)
    try:
        if staging.exists():
            shutil.rmtree(staging)
        data = _sources(spec, store)
        failpoints.hit(settings.failpoints, "before_train", model_name=spec.model_name)
        result = run(
            spec, data=data, model_source=_model_source(resolved, store), base_model_resolved=resolved,
            out_dir=staging, checkpoints_dir=checkpoints, on_progress=callbacks.on_progress,
            on_event=callbacks.on_event, should_stop=callbacks.should_stop, resume_from=resume_from,
            on_data=callbacks.on_data, checkpoint_seconds=settings.checkpoint_seconds,
        )
        version = _register(job_id, spec, result, store, staging)
        log.info("job %s succeeded: %s:%s", job_id, spec.model_name, version)
        shutil.rmtree(checkpoints, ignore_errors=True)
    except Cancelled:
        with session_scope() as s:
            jobrepo.finish(s, job_id, status=jobrepo.CANCELLED)
        shutil.rmtree(checkpoints, ignore_errors=True)
    except (UserError, ValidationFailed, Conflict) as exc:
        log.info("job %s failed (user): %s", job_id, exc.message)
        with session_scope() as s:
            jobrepo.finish(s, job_id, status=jobrepo.FAILED, error_type="user", error_message=exc.message)
    except Exception as exc:
        log.exception("job %s failed (system)", job_id)
        message = f"{type(exc).__name__}: {exc}"
        if type(exc).__name__ == "OutOfMemoryError" or isinstance(exc, MemoryError):
            message = f"out of memory ({message}); lower batch_size or max_length"
        with session_scope() as s:
            jobrepo.finish(s, job_id, status=jobrepo.FAILED, error_type="system",
                           error_message=message[:4000])
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def die_with_parent(parent_pid: int) -> None:
    """On Linux, have the kernel SIGKILL this process when its worker dies, so a lost worker never leaves a
    training run behind to race the re-queued attempt (the supervisor lives in another process group)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the worker died before the line above took effect
        raise SystemExit(f"worker {parent_pid} is gone; not starting")


def main(argv: list[str]) -> int:
    die_with_parent(int(argv[2]))
    setup_logging()
    settings = configure_environment(get_settings())
    size_torch_threads(settings.torch_threads)
    job_id, worker_id = argv[0], argv[1]
    try:
        run_attempt(job_id, worker_id, settings)
    except Exception:
        # Only reached when even writing the failure failed (e.g. the database is gone); the parent
        # sees the exit code and records the failure.
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
