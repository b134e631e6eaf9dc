"""Job rows: create, claim (compare-and-set), progress, per-job event sequence, terminal states."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.orm import Session

from core.errors import Conflict, NotFound
from registry.models import Job, JobEvent, utcnow

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, CANCELLING = (
    "queued", "running", "succeeded", "failed", "cancelled", "cancelling",
)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
ACTIVE = (QUEUED, RUNNING, CANCELLING)


def get_job(session: Session, job_id: str, *, for_update: bool = False) -> Job:
    stmt = select(Job).where(Job.id == job_id)
    if for_update:
        stmt = stmt.with_for_update()
    job = session.scalars(stmt).first()
    if job is None:
        raise NotFound(f"job '{job_id}' not found")
    return job


def add_event(session: Session, job_id: str, type_: str, message: str = "", data: dict[str, Any] | None = None
              ) -> int:
    """Append an event with the job's next sequence number.

    The counter lives on the job row, so the UPDATE takes the row lock: events of one job commit
    in id order and a reader polling `after=<id>` never skips a late commit.
    """
    seq = session.execute(
        update(Job).where(Job.id == job_id).values(next_event_id=Job.next_event_id + 1)
        .returning(Job.next_event_id)
    ).scalar_one()
    session.add(JobEvent(job_id=job_id, id=seq, type=type_, message=message, data=data or {}))
    return int(seq)


def create_job(session: Session, job: Job) -> Job:
    job.status = QUEUED
    job.enqueued_at = utcnow()
    session.add(job)
    session.flush()
    add_event(session, job.id, "status", "job queued", {"status": QUEUED})
    return job


def claim(session: Session, job_id: str, *, worker_id: str) -> Job | None:
    """queued → running for exactly one worker; None when someone else has it or it is not queued."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == QUEUED, Job.cancel_requested.is_(False))
        .values(status=RUNNING, worker_id=worker_id, attempt=Job.attempt + 1, heartbeat_at=now,
                started_at=func.coalesce(Job.started_at, now), error_type=None, error_message=None)
    )
    if result.rowcount != 1:
        return None
    job = get_job(session, job_id)
    session.refresh(job)
    return job


def heartbeat(session: Session, job_id: str, *, worker_id: str) -> bool:
    """Renew the lease; False when the job is no longer ours (re-queued, cancelled…)."""
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.worker_id == worker_id, Job.status.in_((RUNNING, CANCELLING)))
        .values(heartbeat_at=utcnow())
    )
    return result.rowcount == 1


def set_progress(session: Session, job_id: str, progress: dict[str, Any]) -> None:
    session.execute(update(Job).where(Job.id == job_id).values(progress=progress))


def finish(
    session: Session,
    job_id: str,
    *,
    status: str,
    error_type: str | None = None,
    error_message: str | None = None,
    metrics: dict[str, Any] | None = None,
    model_version: int | None = None,
) -> None:
    values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "error_type": error_type,
                              "error_message": error_message}
    if metrics is not None:
        values["metrics"] = metrics
    if model_version is not None:
        values["model_version"] = model_version
    session.execute(update(Job).where(Job.id == job_id).values(**values))
    data: dict[str, Any] = {"status": status}
    if error_type:
        data["error"] = {"type": error_type, "message": error_message}
    add_event(session, job_id, "status", error_message or f"job {status}", data)


def request_cancel(session: Session, job_id: str) -> Job:
    job = get_job(session, job_id, for_update=True)
    if job.status in (SUCCEEDED, FAILED):
        raise Conflict(f"job '{job_id}' already {job.status}; only queued or running jobs can be cancelled")
    if job.status in (CANCELLED, CANCELLING):
        return job
    job.cancel_requested = True
    if job.status == QUEUED:
        job.status = CANCELLED
        job.finished_at = utcnow()
        add_event(session, job_id, "status", "job cancelled before it started", {"status": CANCELLED})
    else:
        job.status = CANCELLING
        add_event(session, job_id, "status", "cancel requested; stopping at the next step", {"status": CANCELLING})
    session.flush()
    return job


def is_cancel_requested(session: Session, job_id: str) -> bool:
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def queue_position(session: Session, job: Job) -> int | None:
    if job.status != QUEUED:
        return None
    ahead = session.scalar(
        select(func.count()).select_from(Job).where(
            Job.status == QUEUED,
            (Job.created_at < job.created_at) | and_(Job.created_at == job.created_at, Job.id < job.id),
        )
    )
    return int(ahead or 0)


def list_events(session: Session, job_id: str, *, after: int, limit: int) -> tuple[list[JobEvent], bool]:
    rows = session.scalars(
        select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after).order_by(JobEvent.id)
        .limit(limit + 1)
    ).all()
    return list(rows[:limit]), len(rows) > limit


def stale_queued(session: Session, *, older_than: timedelta) -> list[str]:
    cutoff = utcnow() - older_than
    return list(session.scalars(select(Job.id).where(Job.status == QUEUED, Job.enqueued_at < cutoff)).all())


def expired_leases(session: Session, *, lease: timedelta) -> list[Job]:
    cutoff = utcnow() - lease
    return list(session.scalars(
        select(Job).where(Job.status.in_((RUNNING, CANCELLING)), Job.heartbeat_at < cutoff)
    ).all())


def as_utc(value: datetime | None) -> datetime | None:
    # SQLite returns naive datetimes; everything we store is UTC.
    if value is None or value.tzinfo is not None:
        return value
    from datetime import UTC

    return value.replace(tzinfo=UTC)
