"""The resources (`client.datasets`, `client.jobs`, `client.models`) and the predict calls, shared by `Client` and
`AsyncClient`.

Each method builds a program (ftserve/_core.py) and hands it to the client's runner: with `Client` a method returns
its value (or an iterator), with `AsyncClient` an awaitable of it (or an async iterator). The annotations give
the sync client's types.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, overload

from ftserve._core import Core, Program, segment
from ftserve.types import (
    AnswerResponse,
    ClassifyResponse,
    Comparison,
    Dataset,
    GenerateResponse,
    Job,
    JobEvent,
    Model,
    ModelVersion,
    Push,
    SummarizeResponse,
)

if TYPE_CHECKING:
    from ftserve._client import BaseClient

StrPath = str | os.PathLike[str]


def _ref(value: Any) -> Any:
    """A dataset given as a `Dataset` or a `ds_…` id is sent as `{"id": …}`; a dict as it is."""
    if isinstance(value, Dataset):
        return {"id": value.id}
    if isinstance(value, str):
        return {"id": value}
    return value


class _Resource:
    def __init__(self, client: BaseClient) -> None:
        self._client = client
        self._core: Core = client._core

    def _run(self, program: Program[Any]) -> Any:
        return self._client._run(program)

    def _iterate(self, program: Program[Any]) -> Any:
        return self._client._iterate(program)


class Datasets(_Resource):
    def upload(self, path: StrPath, *, name: str | None = None) -> Dataset:
        """`POST /datasets`: a `.csv`, `.jsonl`, `.json`, `.parquet` or `.txt` file (retried on 429/503 only)."""
        return self._run(self._core.as_model(Dataset, self._core.upload_dataset(path, name=name)))

    def list(self, *, limit: int | None = None) -> Iterator[Dataset]:
        """Every dataset of the caller, newest first; `limit` is the page size (pages are fetched as needed)."""
        return self._iterate(self._core.paginate(Dataset, "/datasets", params={"limit": limit},
                                                 cursor=lambda d: d.id))

    def get(self, dataset_id: str) -> Dataset:
        """With `preview` (the first rows) and `column_types`."""
        return self._run(self._core.parsed(Dataset, "GET", f"/datasets/{segment(dataset_id)}", safe=True))

    def delete(self, dataset_id: str) -> None:
        return self._run(self._core.call("DELETE", f"/datasets/{segment(dataset_id)}", safe=True))


class Jobs(_Resource):
    def create(self, *, idempotency_key: str | None = None, **fields: Any) -> Job:
        """`POST /jobs` with the API's fields: `task`, `base_model`, `dataset` (`{"id": …}`, `{"hub": …}`, a
        `Dataset` or an id), `validation`, `columns`, `hyperparameters`, `model_name`, ….

        Sent with an `Idempotency-Key` (a new uuid4 unless given), so a retry after a lost response returns the
        job the first attempt made rather than making a second."""
        for key in ("dataset", "validation"):
            if key in fields:
                fields[key] = _ref(fields[key])
        return self._run(self._core.create_job(fields, idempotency_key))

    def list(self, *, status: str | None = None, kind: str | None = None, limit: int | None = None
             ) -> Iterator[Job]:
        return self._iterate(self._core.paginate(Job, "/jobs", params={"status": status, "kind": kind,
                                                                        "limit": limit}, cursor=lambda j: j.id))

    def get(self, job_id: str) -> Job:
        return self._run(self._core.parsed(Job, "GET", f"/jobs/{segment(job_id)}", safe=True))

    def cancel(self, job_id: str) -> Job:
        """Safe to repeat: cancelling a cancelled or cancelling job answers it again."""
        return self._run(self._core.parsed(Job, "POST", f"/jobs/{segment(job_id)}/cancel", safe=True))

    @overload
    def events(self, job_id: str, *, follow: Literal[False] = False, after: int = 0) -> list[JobEvent]: ...

    @overload
    def events(self, job_id: str, *, follow: Literal[True], after: int = 0) -> Iterator[JobEvent]: ...

    def events(self, job_id: str, *, follow: bool = False, after: int = 0) -> list[JobEvent] | Iterator[JobEvent]:
        """The events after event `after`, oldest first: the ones so far (every page), or with `follow=True` an
        iterator over the live stream that ends after the job's terminal status event. A dropped stream is
        resumed with `Last-Event-ID`: no event is missed or repeated."""
        if follow:
            return self._iterate(self._core.follow_events(job_id, after=after))
        return self._run(self._events_so_far(job_id, after))

    def _events_so_far(self, job_id: str, after: int) -> Program[list[JobEvent]]:
        out: list[JobEvent] = []
        yield from self._core.paginate(JobEvent, f"/jobs/{segment(job_id)}/events",
                                       params={"after": after or None, "limit": 1000}, cursor=lambda e: e.id,
                                       into=out)
        return out

    def wait(self, job_id: str, *, timeout: float | None = None, poll_interval: float = 0.5) -> Job:
        """Poll until the job has succeeded, failed or been cancelled, and return it (whatever its outcome:
        check `job.status` and `job.error`). Raises `JobWaitTimeout` after `timeout` seconds, if given."""
        return self._run(self._core.wait_job(job_id, timeout=timeout, poll_interval=poll_interval))


class Models(_Resource):
    def list(self, *, task: str | None = None, limit: int | None = None) -> Iterator[Model]:
        """The caller's models and every shared one, newest first."""
        return self._iterate(self._core.paginate(Model, "/models", params={"task": task, "limit": limit},
                                                 cursor=lambda m: m.name))

    def get(self, name: str) -> Model:
        """With `versions`, newest first."""
        return self._run(self._core.parsed(Model, "GET", f"/models/{segment(name)}", safe=True))

    def versions(self, name: str) -> list[ModelVersion]:
        return self._run(self._versions(name))

    def _versions(self, name: str) -> Program[list[ModelVersion]]:
        model = yield from self._core.parsed(Model, "GET", f"/models/{segment(name)}", safe=True)
        return list(model.versions or [])

    def version(self, name: str, version: int) -> ModelVersion:
        return self._run(self._core.parsed(ModelVersion, "GET", f"/models/{segment(name)}/versions/"
                                           f"{segment(version)}", safe=True))

    def set_alias(self, name: str, alias: str, version: int) -> Model:
        return self._run(self._core.parsed(Model, "PUT", f"/models/{segment(name)}/aliases/{segment(alias)}",
                                           safe=True, json={"version": version}))

    def delete_alias(self, name: str, alias: str) -> Model:
        return self._run(self._core.parsed(Model, "DELETE", f"/models/{segment(name)}/aliases/{segment(alias)}",
                                           safe=True))

    def set_visibility(self, name: str, visibility: Literal["private", "shared"]) -> Model:
        return self._run(self._core.parsed(Model, "PUT", f"/models/{segment(name)}", safe=True,
                                           json={"visibility": visibility}))

    def delete(self, name: str, version: int | None = None, *, force: bool = False) -> None:
        """One version (`DELETE /models/{name}/versions/{v}`), or every version of the model; a model with
        aliases is a `ConflictError` unless `force=True`."""
        if version is not None:
            return self._run(self._core.call("DELETE", f"/models/{segment(name)}/versions/{segment(version)}",
                                             safe=True))
        return self._run(self._core.call("DELETE", f"/models/{segment(name)}", safe=True,
                                         params={"force": "true"} if force else None))

    def card(self, name: str, version: int) -> str:
        """The version's model card (markdown, Hugging Face Hub format)."""
        return self._run(self._core.text(f"/models/{segment(name)}/versions/{segment(version)}/card",
                                         accept="text/markdown"))

    def export(self, name: str, version: int, path: StrPath) -> Path:
        """Download the version as a `.tar.gz` to `path` (a file, or a directory to put `{name}-{version}.tar.gz`
        in); returns the file written."""
        target = Path(path)
        if target.is_dir():
            target = target / f"{name}-{version}.tar.gz"
        return self._run(self._core.download(f"/models/{segment(name)}/versions/{segment(version)}/archive",
                                             target))

    def import_(self, name: str, path: StrPath | None = None, *, hub: str | None = None, task: str | None = None,
                revision: str | None = None) -> ModelVersion | Job:
        """A new version of `name`: from an archive file (`path`; the `ModelVersion`, servable at once), or from
        the Hugging Face Hub (`hub="org/repo"`; a `Job` of kind `import` to `jobs.wait` for)."""
        if (path is None) == (hub is None):
            raise ValueError("give exactly one of path (an archive) or hub (a Hugging Face model id)")
        if path is not None:
            if revision is not None:
                raise ValueError("revision is for a hub import")
            return self._run(self._core.as_model(ModelVersion, self._core.import_archive(name, path, task=task)))
        body = {k: v for k, v in {"hub": hub, "revision": revision, "task": task}.items() if v is not None}
        return self._run(self._core.parsed(Job, "POST", f"/models/{segment(name)}/versions", safe=False,
                                           json=body))

    def push(self, name: str, version: int, *, repo_id: str, private: bool | None = None,
             revision: str | None = None, commit_message: str | None = None, token: str | None = None) -> Push:
        """Queue a push of the version to a Hub repo (`status` queued; follow it with `get_push`)."""
        body = {"repo_id": repo_id, "private": private, "revision": revision, "commit_message": commit_message,
                "token": token}
        return self._run(self._core.parsed(Push, "POST", f"/models/{segment(name)}/versions/{segment(version)}"
                                           "/push", safe=False, json={k: v for k, v in body.items()
                                                                      if v is not None}))

    def pushes(self, name: str, version: int) -> Iterator[Push]:
        return self._iterate(self._core.paginate(
            Push, f"/models/{segment(name)}/versions/{segment(version)}/pushes", cursor=lambda p: p.id))

    def get_push(self, name: str, version: int, push_id: str) -> Push:
        return self._run(self._core.parsed(
            Push, "GET", f"/models/{segment(name)}/versions/{segment(version)}/pushes/{segment(push_id)}",
            safe=True))

    def compare(self, name: str, versions: list[int]) -> Comparison:
        return self._run(self._core.parsed(Comparison, "GET", f"/models/{segment(name)}/compare", safe=True,
                                           params={"versions": ",".join(str(v) for v in versions)}))


