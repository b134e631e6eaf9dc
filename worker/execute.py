"""Run one job: claim its row, supervise a training child process, make sure the row ends terminal."""

from __future__ import annotations

import contextlib
import json
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
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from core.errors import scrub_paths
from core.settings import Settings
from registry import jobs as jobrepo
from registry.db import in_session, is_transient, session_scope
from registry.jobs import Fence, Superseded
from registry.store import ArtifactStore
from worker import failpoints
from worker.child import EXIT_DB_UNAVAILABLE

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


_standby: subprocess.Popen[bytes] | None = None  # this process's next training process, torch imported


def _spawn_standby() -> subprocess.Popen[bytes]:
    # Its own session, as a job's process has: the supervisor signals the whole group.
    return subprocess.Popen([sys.executable, "-m", "worker.child", "--standby", str(os.getpid())],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env=os.environ.copy())


def prepare_standby(settings: Settings) -> None:
    """Start this worker process's standby training process now (at worker start), so its first job is warm."""
    global _standby
    if settings.warm_training_process and (_standby is None or _standby.poll() is not None):
        _standby = _spawn_standby()


def _start_child(argv: list[str], *, out: Any, log_path: Path, warm: bool) -> subprocess.Popen[bytes]:
    """The job's training process: the standby if one is ready (it gets its job on stdin), else a new one; then
    the next standby starts, importing while this job runs."""
    global _standby
    proc, _standby = _standby, None
    if warm and proc is not None and proc.poll() is None:
        try:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps({"argv": argv, "log": str(log_path)}).encode() + b"\n")
            proc.stdin.close()
        except OSError:  # it died after the check: start one the cold way
            proc.kill()
            proc.wait()
            proc = None
    else:
        if proc is not None:  # a standby left over from before the setting changed, or a dead one
            proc.kill()
            proc.wait()
        proc = None
    if proc is None:
        proc = subprocess.Popen([sys.executable, "-m", "worker.child", *argv], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=os.environ.copy())
    if warm:
        try:
            _standby = _spawn_standby()
        except OSError:  # no memory or processes to spare: this job runs, the next one starts cold
            log.exception("could not start the next standby training process")
    return proc


class _Heartbeat(threading.Thread):
    """Renews the attempt's lease and remembers when a renewal last got through."""

    def __init__(self, fence: Fence, *, model_name: str, every: float, settings: Settings, claimed_at: float
                 ) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{fence.job_id}")
        self.fence, self.model_name, self.every, self.settings = fence, model_name, every, settings
        self.stopped = threading.Event()
        # Monotonic time at which the last successful renewal was sent; the claim counts as the first.
        self.last_ok = claimed_at
        self.lost = False  # the row names another attempt, or none: the training process must stop
        self.ended = False  # the row is terminal under this attempt: no lease is needed any more

    def run(self) -> None:
        failures = 0
        while not self.stopped.wait(self.every):
            sent = time.monotonic()
            try:
                failpoints.hit(self.settings.failpoints, "heartbeat", model_name=self.model_name,
                               attempt=self.fence.attempt, data_dir=self.settings.data_dir)
                with session_scope() as s:
                    lease = jobrepo.heartbeat(s, self.fence)
            except Exception:
                failures += 1
                if failures == 1:  # once per outage, with the cause; the recovery is logged below
                    log.exception("heartbeat of %s failed; retrying every %.0fs", self.fence, self.every)
                continue
            if failures:
                log.info("heartbeat of %s got through again after %d failures", self.fence, failures)
                failures = 0
            if lease == "renewed":
                self.last_ok = sent
            elif lease == "ended":
                self.ended = True
                return
            else:
                self.lost = True
                return


class _CancelWatch(threading.Thread):
    """Reads the job's cancel flag every second; `requested_at` is when it was first seen set."""

    def __init__(self, fence: Fence) -> None:
        super().__init__(daemon=True, name=f"cancel-watch-{fence.job_id}")
        self.fence = fence
        self.stopped = threading.Event()
        self.requested_at: float | None = None

    def run(self) -> None:
        failures = 0
        while not self.stopped.wait(1.0):
            try:
                with session_scope() as s:
                    requested = jobrepo.is_cancel_requested(s, self.fence.job_id)
            except DBAPIError as exc:
                if not is_transient(exc):
                    raise
                failures += 1
                if failures == 1:  # the heartbeat decides how long the run may go on like this
                    log.warning("cancel check of %s failed (%s); going on", self.fence, exc.orig)
                continue
            failures = 0
            if requested:
                self.requested_at = time.monotonic()
                return


