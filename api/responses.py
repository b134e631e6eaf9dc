"""The API's response shapes, one pydantic model each, used as `response_model` so /openapi.json says what
every route returns — and what it answers when it refuses (`errors(...)`).

These are the server's own, strict models: a field a route returns but a model lacks is a 500 in the tests
(`extra="forbid"`), so the document cannot drift from the responses. The SDK (`ftserve.types`) has lenient
twins on purpose: a client must keep working against a newer server that adds fields.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


# --- errors ---------------------------------------------------------------------------------------------------

ErrorType = Literal["validation_error", "unauthorized", "forbidden", "not_found", "conflict", "payload_too_large",
                    "rate_limited", "not_ready", "timeout", "client_closed_request", "internal"]


class ErrorDetail(_Out):
    type: ErrorType
    message: str
    details: list[Any] = Field(description="Per-field problems of a validation error (`loc`, `msg`, `type`).")


class Error(_Out):
    """Every error answer: `{"error": {"type", "message", "details"}}`."""

    error: ErrorDetail


_WHAT = {
    401: "A key is needed (FTSERVE_API_KEYS is set) and was missing or wrong.",
    403: "Not allowed: another owner's shared model, an admin-only route, or (auth off) a non-loopback Host or a "
         "cross-site write.",
    404: "An id, name, version, alias or cursor that does not exist (or is another owner's private one).",
    405: "The path exists but not with this method; `Allow` lists the ones it has.",
    409: "In conflict with the current state (it says what is in the way).",
    413: "The body is over its size limit.",
    422: "A field is missing, unknown, out of range or inconsistent; the message names it.",
    429: "A queue or a per-owner limit is full; retry after `Retry-After` seconds.",
    503: "Not ready: the model's files cannot be loaded, or a dependency is down.",
    504: "The request passed its deadline (FTSERVE_REQUEST_TIMEOUT_SECONDS or X-Request-Timeout).",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The `responses=` entries for the error statuses a route can answer, all with the error shape."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"model": Error, "description": _WHAT[code]}
        if code == 429:
            entry["headers"] = {"Retry-After": {"description": "Seconds to wait before retrying.",
                                                "schema": {"type": "integer"}}}
        if code == 405:
            entry["headers"] = {"Allow": {"description": "The methods this path has.", "schema": {"type": "string"}}}
        out[code] = entry
    return out


# Every route: a key may be needed, and with auth off a request may be refused; any path answers 405 to a
# method it does not have, and any body over its cap is a 413 (api/limits.py).
COMMON = errors(401, 403, 405, 413)
# A route with parameters or a body.
VALIDATED = errors(422)


# --- datasets -------------------------------------------------------------------------------------------------

class Dataset(_Out):
    id: str
    name: str
    format: str
    num_rows: int
    columns: list[str]
    size_bytes: int
    sha256: str
    owner: str
    created_at: datetime


class DatasetDetail(Dataset):
    """`GET /datasets/{id}`: the first rows and the value types seen per column."""

    preview: list[dict[str, Any]]
    column_types: dict[str, list[str]]


class Page(_Out, Generic[T]):
    """A cursor page, newest first: pass the last item's id (a model's name) as `after` for the next one."""

    data: list[T]
    has_more: bool


# --- jobs -----------------------------------------------------------------------------------------------------

class UploadedRef(_Out):
    id: str


class SplitRef(_Out):
    split_ratio: float


class HubRef(_Out):
    hub: str | None
    config: str | None
    split: str | None


DataRef = UploadedRef | SplitRef | HubRef


class JobError(_Out):
    type: str = Field(description="`user` (the request can be fixed) or `system`.")
    message: str | None


class ModelRef(_Out):
    name: str
    version: int
    ref: str


class LoraMethod(_Out):
    """A LoRA adapter's settings (training/spec.py `LoraMethod`)."""

    type: Literal["lora"]
    r: int
    alpha: int
    dropout: float
    target_modules: list[str] | None = Field(
        description="The adapted layers; null on a queued job that left them to the architecture's default.")


class AdapterMethod(LoraMethod):
    """A LoRA adapter version's settings."""

    modules_to_save: list[str] = Field(description="The task head, trained whole and saved with the adapter.")


class AdapterBase(_Out):
    """The model a LoRA adapter version loads on."""

    resolved: str = Field(description="`hub:<id>` or `model:<name>:<version>`.")
    hub: str | None = Field(description="The hub id of a hub base.")
    revision: str | None = Field(description="The commit hash of the cached hub snapshot it was trained on, if known.")
    version: str | None = Field(description="`name:version` of a registered base.")


