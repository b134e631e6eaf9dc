"""SQLAlchemy tables. Schema changes go through Alembic (registry/migrations)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dict[str, Any]: JSON,
        list[Any]: JSON,
        datetime: DateTime(timezone=True),
    }


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    name: Mapped[str] = mapped_column(String(256))
    file_name: Mapped[str] = mapped_column(String(256))
    format: Mapped[str] = mapped_column(String(16))
    num_rows: Mapped[int] = mapped_column(Integer)
    columns: Mapped[list[Any]] = mapped_column(JSON)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    # Read once at upload (registry/datafiles.py): per-column types and value counts, and a bounded preview.
    profile: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DatasetCheck(Base):
    """The outcome of a row-level check that a profile cannot answer (QA answer offsets), per dataset and
    (task, columns): `error` is None when the rows passed."""

    __tablename__ = "dataset_checks"

    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
        Index("ix_jobs_status_enqueued_at", "status", "enqueued_at"),
        Index("ix_jobs_model_kind", "model_name", "model_version", "kind"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    # "train" (the spec is a JobSpec), "import" (a hub model into the registry), "push" (a version to the Hub),
    # "evaluate" (a version on a dataset). Push and evaluate jobs name their version in model_name/model_version.
    kind: Mapped[str] = mapped_column(String(16), default="train", server_default="train")
    task: Mapped[str] = mapped_column(String(32))
    # The validated request (base_model, dataset, validation, columns, hyperparameters, model_name).
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    model_name: Mapped[str] = mapped_column(String(64), index=True)
    base_model_resolved: Mapped[str | None] = mapped_column(String(512), default=None)
    dataset_id: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    validation_dataset_id: Mapped[str | None] = mapped_column(String(64), default=None, index=True)

    attempt: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(256), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)
    enqueued_at: Mapped[datetime | None] = mapped_column(default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)

    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    data_stats: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    error_type: Mapped[str | None] = mapped_column(String(16), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    model_version: Mapped[int | None] = mapped_column(Integer, default=None)
    # What a non-training job produced: push {url, commit, repo_id}; evaluate {metrics, dataset_sha256}.
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # A push request's Hub token: never in a response, event, log or broker message; wiped when the job ends.
    secret: Mapped[str | None] = mapped_column(Text, default=None)
    # A training job's promotion decision: {alias, metric, new, current, moved}.
    promotion: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)

    idempotency_key: Mapped[str | None] = mapped_column(String(256), default=None)
    request_hash: Mapped[str | None] = mapped_column(String(64), default=None)
    next_event_id: Mapped[int] = mapped_column(Integer, default=0)

    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class JobEvent(Base):
    __tablename__ = "job_events"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    type: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RegisteredModel(Base):
    __tablename__ = "models"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    task: Mapped[str] = mapped_column(String(32))
    owner: Mapped[str] = mapped_column(String(128), index=True)
    # "private": its owner (and admins) only; "shared": every key may list, serve and build on it.
    visibility: Mapped[str] = mapped_column(String(16), default="private", server_default="private")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelVersion(Base):
    __tablename__ = "model_versions"

    name: Mapped[str] = mapped_column(ForeignKey("models.name"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    task: Mapped[str] = mapped_column(String(32))
    owner: Mapped[str] = mapped_column(String(128))
    job_id: Mapped[str | None] = mapped_column(String(64), default=None)
    base_model: Mapped[str] = mapped_column(String(512))
    base_model_resolved: Mapped[str] = mapped_column(String(512))
    dataset_id: Mapped[str | None] = mapped_column(String(64), default=None)
    dataset_sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    dataset_hub: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    path: Mapped[str] = mapped_column(String(1024))
    # Where the version came from: {source: trained|imported, job_id, base_model, base_revision, dataset,
    # libraries, device, training_seconds}.
    lineage: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # "full" (the folder holds every weight) or "lora" (an adapter that loads on its base; see training/lora.py).
    method: Mapped[str] = mapped_column(String(16), default="full", server_default="full")
    # An adapter's settings and base: {type, r, alpha, dropout, target_modules, modules_to_save,
    # base: {resolved: "hub:<id>" | "model:<name>:<v>", hub, revision, version}}; None for a full version. A
    # registered base is also its base_model_resolved, which keeps that version from being deleted.
    adapter: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # A deleted version keeps its row (and so its number, never reused); its files are gone.
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelAlias(Base):
    __tablename__ = "model_aliases"

    name: Mapped[str] = mapped_column(ForeignKey("models.name"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
