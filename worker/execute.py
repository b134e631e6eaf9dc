"""Run one job: claim its row, supervise a training child process, make sure the row ends terminal."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

from core.settings import Settings
from registry import jobs as jobrepo
from registry.db import session_scope
from registry.store import ArtifactStore

log = logging.getLogger("ftserve.worker")


def worker_identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone: nothing to signal
        os.killpg(proc.pid, sig)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class _Heartbeat(threading.Thread):
    def __init__(self, job_id: str, worker_id: str, every: float) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{job_id}")
        self.job_id, self.worker_id, self.every = job_id, worker_id, every
        self.stopped = threading.Event()
        self.lost = False

    def run(self) -> None:
        while not self.stopped.wait(self.every):
            try:
                with session_scope() as s:
                    if not jobrepo.heartbeat(s, self.job_id, worker_id=self.worker_id):
                        self.lost = True
            except Exception:
                log.exception("heartbeat for %s failed; will retry", self.job_id)


def execute_job(job_id: str, *, settings: Settings) -> str | None:
    """Returns the job's final status, or None when the job was not ours to run."""
    worker_id = worker_identity()
    with session_scope() as s:
        job = jobrepo.claim(s, job_id, worker_id=worker_id)
        if job is None:
            log.info("job %s is not queued (or already claimed): nothing to do", job_id)
            return None
        attempt = job.attempt
    store = ArtifactStore(settings.data_dir)
    logs = store.job_dir(job_id) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"attempt-{attempt}.log"
    log.info("job %s attempt %d: starting training process (log: %s)", job_id, attempt, log_path)

    heartbeat = _Heartbeat(job_id, worker_id, settings.heartbeat_seconds)
    heartbeat.start()
    started = time.monotonic()
    cancel_seen_at: float | None = None
    timed_out = False
    term_sent_at: float | None = None
    with log_path.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.child", job_id, worker_id, str(os.getpid())],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=os.environ.copy(),
        )
        try:
            last_check = 0.0
            while proc.poll() is None:
                time.sleep(0.2)
                now = time.monotonic()
                if now - last_check >= 1.0:
                    last_check = now
                    with session_scope() as s:
                        if cancel_seen_at is None and jobrepo.is_cancel_requested(s, job_id):
                            cancel_seen_at = now
                    if not timed_out and now - started > settings.max_job_seconds:
                        timed_out = True
                        log.warning("job %s exceeded max duration; stopping it", job_id)
                deadline_hit = timed_out or (
                    cancel_seen_at is not None and now - cancel_seen_at > settings.cancel_grace_seconds
                )
                if deadline_hit and term_sent_at is None:
                    term_sent_at = now
                    _signal_group(proc, signal.SIGTERM)
                elif term_sent_at is not None and now - term_sent_at > 10.0:
                    _signal_group(proc, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
            heartbeat.stopped.set()
            heartbeat.join(timeout=5)

    return _settle(job_id, proc.returncode, timed_out=timed_out, log_path=log_path, settings=settings)


def _settle(job_id: str, returncode: int, *, timed_out: bool, log_path: Path, settings: Settings) -> str:
    """The child normally writes the outcome; when it died without doing so, write it here."""
    store = ArtifactStore(settings.data_dir)
    with session_scope() as s:
        job = jobrepo.get_job(s, job_id, for_update=True)
        if job.status in jobrepo.TERMINAL:
            return job.status
        if job.cancel_requested:
            jobrepo.finish(s, job_id, status=jobrepo.CANCELLED)
            status = jobrepo.CANCELLED
        elif timed_out:
            jobrepo.finish(
                s, job_id, status=jobrepo.FAILED, error_type="user",
                error_message=f"job exceeded the maximum duration of {settings.max_job_seconds:.0f}s and was "
                "stopped; use fewer epochs/max_steps or a smaller dataset",
            )
            status = jobrepo.FAILED
        else:
            how = f"signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
            tail = _tail(log_path)
            jobrepo.finish(
                s, job_id, status=jobrepo.FAILED, error_type="system",
                error_message=f"training process ended with {how} before finishing"
                + (f"; last log lines:\n{tail}" if tail else ""),
            )
            status = jobrepo.FAILED
    if status == jobrepo.CANCELLED:
        store.remove_tree(store.checkpoints_dir(job_id))
    return status


def reconcile(settings: Settings, *, send: object = None) -> dict[str, int]:
    """Re-send queued jobs whose message may be lost; re-queue or fail jobs whose worker died."""
    from worker.dispatch import send_job

    sender = send or send_job
    resent = requeued = failed = 0
    to_send: list[str] = []
    with session_scope() as s:
        for job in jobrepo.expired_leases(s, lease=timedelta(seconds=settings.lease_seconds)):
            if job.cancel_requested:
                jobrepo.finish(s, job.id, status=jobrepo.CANCELLED)
            elif job.attempt >= settings.max_attempts:
                jobrepo.finish(
                    s, job.id, status=jobrepo.FAILED, error_type="system",
                    error_message=f"the worker running this job was lost {job.attempt} times "
                    f"(maximum attempts: {settings.max_attempts}); not retrying",
                )
                failed += 1
            else:
                job.status, job.worker_id, job.enqueued_at = jobrepo.QUEUED, None, jobrepo.utcnow()
                jobrepo.add_event(s, job.id, "status", "worker lost; job re-queued",
                                  {"status": jobrepo.QUEUED, "attempt": job.attempt})
                to_send.append(job.id)
                requeued += 1
    with session_scope() as s:
        stale = jobrepo.stale_queued(s, older_than=timedelta(seconds=settings.requeue_after_seconds))
        for job_id in stale:
            jobrepo.get_job(s, job_id).enqueued_at = jobrepo.utcnow()
    for job_id in [*to_send, *stale]:
        sender(job_id)  # type: ignore[operator]
    resent = len(stale)
    return {"resent": resent, "requeued": requeued, "failed": failed}
