"""Request bodies and the contract's response shapes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from registry.jobs import as_utc
from registry.models import Dataset, Job, ModelVersion, RegisteredModel


def iso(value: datetime | None) -> str | None:
    value = as_utc(value)
    return value.isoformat().replace("+00:00", "Z") if value else None


def page(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {"data": items, "has_more": has_more}


def dataset_out(ds: Dataset) -> dict[str, Any]:
    return {"id": ds.id, "name": ds.name, "format": ds.format, "num_rows": ds.num_rows, "columns": ds.columns,
            "size_bytes": ds.size_bytes, "sha256": ds.sha256, "owner": ds.owner, "created_at": iso(ds.created_at)}


def _ref_out(ref: dict[str, Any] | None) -> dict[str, Any] | None:
    if not ref:
        return ref
    if ref.get("id"):
        return {"id": ref["id"]}
    if ref.get("split_ratio") is not None:
        return {"split_ratio": ref["split_ratio"]}
    return {"hub": ref.get("hub"), "config": ref.get("config"), "split": ref.get("split")}


def job_out(job: Job, *, queue_position: int | None) -> dict[str, Any]:
    spec = job.spec
    model = None
    if job.model_version is not None:
        model = {"name": job.model_name, "version": job.model_version,
                 "ref": f"{job.model_name}:{job.model_version}"}
    return {
        "id": job.id,
        "kind": job.kind or "train",
        "status": job.status,
        "task": job.task,
        "base_model": spec.get("base_model"),
        "base_model_resolved": job.base_model_resolved,
        "dataset": _ref_out(spec.get("dataset")),
        "validation": _ref_out(spec.get("validation")),
        "columns": spec.get("columns"),
        "hyperparameters": spec.get("hyperparameters"),
        "model_name": job.model_name,
        "method": spec.get("method", "full") if (job.kind or "train") == "train" else None,
        "push": spec.get("push"),
        "license": spec.get("license"), "language": spec.get("language"),
        "queue_position": queue_position,
        "attempt": job.attempt,
        "owner": job.owner,
        "data_stats": job.data_stats,
        "progress": job.progress,
        "metrics": job.metrics,
        "error": {"type": job.error_type, "message": job.error_message} if job.error_type else None,
        "model": model,
        "result": job.result,
        "promote": spec.get("promote"),
        "promotion": job.promotion,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
    }


def evaluation_out(job: Job) -> dict[str, Any]:
    """An evaluation job as `…/evaluations/{id}` shows it: its data, its metrics once it succeeded."""
    result = job.result or {}
    return {
        "id": job.id, "status": job.status, "owner": job.owner,
        "model": {"name": job.model_name, "version": job.model_version,
                  "ref": f"{job.model_name}:{job.model_version}"},
        "dataset": _ref_out(job.spec.get("dataset")), "columns": job.spec.get("columns"),
        "dataset_sha256": result.get("dataset_sha256", job.spec.get("dataset_sha256")),
        "metrics": result.get("metrics"),
        "error": {"type": job.error_type, "message": job.error_message} if job.error_type else None,
        "created_at": iso(job.created_at), "finished_at": iso(job.finished_at),
    }


def version_out(mv: ModelVersion) -> dict[str, Any]:
    return {
        "name": mv.name, "version": mv.version, "ref": f"{mv.name}:{mv.version}", "task": mv.task,
        "owner": mv.owner, "job_id": mv.job_id, "base_model": mv.base_model,
        "base_model_resolved": mv.base_model_resolved,
        "dataset": {"id": mv.dataset_id, "sha256": mv.dataset_sha256} if mv.dataset_id else mv.dataset_hub,
        "hyperparameters": mv.hyperparameters, "metrics": mv.metrics, "created_at": iso(mv.created_at),
        "lineage": mv.lineage, "license": (mv.lineage or {}).get("license"),
        **method_out(mv),
    }


def method_out(mv: ModelVersion) -> dict[str, Any]:
    """A version's `method` ("full" or the adapter's settings) and, for an adapter, its `base`."""
    adapter = mv.adapter if mv.method == "lora" and isinstance(mv.adapter, dict) else None
    if adapter is None:
        return {"method": "full", "base": None}
    base = adapter.get("base") or {}
    return {"method": {k: adapter.get(k) for k in ("type", "r", "alpha", "dropout", "target_modules",
                                                   "modules_to_save")},
            "base": {k: base.get(k) for k in ("resolved", "hub", "revision", "version")}}


def model_out(model: RegisteredModel, *, latest: ModelVersion | None, aliases: dict[str, int]) -> dict[str, Any]:
    return {"name": model.name, "task": model.task, "owner": model.owner, "visibility": model.visibility,
            "latest_version": latest.version if latest else None, "aliases": aliases,
            "latest": version_out(latest) if latest else None, "created_at": iso(model.created_at)}


def non_empty_texts(value: list[str] | str) -> list[str]:
    texts = [value] if isinstance(value, str) else value
    if not texts:
        raise ValueError("inputs is empty: give a text or a non-empty list of texts")
    for i, text in enumerate(texts):
        if not text.strip():
            raise ValueError(f"inputs[{i}] is an empty string")
    return texts


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Bounds of predict fields (texts and their count are bounded by settings, checked in api/routes/predict.py).
MAX_REF_CHARS = 200  # a ref is at most a 64-character name, ':' or '@', and a version or alias
MAX_STOPS, MAX_STOP_CHARS = 16, 256
ModelRef = Annotated[str | None, Field(min_length=1, max_length=MAX_REF_CHARS)]


class ClassifyRequest(_Body):
    model: ModelRef = None
    inputs: list[str] | str
    top_k: int | None = Field(default=1, ge=1, le=100_000)

    @field_validator("inputs")
    @classmethod
    def _non_empty(cls, value: list[str] | str) -> list[str]:
        return non_empty_texts(value)


class QAItem(_Body):
    question: str = Field(min_length=1)
    context: str = Field(min_length=1)


class AnswerRequest(_Body):
    model: ModelRef = None
    question: str | None = Field(default=None, min_length=1)
    context: str | None = Field(default=None, min_length=1)
    inputs: list[QAItem] | None = None

    def items(self) -> list[QAItem]:
        if self.inputs is not None:
            if self.question is not None or self.context is not None:
                raise ValueError('give either "question" and "context", or "inputs", not both')
            if not self.inputs:
                raise ValueError("inputs is empty: give at least one {question, context} object")
            return self.inputs
        if self.question is None or self.context is None:
            raise ValueError('give "question" and "context" (or "inputs": [{"question", "context"}, …])')
        return [QAItem(question=self.question, context=self.context)]


class SummarizeRequest(_Body):
    model: ModelRef = None
    inputs: list[str] | str
    max_new_tokens: int = Field(default=64, ge=1)
    min_new_tokens: int = Field(default=0, ge=0)
    # The contract's defaults: greedy decoding, no n-gram blocking (beams and blocking are a request away).
    num_beams: int = Field(default=1, ge=1)
    length_penalty: float = Field(default=1.0, ge=-10, le=10)
    no_repeat_ngram_size: int = Field(default=0, ge=0, le=64)

    @field_validator("inputs")
    @classmethod
    def _non_empty(cls, value: list[str] | str) -> list[str]:
        return non_empty_texts(value)


class GenerateRequest(_Body):
    model: ModelRef = None
    prompt: str | None = None
    inputs: list[str] | None = None
    max_new_tokens: int = Field(default=64, ge=1)
    min_new_tokens: int = Field(default=0, ge=0)
    do_sample: bool = False
    # Logits are divided by the temperature: far below 0.01 they overflow to inf and sampling gets NaNs.
    temperature: float = Field(default=1.0, ge=0.01, le=100)
    top_p: float = Field(default=1.0, gt=0, le=1)
    top_k: int = Field(default=50, ge=0, le=1_000_000)
    repetition_penalty: float = Field(default=1.0, ge=0.01, le=100)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stop: list[Annotated[str, Field(max_length=MAX_STOP_CHARS)]] | None = Field(default=None, max_length=MAX_STOPS)
    stream: bool = False

    def prompts(self) -> list[str]:
        if (self.prompt is None) == (self.inputs is None):
            raise ValueError('give exactly one of "prompt" or "inputs"')
        prompts = [self.prompt] if self.prompt is not None else list(self.inputs or [])
        if not prompts:
            raise ValueError("inputs is empty: give at least one prompt")
        if self.stream and len(prompts) > 1:
            raise ValueError('"stream": true takes one prompt')
        if self.stop is not None and any(not s for s in self.stop):
            raise ValueError("stop sequences must be non-empty strings")
        return prompts

    def generation_params(self) -> dict[str, object]:
        return self.model_dump(exclude={"model", "prompt", "inputs", "stream"})