class Job(_Out):
    id: str
    kind: Literal["train", "import", "push", "evaluate"]
    status: Literal["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]
    task: str
    base_model: str | None
    base_model_resolved: str | None
    dataset: DataRef | None
    validation: DataRef | None
    columns: dict[str, str] | None
    hyperparameters: dict[str, Any] | None
    model_name: str | None
    method: Literal["full"] | LoraMethod | None = Field(
        description='A training job\'s method: "full" or a LoRA adapter\'s settings.')
    push: dict[str, Any] | None
    license: str | None
    language: list[str] | None
    queue_position: int | None = Field(description="0-based while queued, else null.")
    attempt: int
    owner: str
    data_stats: dict[str, Any] | None
    progress: dict[str, Any] | None = Field(description="`step`, `total_steps`, `epoch`, `eta_seconds`.")
    metrics: dict[str, Any] | None
    error: JobError | None
    model: ModelRef | None = Field(description="The registered version, once the job made one.")
    result: dict[str, Any] | None = Field(description="What an import, push or evaluation job produced.")
    promote: dict[str, Any] | None
    promotion: dict[str, Any] | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobEvent(_Out):
    id: int = Field(description="Counts up per job; `after` and `Last-Event-ID` take it.")
    type: str = Field(description="`status`, `log` or `metrics`.")
    created_at: datetime
    message: str | None
    data: dict[str, Any] | None


# --- models ---------------------------------------------------------------------------------------------------

class DatasetOfVersion(_Out):
    id: str
    sha256: str | None


class ModelVersion(_Out):
    name: str
    version: int
    ref: str
    task: str
    owner: str
    job_id: str | None
    base_model: str | None
    base_model_resolved: str | None
    dataset: DatasetOfVersion | dict[str, Any] | None = Field(
        description="`{id, sha256}` of an upload, `{hub, config, split}` of a hub dataset, null for an import.")
    hyperparameters: dict[str, Any] | None
    metrics: dict[str, Any] | None
    created_at: datetime
    lineage: dict[str, Any] | None
    license: str | None
    method: Literal["full"] | AdapterMethod = Field(
        description='"full" (every weight) or a LoRA adapter\'s settings.')
    base: AdapterBase | None = Field(description="What a LoRA adapter loads on; null for a full version.")


class Model(_Out):
    name: str
    task: str
    owner: str
    visibility: Literal["private", "shared"]
    latest_version: int | None
    aliases: dict[str, int]
    latest: ModelVersion | None
    created_at: datetime


class ModelDetail(Model):
    """`GET /models/{name}`: every live version too, newest first."""

    versions: list[ModelVersion]


class Comparison(_Out):
    versions: list[int]
    metrics: dict[str, dict[str, Any]]
    hyperparameters_differ: dict[str, dict[str, Any]]


class Evaluation(_Out):
    id: str
    status: str
    owner: str
    model: ModelRef
    dataset: DataRef | None
    columns: dict[str, str] | None
    dataset_sha256: str | None
    metrics: dict[str, Any] | None
    error: JobError | None
    created_at: datetime
    finished_at: datetime | None


class Push(_Out):
    id: str
    status: Literal["queued", "running", "succeeded", "failed"]
    repo_id: str | None
    revision: str | None
    private: bool | None
    commit_message: str | None
    url: str | None
    commit: str | None
    error: JobError | None
    created_at: datetime
    finished_at: datetime | None
    model: ModelRef


# --- predict --------------------------------------------------------------------------------------------------

class LabelScore(_Out):
    label: str
    score: float


class ClassifyResponse(_Out):
    model: str = Field(description="The version that answered, `name:version`.")
    predictions: list[list[LabelScore]] = Field(description="Per input, labels by score, `top_k` of them.")


class Answer(_Out):
    answer: str
    score: float
    start: int = Field(description="Character offsets: `context[start:end] == answer`.")
    end: int


class AnswerResponse(_Out):
    model: str
    answers: list[Answer]


class SummarizeResponse(_Out):
    model: str
    summaries: list[str]


class Generation(_Out):
    text: str = Field(description="The generated text, without the prompt.")
    finish_reason: str = Field(description="`length`, `stop`, `eos` (or `cancelled`).")
    tokens: int


class GenerateResponse(_Out):
    model: str
    generations: list[Generation]


# --- service --------------------------------------------------------------------------------------------------

class Health(_Out):
    status: Literal["ok"]


class Ready(_Out):
    status: Literal["ready"]
    checks: dict[str, str]


class NotReadyBody(_Out):
    status: Literal["not_ready"]
    checks: dict[str, str]
    error: ErrorDetail


# --- request bodies a route reads by hand ----------------------------------------------------------------------

def json_body(model: str) -> dict[str, Any]:
    """`openapi_extra` for a route that reads its JSON body itself (to hash it, or to choose between forms): the
    body's schema is the pydantic model `model`, added to the components by `api.main.openapi_schema`."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}}}}
