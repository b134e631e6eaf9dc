"""Jobs that are not training runs: import a hub model, push a version to the Hub, evaluate a version.

A kind is a function `(ctx: OperationContext) -> Outcome`, registered with `@operation("kind")` in a module
listed in `_MODULES`. It runs in the job's child process (worker/child.py) under the same lease, fencing,
cancellation and crash handling as a training run: it writes progress and events through `ctx.callbacks`
(fenced), raises a `UserError` for a failure the user can fix (the job fails with its message) and
`OperationCancelled` when `ctx.callbacks.should_stop()` turns true. Its outcome is written here, fenced, so a
stale attempt writes nothing; an operation that must register something in the same transaction as the outcome
(an import publishing a version) writes the outcome itself and returns `Outcome(written=True)`.

The job row's `secret` (a push's Hub token) reaches the operation in `ctx.job.secret` and nowhere else: never
log it, put it in an event, a result or an error message. `jobrepo.finish` wipes it whatever the outcome.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from core.settings import Settings
from registry import jobs as jobrepo
from registry.jobs import Fence
from registry.store import ArtifactStore

if TYPE_CHECKING:
    from worker.child import JobCallbacks

log = logging.getLogger("ftserve.child")

# Modules that register operations; imported on first use so a training child loads none of them.
_MODULES = ("worker.op_import", "worker.op_push", "worker.op_evaluate")
_OPERATIONS: dict[str, Callable[[OperationContext], Outcome]] = {}


class OperationCancelled(Exception):
    """Raised by an operation that saw the cancel flag; the job ends `cancelled`."""


@dataclass(frozen=True)
class JobView:
    """What an operation may read of its job row (read once, when the attempt starts)."""

    id: str
    kind: str
    owner: str
    task: str
    spec: dict[str, Any]
    model_name: str
    model_version: int | None
    secret: str | None = field(repr=False)  # never printed


@dataclass(frozen=True)
class OperationContext:
    fence: Fence
    settings: Settings
    store: ArtifactStore
    callbacks: JobCallbacks
    job: JobView


@dataclass(frozen=True)
class Outcome:
    result: dict[str, Any] = field(default_factory=dict)
    model_version: int | None = None
    written: bool = False  # the operation wrote the job's outcome itself


def operation(kind: str) -> Callable[[Callable[[OperationContext], Outcome]], Callable[[OperationContext], Outcome]]:
    def register(fn: Callable[[OperationContext], Outcome]) -> Callable[[OperationContext], Outcome]:
        _OPERATIONS[kind] = fn
        return fn

    return register


def find(kind: str) -> Callable[[OperationContext], Outcome]:
    if kind not in _OPERATIONS:
        for module in _MODULES:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if exc.name != module:
                    raise
    if kind not in _OPERATIONS:
        raise LookupError(f"no operation for jobs of kind '{kind}'")
    return _OPERATIONS[kind]


def _view(fence: Fence) -> Callable[[Session], JobView]:
    from worker.child import own_row

    def read(s: Session) -> JobView:
        job = own_row(s, fence)
        return JobView(id=job.id, kind=job.kind, owner=job.owner, task=job.task, spec=dict(job.spec or {}),
                       model_name=job.model_name, model_version=job.model_version, secret=job.secret)

    return read


def run_operation(kind: str, fence: Fence, *, settings: Settings, store: ArtifactStore,
                  callbacks: JobCallbacks) -> int:
    """Run the job's operation and write its outcome; returns the child's exit code (see worker/child.py)."""
    from worker.child import outcome_of, write_outcome

    outcome: dict[str, Any] | int
    try:
        job = callbacks.write("reading the job", _view(fence))
        callbacks.on_event("status", f"attempt {fence.attempt} started", {"status": "running",
                                                                          "attempt": fence.attempt})
        done = find(kind)(OperationContext(fence=fence, settings=settings, store=store, callbacks=callbacks,
                                           job=job))
        if done.written:
            return 0
        outcome = {"status": jobrepo.SUCCEEDED, "result": done.result, "model_version": done.model_version}
    except OperationCancelled:
        outcome = {"status": jobrepo.CANCELLED}
    except Exception as exc:
        outcome = outcome_of(fence, exc, settings)
    return write_outcome(callbacks, outcome)