def execute_job(job_id: str, *, settings: Settings) -> str | None:
    """Returns the job's final status, or None when the job was not ours to run (or no longer is)."""
    worker_id = worker_identity()
    claimed_at = time.monotonic()  # before the claim: the lease it starts is not older than this
    job = in_session(lambda s: jobrepo.claim(s, job_id, worker_id=worker_id), retry_for=settings.lease_seconds,
                     what=f"claiming job {job_id}")
    if job is None:
        log.info("job %s is not queued (or already claimed): nothing to do", job_id)
        return None
    fence = Fence(job_id=job_id, worker_id=worker_id, attempt=job.attempt)
    store = ArtifactStore(settings.data_dir)
    logs = store.job_dir(job_id) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"attempt-{fence.attempt}.log"
    log.info("job %s attempt %d: starting training process (log: %s)", job_id, fence.attempt, log_path)

    heartbeat = _Heartbeat(fence, model_name=job.model_name, every=settings.heartbeat_seconds,
                           settings=settings, claimed_at=claimed_at)
    heartbeat.start()
    # Stop while the lease surely still holds: one heartbeat before it could have expired in the database.
    vouch_for = settings.lease_seconds - settings.heartbeat_seconds
    started = time.monotonic()
    cancel_seen_at: float | None = None
    # In threads of their own: this loop decides the SIGKILL that fencing relies on and must never wait on a
    # database that hangs (a partition drops packets: a query can block for minutes).
    cancel_watch = _CancelWatch(fence)
    cancel_watch.start()
    timed_out = False
    term_sent_at: float | None = None
    abandoned: str | None = None
    with log_path.open("ab") as out:
        proc = _start_child([job_id, worker_id, str(os.getpid()), str(fence.attempt)], out=out, log_path=log_path,
                            warm=settings.warm_training_process)
        try:
            last_check = 0.0
            while proc.poll() is None:
                time.sleep(0.2)
                now = time.monotonic()
                if heartbeat.lost:
                    abandoned = "the job row no longer names this attempt (re-queued or claimed by another)"
                elif not heartbeat.ended and now - heartbeat.last_ok > vouch_for:
                    abandoned = (f"its last successful heartbeat was {now - heartbeat.last_ok:.1f}s ago and the "
                                 f"lease is {settings.lease_seconds:.0f}s: another attempt may start")
                if abandoned is not None:
                    log.error("%s: stopping the training process at once (SIGKILL) and writing nothing for this "
                              "attempt: %s", fence, abandoned)
                    _signal_group(proc, signal.SIGKILL)
                    proc.wait()
                    break
                if cancel_seen_at is None and cancel_watch.requested_at is not None:
                    cancel_seen_at = cancel_watch.requested_at
                if now - last_check >= 1.0:
                    last_check = now
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
            cancel_watch.stopped.set()
            heartbeat.join(timeout=5)

    if abandoned is not None:
        return None
    return _settle(fence, proc.returncode, timed_out=timed_out, log_path=log_path, settings=settings)