def _body(model: str | None, fields: dict[str, Any], **given: Any) -> dict[str, Any]:
    """The request body: the fields given, none of the unset ones (the server's defaults apply)."""
    body = {k: v for k, v in given.items() if v is not None}
    if model is not None:
        body["model"] = model
    return {**body, **fields}


class Predict:
    """`classify`, `answer`, `summarize`, `generate`: the API's field names as keyword arguments. Safe to repeat,
    so retried on connection errors too."""

    _core: Core

    def _run(self, program: Program[Any]) -> Any:
        raise NotImplementedError

    def _iterate(self, program: Program[Any]) -> Any:
        raise NotImplementedError

    def classify(self, inputs: str | list[str], *, model: str | None = None, **fields: Any) -> ClassifyResponse:
        """`client.classify(["great film"], model="sentiment").predictions[0][0].label`; fields: `top_k`."""
        return self._run(self._core.parsed(ClassifyResponse, "POST", "/classify", safe=True,
                                           json=_body(model, fields, inputs=inputs)))

    def answer(self, question: str | None = None, context: str | None = None, *, model: str | None = None,
               inputs: list[dict[str, str]] | None = None, **fields: Any) -> AnswerResponse:
        """One `question` and `context`, or `inputs=[{"question", "context"}, …]`."""
        return self._run(self._core.parsed(AnswerResponse, "POST", "/answer", safe=True,
                                           json=_body(model, fields, question=question, context=context,
                                                      inputs=inputs)))

    def summarize(self, inputs: str | list[str], *, model: str | None = None, **fields: Any) -> SummarizeResponse:
        """Fields: `max_new_tokens`, `min_new_tokens`, `num_beams`, `length_penalty`, `no_repeat_ngram_size`."""
        return self._run(self._core.parsed(SummarizeResponse, "POST", "/summarize", safe=True,
                                           json=_body(model, fields, inputs=inputs)))

    @overload
    def generate(self, prompt: str | None = None, *, model: str | None = None, inputs: list[str] | None = None,
                 stream: Literal[False] = False, **fields: Any) -> GenerateResponse: ...

    @overload
    def generate(self, prompt: str | None = None, *, model: str | None = None, inputs: list[str] | None = None,
                 stream: Literal[True], **fields: Any) -> Iterator[str]: ...

    def generate(self, prompt: str | None = None, *, model: str | None = None, inputs: list[str] | None = None,
                 stream: bool = False, **fields: Any) -> GenerateResponse | Iterator[str]:
        """Fields: `max_new_tokens`, `min_new_tokens`, `do_sample`, `temperature`, `top_p`, `top_k`,
        `repetition_penalty`, `seed`, `stop`. With `stream=True` (one prompt): an iterator over the text chunks as
        they are generated; an error mid-stream raises the API's error."""
        body = _body(model, fields, prompt=prompt, inputs=inputs)
        if stream:
            return self._iterate(self._core.generate_stream(body))
        return self._run(self._core.parsed(GenerateResponse, "POST", "/generate", safe=True, json=body))
