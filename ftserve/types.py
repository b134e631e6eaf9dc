"""The API's response shapes as pydantic models.

Every model allows extra fields and gives every field but the identifying ones a default, so a server that adds a
field (or leaves one out) never breaks a client: new fields are kept and readable as attributes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


class APIModel(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())


class Error(APIModel):
    """The body of every error answer: `{"error": {"type", "message", "details"}}` (this is the inner object)."""

    type: str
    message: str = ""
    details: list[Any] = []


class Dataset(APIModel):
    id: str
    name: str | None = None
    format: str | None = None
    num_rows: int | None = None
    columns: list[str] = []
    size_bytes: int | None = None
    sha256: str | None = None
    owner: str | None = None
    created_at: datetime | None = None
    # GET /datasets/{id} only:
    preview: list[dict[str, Any]] | None = None
    column_types: dict[str, Any] | None = None


class JobError(APIModel):
    type: str
    message: str = ""


class ModelRef(APIModel):
    name: str
    version: int
    ref: str


class Job(APIModel):
    id: str
    status: str
    kind: str = "train"
    task: str | None = None
    base_model: str | None = None
    base_model_resolved: str | None = None
    dataset: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None
    columns: dict[str, Any] | None = None
    hyperparameters: dict[str, Any] | None = None
    model_name: str | None = None
    method: str | dict[str, Any] | None = None  # "full" or a LoRA adapter's settings
    queue_position: int | None = None
    attempt: int | None = None
    owner: str | None = None
    data_stats: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    error: JobError | None = None
    model: ModelRef | None = None
    result: dict[str, Any] | None = None
    promotion: dict[str, Any] | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def done(self) -> bool:
        """Succeeded, failed or cancelled: the job will not change any more."""
        return self.status in TERMINAL_STATUSES


class JobEvent(APIModel):
    id: int
    type: str
    created_at: datetime | None = None
    message: str | None = None
    data: dict[str, Any] = {}

    @property
    def terminal(self) -> bool:
        """The last event of a job: its status event for succeeded, failed or cancelled."""
        return self.type == "status" and self.data.get("status") in TERMINAL_STATUSES


class ModelVersion(APIModel):
    name: str
    version: int
    ref: str | None = None
    task: str | None = None
    owner: str | None = None
    job_id: str | None = None
    base_model: str | None = None
    base_model_resolved: str | None = None
    dataset: dict[str, Any] | None = None
    hyperparameters: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    lineage: dict[str, Any] | None = None
    method: str | dict[str, Any] = "full"  # "full" or a LoRA adapter's settings
    base: dict[str, Any] | None = None  # what an adapter loads on: {resolved, hub, revision, version}
    created_at: datetime | None = None


class Model(APIModel):
    name: str
    task: str | None = None
    owner: str | None = None
    visibility: str | None = None
    latest_version: int | None = None
    aliases: dict[str, int] = {}
    latest: ModelVersion | None = None
    created_at: datetime | None = None
    # GET /models/{name} only:
    versions: list[ModelVersion] | None = None


class Comparison(APIModel):
    versions: list[int]
    metrics: dict[str, dict[str, Any]] = {}
    hyperparameters_differ: dict[str, dict[str, Any]] = {}


class Push(APIModel):
    id: str
    status: str
    repo_id: str | None = None
    revision: str | None = None
    private: bool | None = None
    commit_message: str | None = None
    url: str | None = None
    commit: str | None = None
    error: JobError | None = None
    created_at: datetime | None = None
    finished_at: datetime | None = None
    model: ModelRef | None = None


class Page(APIModel, Generic[T]):
    data: list[T]
    has_more: bool = False


class LabelScore(APIModel):
    label: str
    score: float


class ClassifyResponse(APIModel):
    model: str
    predictions: list[list[LabelScore]]


class Answer(APIModel):
    answer: str
    score: float
    start: int
    end: int


class AnswerResponse(APIModel):
    model: str
    answers: list[Answer]


class SummarizeResponse(APIModel):
    model: str
    summaries: list[str]


class Generation(APIModel):
    text: str
    finish_reason: str | None = None
    tokens: int | None = None


class GenerateResponse(APIModel):
    model: str
    generations: list[Generation]