def _settle(fence: Fence, returncode: int, *, timed_out: bool, log_path: Path, settings: Settings) -> str | None:
    """The child normally writes the outcome; when it died without doing so, write it here — for this attempt
    only: a row that another attempt owns is left alone (None)."""
    job_id = fence.job_id

    def settle(s: Session) -> str | None:
        job = jobrepo.get_job(s, job_id, for_update=True)
        if job.status in jobrepo.TERMINAL:
            return job.status
        if (job.worker_id, job.attempt) != (fence.worker_id, fence.attempt) or job.status not in jobrepo.LIVE:
            log.warning("%s ended (exit code %s) after the job passed to another attempt; writing nothing",
                        fence, returncode)
            return None
        if job.cancel_requested:
            jobrepo.finish(s, job_id, fence=fence, status=jobrepo.CANCELLED)
            return jobrepo.CANCELLED
        if timed_out:
            jobrepo.finish(
                s, job_id, fence=fence, status=jobrepo.FAILED, error_type="user",
                error_message=f"job exceeded the maximum duration of {settings.max_job_seconds:.0f}s and was "
                + ("stopped; use fewer epochs/max_steps or a smaller dataset" if (job.kind or "train") == "train"
                   else f"stopped; the {job.kind} can be retried, or FTSERVE_MAX_JOB_SECONDS raised"),
            )
            return jobrepo.FAILED
        if returncode == EXIT_DB_UNAVAILABLE:
            return _give_back(s, fence, settings=settings, why=f"attempt {fence.attempt} lost the database")
        how = f"signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
        tail = scrub_paths(_tail(log_path))
        jobrepo.finish(
            s, job_id, fence=fence, status=jobrepo.FAILED, error_type="system",
            error_message=f"{'training' if (job.kind or 'train') == 'train' else job.kind} process ended with {how} "
            "before finishing"
            + (f"; last log lines:\n{tail}" if tail else ""),
        )
        return jobrepo.FAILED

    try:
        status = in_session(settle, retry_for=settings.lease_seconds, what=f"settling {fence}")
    except Superseded as exc:
        log.warning("%s", exc)
        return None
    _after_give_back(job_id, status, settings=settings)
    return status


def _give_back(s: Session, fence: Fence, *, settings: Settings, why: str) -> str:
    """An attempt that ended without an outcome: re-queue its job for the next attempt, or fail it once the
    attempts are used up. Raises Superseded when the attempt no longer owns the row."""
    jobrepo.hold(s, fence)
    job = jobrepo.get_job(s, fence.job_id)
    if job.cancel_requested:
        jobrepo.finish(s, job.id, fence=fence, status=jobrepo.CANCELLED)
        return jobrepo.CANCELLED
    if job.attempt >= settings.max_attempts:
        jobrepo.finish(
            s, job.id, fence=fence, status=jobrepo.FAILED, error_type="system",
            error_message=f"the worker running this job was lost {job.attempt} times "
            f"(maximum attempts: {settings.max_attempts}; the last time: {why}); not retrying",
        )
        return jobrepo.FAILED
    jobrepo.requeue(s, job.id, fence=fence, message=f"worker lost ({why}); job re-queued")
    return jobrepo.QUEUED


def _after_give_back(job_id: str, status: str | None, *, settings: Settings, send: Any = None) -> None:
    if status == jobrepo.CANCELLED:
        store = ArtifactStore(settings.data_dir)
        store.remove_tree(store.checkpoints_dir(job_id))
    elif status == jobrepo.QUEUED:
        from worker.dispatch import send_job

        try:
            (send or send_job)(job_id)
        except Exception:
            # The job is queued in the database; the reconciler re-sends it when the broker is back.
            log.exception("could not send re-queued job %s now; the reconciler will", job_id)


def reconcile(settings: Settings, *, send: Any = None) -> dict[str, int]:
    """Re-send queued jobs whose message may be lost; re-queue or fail jobs whose worker died."""
    from worker.dispatch import send_job

    sender = send or send_job
    counts = {"resent": 0, "requeued": 0, "failed": 0}
    cutoff = jobrepo.utcnow() - timedelta(seconds=settings.lease_seconds)
    with session_scope() as s:
        expired = [Fence(job_id=j.id, worker_id=j.worker_id or "", attempt=j.attempt, expired_before=cutoff)
                   for j in jobrepo.expired_leases(s, lease=timedelta(seconds=settings.lease_seconds))]
    for fence in expired:
        try:
            with session_scope() as s:
                status = _give_back(s, fence, settings=settings, why="its lease expired")
        except Superseded:
            log.info("%s renewed its lease or ended meanwhile; leaving it", fence)
            continue
        if status == jobrepo.QUEUED:
            counts["requeued"] += 1
        elif status == jobrepo.FAILED:
            counts["failed"] += 1
        _after_give_back(fence.job_id, status, settings=settings, send=sender)
    with session_scope() as s:
        stale = jobrepo.stale_queued(s, older_than=timedelta(seconds=settings.requeue_after_seconds))
        for job_id in stale:
            jobrepo.get_job(s, job_id).enqueued_at = jobrepo.utcnow()
    for job_id in stale:
        sender(job_id)
    counts["resent"] = len(stale)
    return counts
