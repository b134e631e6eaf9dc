"""Job rows: create, claim (compare-and-set), progress, per-job event sequence, terminal states.

Every write a worker or its training process makes for a job goes through a `Fence`: the attempt it speaks
for. The write is one conditional UPDATE that matches only while the row is still that attempt's (same worker
id and attempt number, still running or cancelling); when it matches nothing the write raises `Superseded`
and leaves the row as it was. The API's own writes (create, cancel) are not fenced.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, and_, func, select, text, update
from sqlalchemy.orm import Session

from core.errors import Conflict, NotFound
from registry.access import EVERYONE, Viewer
from registry.models import Job, JobEvent, utcnow

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, CANCELLING = (
    "queued", "running", "succeeded", "failed", "cancelled", "cancelling",
)
TERMINAL = (SUCCEEDED, FAILED, CANCELLED)
ACTIVE = (QUEUED, RUNNING, CANCELLING)
LIVE = (RUNNING, CANCELLING)  # an attempt owns the row in these states


@dataclass(frozen=True)
class Fence:
    """The attempt a write speaks for; see the module docstring."""

    job_id: str
    worker_id: str
    attempt: int
    # Set on the reconciler's fences: it may act for a lost attempt only while that attempt's lease is still
    # expired, so a worker whose heartbeat got through meanwhile keeps its job.
    expired_before: datetime | None = None

    def matches(self) -> ColumnElement[bool]:
        cond = and_(Job.id == self.job_id, Job.worker_id == self.worker_id, Job.attempt == self.attempt,
                    Job.status.in_(LIVE))
        if self.expired_before is not None:
            cond = and_(cond, Job.heartbeat_at < self.expired_before)
        return cond

    def __str__(self) -> str:
        return f"job {self.job_id} attempt {self.attempt} (worker {self.worker_id})"


class Superseded(Exception):
    """The row no longer belongs to the fence's attempt: it was re-queued, finished or claimed by another."""

    def __init__(self, fence: Fence) -> None:
        super().__init__(f"{fence} no longer owns the job row; nothing was written")
        self.fence = fence


def _update_where(cond: ColumnElement[bool]) -> Any:
    # "fetch": the in-session evaluation that SQLAlchemy tries by default cannot compare SQLite's naive
    # datetimes with the reconciler's aware cutoff.
    return update(Job).where(cond).execution_options(synchronize_session="fetch")


def _fenced(job_id: str, fence: Fence) -> Fence:
    if fence.job_id != job_id:
        raise ValueError(f"a fence for job {fence.job_id} cannot write job {job_id}")
    return fence


def hold(session: Session, fence: Fence) -> None:
    """Check the fence and keep it until this transaction ends.

    An UPDATE, not a SELECT: it takes the row lock in PostgreSQL and the database write lock in SQLite, so
    no re-queue, cancel or claim can slip in between this check and the writes that follow it.
    """
    result = session.execute(_update_where(fence.matches()).values(attempt=Job.attempt))
    if result.rowcount != 1:
        raise Superseded(fence)


def get_job(session: Session, job_id: str, *, for_update: bool = False, viewer: Viewer = EVERYONE) -> Job:
    """The job, if `viewer` owns it: another owner's job is as unknown as a made-up id."""
    stmt = select(Job).where(Job.id == job_id)
    if for_update:
        stmt = stmt.with_for_update()
    job = session.scalars(stmt).first()
    if job is None or not viewer.owns(job.owner):
        raise NotFound(f"job '{job_id}' not found")
    return job


