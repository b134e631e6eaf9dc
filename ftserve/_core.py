"""The client's logic, written once for the sync and the async client.

Each operation is a *program*: a generator that yields instructions (send a request, read a line of a streamed
body, sleep, hand a value to the caller) and gets their results back. `Client` runs programs with blocking
httpx calls and `time.sleep`, `AsyncClient` with awaited ones; retries, paging, SSE parsing and reconnection,
and error mapping live here only.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
import uuid
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from ftserve import __version__
from ftserve.errors import (
    APIConnectionError,
    APIError,
    JobWaitTimeout,
    error_from_response,
    make_error,
    parse_retry_after,
)
from ftserve.types import Job, JobEvent

log = logging.getLogger("ftserve")
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
DEFAULT_MAX_RETRIES = 2
RETRY_STATUSES = frozenset({429, 503})


# -- instructions -------------------------------------------------------------------------------------------
@dataclass
class Send:
    """Send a request; the result is the `httpx.Response` (read whole unless `stream`)."""

    method: str
    url: str
    params: dict[str, Any] | None = None
    json: Any = None
    data: dict[str, Any] | None = None
    files: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    stream: bool = False


@dataclass
class Read:
    """The next line (`kind="lines"`) or chunk (`"bytes"`) of a streamed response; None at its end."""

    response: httpx.Response
    kind: str = "lines"


@dataclass
class ReadBody:
    """Read the rest of a streamed response (to build an error from it)."""

    response: httpx.Response


@dataclass
class Close:
    response: httpx.Response


@dataclass
class Sleep:
    seconds: float


@dataclass
class Emit:
    """Hand one value to the caller of an iterating operation."""

    value: Any


@dataclass
class Done:
    value: Any


Instruction = Send | Read | ReadBody | Close | Sleep | Emit
Program = Generator[Instruction, Any, T]


class Machine:
    """One running program and the streamed responses it has open (closed by the runner however it ends)."""

    def __init__(self, program: Program[Any]) -> None:
        self.program = program
        self.open: list[httpx.Response] = []
        self.iterators: dict[int, Any] = {}

    def step(self, value: Any = None, error: BaseException | None = None) -> Instruction | Done:
        try:
            if error is not None:
                return self.program.throw(error)
            return self.program.send(value)
        except StopIteration as stop:
            return Done(stop.value)

    def opened(self, response: httpx.Response) -> None:
        self.open.append(response)

    def closed(self, response: httpx.Response) -> None:
        self.iterators.pop(id(response), None)
        if response in self.open:
            self.open.remove(response)

    def iterator(self, instr: Read, make: Callable[[], Any]) -> Any:
        key = id(instr.response)
        if key not in self.iterators:
            self.iterators[key] = make()
        return self.iterators[key]


# -- server-sent events -------------------------------------------------------------------------------------
@dataclass
class ServerEvent:
    event: str
    data: str
    id: str | None


class SSEDecoder:
    """Lines in, events out (the WHATWG event-stream format: `id:`, `event:`, `data:`, `:` comments)."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, line: str) -> ServerEvent | None:
        if not line:
            if not self._data and not self._event:
                return None
            out = ServerEvent(self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data, self._id = "", [], None
            return out
        if line.startswith(":"):
            return None  # a comment: the server's keepalive
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        return None


def next_event(response: httpx.Response, decoder: SSEDecoder) -> Program[ServerEvent | None]:
    """The next event of a streamed response; None at its end."""
    while (line := (yield Read(response))) is not None:
        event = decoder.feed(line)
        if event is not None:
            return event
    return None


# -- the shared core ----------------------------------------------------------------------------------------
def segment(value: str | int) -> str:
    """One path segment, quoted: a name or id can never reach another route."""
    return quote(str(value), safe="")


def _without_none(fields: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


@dataclass
class Options:
    base_url: str
    api_key: str | None = field(default=None, repr=False)
    max_retries: int = DEFAULT_MAX_RETRIES
    backoff_base: float = 0.5
    backoff_cap: float = 8.0
    # A server asking for a longer wait than this is not waited for: the error is raised with its retry_after.
    max_retry_after: float = 60.0

    @classmethod
    def resolve(cls, base_url: str | None, api_key: str | None, max_retries: int) -> Options:
        url = base_url or os.environ.get("FTSERVE_URL") or DEFAULT_URL
        key = api_key if api_key is not None else (os.environ.get("FTSERVE_API_KEY") or None)
        if max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        return cls(base_url=url.rstrip("/"), api_key=key, max_retries=max_retries)


class Core:
    """Builds requests and the programs of every operation."""

    def __init__(self, options: Options) -> None:
        self.options = options

    # requests --------------------------------------------------------------------------------------------
    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": f"ftserve-python/{__version__}"}
        if self.options.api_key:
            headers["Authorization"] = f"Bearer {self.options.api_key}"
        return {**headers, **(extra or {})}

    def backoff(self, attempt: int) -> float:
        """Exponential with jitter: about 0.5, 1, 2, 4 s … capped."""
        delay = min(self.options.backoff_cap, self.options.backoff_base * 2 ** attempt)
        return delay * (0.5 + random.random() / 2)

    def request(self, method: str, path: str, *, safe: bool, params: Mapping[str, Any] | None = None,
                json: Any = None, data: Mapping[str, Any] | None = None, files: dict[str, Any] | None = None,
                headers: Mapping[str, str] | None = None, stream: bool = False) -> Program[httpx.Response]:
        """Send with retries and return a successful response, else raise the API's error.

        A connection failure is retried only when `safe` (the request may be repeated: GET, PUT, DELETE, predicts,
        a create with an Idempotency-Key); a 429 or 503 always, after the server's `Retry-After`."""
        instr = Send(method, self.options.base_url + path, params=_without_none(params or {}) or None,
                     json=json, data=dict(data) if data else None, files=files, headers=self.headers(headers),
                     stream=stream)
        attempt = 0
        lost = False  # an earlier attempt got no answer: the server may have acted on it
        while True:
            for value in (files or {}).values():  # a retried upload sends the file from its start again
                handle = value[1] if isinstance(value, tuple) else value
                if hasattr(handle, "seek"):
                    handle.seek(0)
            try:
                response: httpx.Response = yield instr
            except httpx.TransportError as exc:
                if not safe or attempt >= self.options.max_retries:
                    raise APIConnectionError(f"{method} {path}: {type(exc).__name__}: {exc}".rstrip(": ")) from exc
                delay = self.backoff(attempt)
                lost = True
                log.info("%s %s failed (%s); retrying in %.1fs", method, path, type(exc).__name__, delay)
            else:
                if response.status_code < 400:
                    return response
                if method == "DELETE" and lost and response.status_code == 404:
                    # The lost attempt deleted it: what the caller asked for is done.
                    return httpx.Response(204, request=response.request)
                if stream:
                    yield ReadBody(response)
                    yield Close(response)
                error = error_from_response(response)
                wait = parse_retry_after(response.headers.get("retry-after"))
                if (response.status_code not in RETRY_STATUSES or attempt >= self.options.max_retries
                        or (wait is not None and wait > self.options.max_retry_after)):
                    raise error
                delay = wait if wait is not None else self.backoff(attempt)
                log.info("%s %s answered %s; retrying in %.1fs", method, path, response.status_code, delay)
            attempt += 1
            yield Sleep(delay)

    def call(self, method: str, path: str, *, safe: bool, **kwargs: Any) -> Program[Any]:
        """The JSON of a successful answer (None for a 204)."""
        response = yield from self.request(method, path, safe=safe, **kwargs)
        if response.status_code == 204 or not response.content:
            return None
        return response.json()

    def as_model(self, cls: type[M], program: Program[Any]) -> Program[M]:
        return cls.model_validate((yield from program))

    def parsed(self, cls: type[M], method: str, path: str, *, safe: bool, **kwargs: Any) -> Program[M]:
        return cls.model_validate((yield from self.call(method, path, safe=safe, **kwargs)))

    def text(self, path: str, *, accept: str) -> Program[str]:
        response = yield from self.request("GET", path, safe=True, headers={"Accept": accept})
        return response.text

    def paginate(self, cls: type[M], path: str, *, params: Mapping[str, Any] | None = None,
                 cursor: Callable[[M], str | int], into: list[M] | None = None) -> Program[None]:
        """Every item of a cursor-paginated list, page after page (`has_more`, then `after=<last item's cursor>`):
        handed out one by one, or appended to `into`."""
        params = dict(params or {})
        while True:
            body = yield from self.call("GET", path, safe=True, params=params)
            items = [cls.model_validate(item) for item in body.get("data", [])]
            for item in items:
                if into is None:
                    yield Emit(item)
                else:
                    into.append(item)
            if not body.get("has_more") or not items:
                return
            params["after"] = cursor(items[-1])

    # jobs ------------------------------------------------------------------------------------------------
    def create_job(self, body: dict[str, Any], idempotency_key: str | None) -> Program[Job]:
        # One key for every attempt: the server answers a repeat with the first job, so a retried create
        # (the response lost after the server made the job) never makes two.
        key = idempotency_key or str(uuid.uuid4())
        return (yield from self.parsed(Job, "POST", "/jobs", safe=True, json=body,
                                       headers={"Idempotency-Key": key}))

    def wait_job(self, job_id: str, *, timeout: float | None, poll_interval: float,
                 max_poll_interval: float = 5.0) -> Program[Job]:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = poll_interval
        while True:
            job = yield from self.parsed(Job, "GET", f"/jobs/{segment(job_id)}", safe=True)
            if job.done:
                return job
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise JobWaitTimeout(f"job {job_id} is still {job.status} after {timeout}s", job=job)
            yield Sleep(delay if left is None else min(delay, left))
            delay = min(max_poll_interval, delay * 1.5)

    def follow_events(self, job_id: str, *, after: int) -> Program[None]:
        """The job's events from the SSE stream, oldest first, until its terminal status event.

        A dropped stream is reopened with `Last-Event-ID` (the last event handed out), so no event is missed or
        repeated; consecutive failed reconnections are bounded by `max_retries`, with backoff."""
        path = f"/jobs/{segment(job_id)}/events"
        last = after
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if last:
                headers["Last-Event-ID"] = str(last)
            problem: BaseException | None = None
            try:
                response = yield from self.request("GET", path, safe=True, headers=headers, stream=True)
            except APIConnectionError as exc:
                problem = exc
            else:
                decoder = SSEDecoder()
                try:
                    while (sse := (yield from next_event(response, decoder))) is not None:
                        if sse.event == "error":
                            error = make_error(status=None, body=_json_or_text(sse.data))
                            if error.type not in ("internal", "not_ready"):
                                raise error
                            problem = error  # the server's reader failed: it asks us to reconnect
                            break
                        event = JobEvent.model_validate_json(sse.data)
                        if event.id <= last:
                            continue
                        last, failures = event.id, 0
                        yield Emit(event)
                        if event.terminal:
                            yield Close(response)
                            return
                except httpx.TransportError as exc:
                    problem = exc
                yield Close(response)
                if problem is None:
                    # Closed cleanly before a terminal event of ours: the job ended before `last` (or the
                    # stream was cut between events). A job that is over has nothing more to send.
                    job = yield from self.parsed(Job, "GET", f"/jobs/{segment(job_id)}", safe=True)
                    if job.done:
                        return
            failures += 1
            if failures > self.options.max_retries:
                if isinstance(problem, APIError):
                    raise problem
                raise APIConnectionError(f"the event stream of job {job_id} dropped {failures} times in a row "
                                         f"({type(problem).__name__}: {problem})") from problem
            delay = self.backoff(failures - 1)
            log.info("event stream of %s ended early (%s); reconnecting after event %s in %.1fs", job_id,
                     type(problem).__name__ if problem else "closed", last, delay)
            yield Sleep(delay)

    # predicts --------------------------------------------------------------------------------------------
    def generate_stream(self, body: dict[str, Any]) -> Program[dict[str, Any]]:
        """Text chunks as they are generated; returns the final `done` object (text, finish_reason, tokens)."""
        response = yield from self.request("POST", "/generate", safe=True, json={**body, "stream": True},
                                           headers={"Accept": "text/event-stream"}, stream=True)
        decoder = SSEDecoder()
        try:
            while (sse := (yield from next_event(response, decoder))) is not None:
                payload = _json_or_text(sse.data)
                if sse.event == "token":
                    yield Emit(payload["text"])
                elif sse.event == "done":
                    return payload
                elif sse.event == "error":
                    raise make_error(status=None, body=payload)
        except httpx.TransportError as exc:
            raise APIConnectionError(f"the generation stream dropped: {type(exc).__name__}: {exc}") from exc
        raise APIConnectionError("the generation stream ended without its `done` event")

    # files -----------------------------------------------------------------------------------------------
    def upload_dataset(self, path: str | os.PathLike[str], *, name: str | None) -> Program[Any]:
        file = Path(path)
        with file.open("rb") as handle:
            body = yield from self.call("POST", "/datasets", safe=False, files={"file": (file.name, handle)},
                                        data={"name": name} if name else None)
        return body

    def import_archive(self, name: str, path: str | os.PathLike[str], *, task: str | None) -> Program[Any]:
        file = Path(path)
        with file.open("rb") as handle:
            body = yield from self.call("POST", f"/models/{segment(name)}/versions", safe=False,
                                        files={"file": (file.name, handle)}, data={"task": task} if task else None)
        return body

    def download(self, path: str, target: Path) -> Program[Path]:
        """A streamed body written to `target` (via a `.part` file, so a failed download leaves nothing)."""
        attempt = 0
        while True:
            response = yield from self.request("GET", path, safe=True, stream=True,
                                               headers={"Accept": "application/gzip, */*"})
            partial = target.with_name(target.name + ".part")
            try:
                with partial.open("wb") as out:
                    while (chunk := (yield Read(response, "bytes"))) is not None:
                        out.write(chunk)
                yield Close(response)
                partial.replace(target)
                return target
            except httpx.TransportError as exc:
                partial.unlink(missing_ok=True)
                yield Close(response)
                if attempt >= self.options.max_retries:
                    raise APIConnectionError(f"GET {path}: the download dropped: {exc}") from exc
            except BaseException:
                partial.unlink(missing_ok=True)
                raise
            yield Sleep(self.backoff(attempt))
            attempt += 1


def _json_or_text(data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return data