def add_event(session: Session, job_id: str, type_: str, message: str = "", data: dict[str, Any] | None = None,
              *, fence: Fence | None = None) -> int:
    """Append an event with the job's next sequence number; with a fence, only while its attempt owns the row.

    The counter lives on the job row, so the UPDATE takes the row lock: events of one job commit
    in id order and a reader polling `after=<id>` never skips a late commit.
    """
    where = Job.id == job_id if fence is None else _fenced(job_id, fence).matches()
    seq = session.execute(
        _update_where(where).values(next_event_id=Job.next_event_id + 1).returning(Job.next_event_id)
    ).scalar_one_or_none()
    if seq is None:
        if fence is not None:
            raise Superseded(fence)
        raise NotFound(f"job '{job_id}' not found")
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
    """queued → running for exactly one worker, counting the attempt; None when someone else has it or it is
    not queued. Asking again with the same worker id returns the job: a retry after a commit whose reply was
    lost must not leave a claimed attempt that nobody runs."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == QUEUED, Job.cancel_requested.is_(False))
        .values(status=RUNNING, worker_id=worker_id, attempt=Job.attempt + 1, heartbeat_at=now,
                started_at=func.coalesce(Job.started_at, now), error_type=None, error_message=None)
    )
    job = session.scalars(select(Job).where(Job.id == job_id)).first()
    if job is None:
        return None
    session.refresh(job)
    if result.rowcount != 1 and not (job.worker_id == worker_id and job.status in LIVE):
        return None
    return job


Lease = Literal["renewed", "ended", "lost"]


def heartbeat(session: Session, fence: Fence) -> Lease:
    """Renew the attempt's lease.

    `ended`: the row is terminal and still names this attempt (its training process wrote the outcome and is
    on its way out); `lost`: the row was re-queued or belongs to another attempt.
    """
    result = session.execute(_update_where(fence.matches()).values(heartbeat_at=utcnow()))
    if result.rowcount == 1:
        return "renewed"
    row = session.execute(select(Job.status, Job.worker_id, Job.attempt).where(Job.id == fence.job_id)).first()
    if row is not None and row.status in TERMINAL and (row.worker_id, row.attempt) == (fence.worker_id,
                                                                                        fence.attempt):
        return "ended"
    return "lost"


def _fenced_update(session: Session, job_id: str, fence: Fence, values: dict[str, Any]) -> None:
    result = session.execute(_update_where(_fenced(job_id, fence).matches()).values(**values))
    if result.rowcount != 1:
        raise Superseded(fence)


def set_progress(session: Session, job_id: str, progress: dict[str, Any], *, fence: Fence) -> None:
    _fenced_update(session, job_id, fence, {"progress": progress})


def set_data_stats(session: Session, job_id: str, stats: dict[str, Any], *, fence: Fence) -> None:
    _fenced_update(session, job_id, fence, {"data_stats": stats})


def set_spec_value(session: Session, job_id: str, key: str, value: Any, *, fence: Fence) -> None:
    """Replace one field of the job's stored spec with the value the run resolved (a LoRA method's default
    target_modules), so that the job echoes what it used."""
    job = get_job(session, job_id)
    _fenced_update(session, job_id, fence, {"spec": {**job.spec, key: value}})


def set_promotion(session: Session, job_id: str, promotion: dict[str, Any], *, fence: Fence) -> None:
    _fenced_update(session, job_id, fence, {"promotion": promotion})


def finish(
    session: Session,
    job_id: str,
    *,
    fence: Fence,
    status: str,
    error_type: str | None = None,
    error_message: str | None = None,
    metrics: dict[str, Any] | None = None,
    model_version: int | None = None,
    result: dict[str, Any] | None = None,
) -> None:
    """The attempt's outcome, written once; raises Superseded when another attempt or the reconciler owns the
    row. Writing the same outcome again is a no-op, so a retry after a commit whose reply was lost does not add
    a second terminal event. A job's secret (a push's Hub token) is wiped with it, whatever the outcome."""
    values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "error_type": error_type,
                              "error_message": error_message, "secret": None}
    if metrics is not None:
        values["metrics"] = metrics
    if result is not None:
        values["result"] = result
    if model_version is not None:
        values["model_version"] = model_version
    result = session.execute(_update_where(_fenced(job_id, fence).matches()).values(**values))
    if result.rowcount != 1:
        row = session.execute(select(Job.status, Job.worker_id, Job.attempt, Job.model_version)
                              .where(Job.id == job_id)).first()
        if row is not None and (row.status, row.worker_id, row.attempt) == (status, fence.worker_id,
                                                                            fence.attempt) and (
                model_version is None or row.model_version == model_version):
            return
        raise Superseded(fence)
    data: dict[str, Any] = {"status": status}
    if error_type:
        data["error"] = {"type": error_type, "message": error_message}
    add_event(session, job_id, "status", error_message or f"job {status}", data)


def request_cancel(session: Session, job_id: str, *, viewer: Viewer = EVERYONE) -> Job:
    job = get_job(session, job_id, for_update=True, viewer=viewer)
    if job.status in (SUCCEEDED, FAILED):
        raise Conflict(f"job '{job_id}' already {job.status}; only queued or running jobs can be cancelled")
    if job.status in (CANCELLED, CANCELLING):
        return job
    job.cancel_requested = True
    if job.status == QUEUED:
        job.status = CANCELLED
        job.finished_at = utcnow()
        job.secret = None
        add_event(session, job_id, "status", "job cancelled before it started", {"status": CANCELLED})
    else:
        job.status = CANCELLING
        add_event(session, job_id, "status", "cancel requested; stopping at the next step", {"status": CANCELLING})
    session.flush()
    return job


def requeue(session: Session, job_id: str, *, fence: Fence, message: str) -> None:
    """Give a lost attempt's job back to the queue; the next claim counts the next attempt."""
    _fenced_update(session, job_id, fence, {"status": QUEUED, "worker_id": None, "enqueued_at": utcnow()})
    add_event(session, job_id, "status", message, {"status": QUEUED, "attempt": fence.attempt})


def is_cancel_requested(session: Session, job_id: str, *, fence: Fence | None = None) -> bool:
    """With a fence, also a check that the attempt still owns the row (Superseded when it does not)."""
    if fence is None:
        return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))
    flag = session.scalar(select(Job.cancel_requested).where(_fenced(job_id, fence).matches()))
    if flag is None:
        raise Superseded(fence)
    return bool(flag)


def lock_owner(session: Session, owner: str) -> None:
    """Serialize this transaction with the owner's other submissions until it ends, so that a count of their
    active jobs followed by an insert is one step (PostgreSQL; SQLite serializes every writer already)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(804203, hashtext(:owner))"), {"owner": owner})


def active_jobs_of(session: Session, owner: str) -> int:
    return int(session.scalar(select(func.count()).select_from(Job).where(Job.owner == owner,
                                                                          Job.status.in_(ACTIVE))) or 0)


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
