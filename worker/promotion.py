"""Promotion gates: a training job with `"promote": {alias, metric, min_improvement, dataset}` moves the alias to
its new version only when that version beats the alias's current one on the same evaluation data.

Why this shape: the two evaluations run before the version is registered (they take a while and need no lock),
on the staged folder and on the alias's current version; the decision is then applied inside `_register`'s
transaction, which holds the job's fence from its first statement. So the alias move, the job's `promotion`
field, its `promotion` event, the new version's row and the `succeeded` status commit together or not at all: a
stale attempt (re-queued, cancelled) moves nothing, and no reader ever sees a succeeded job whose promotion is
not written yet. The alias is re-read in that transaction: when someone moved it while the evaluations ran, the
scores compared no longer describe the alias, and it is left where the user put it (`moved: false`, with a
`reason`). The alias row change stamps the registry (registry/stamp.py), so `name@alias` resolves to the new
version on every server at the next request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from core.errors import UserError, ValidationFailed
from registry import jobs as jobrepo
from registry.jobs import Fence
from registry.models import ModelAlias, ModelVersion
from registry.store import ArtifactStore
from training.spec import JobSpec

if TYPE_CHECKING:
    from worker.child import JobCallbacks

log = logging.getLogger("ftserve.child")


@dataclass(frozen=True)
class Decision:
    alias: str
    metric: str
    min_improvement: float
    new: float
    current: float | None
    current_version: int | None
    moved: bool
    dataset: dict[str, Any]

    def apply(self, s: Session, fence: Fence, *, name: str, version: int) -> dict[str, Any]:
        """Move the alias (when decided and still where it was evaluated) and record the decision on the job,
        in the caller's transaction, which must hold `fence` (see `_register`)."""
        row = s.get(ModelAlias, (name, self.alias), with_for_update=True)  # a PUT alias now waits for us
        now = row.version if row is not None else None
        moved, reason = self.moved, None
        if now != self.current_version:
            moved = False
            reason = (f"alias '{self.alias}' was moved to version {now} while the evaluations ran; left there"
                      if now is not None else f"alias '{self.alias}' was removed while the evaluations ran")
        if moved:
            if row is None:
                s.add(ModelAlias(name=name, alias=self.alias, version=version))
            else:
                row.version = version
        promotion = {"alias": self.alias, "metric": self.metric, "new": self.new, "current": self.current,
                     "moved": moved, "version": version, "current_version": self.current_version,
                     "min_improvement": self.min_improvement, "dataset": self.dataset}
        if reason:
            promotion["reason"] = reason
            promotion["now_version"] = now
        jobrepo.set_promotion(s, fence.job_id, promotion, fence=fence)
        jobrepo.add_event(s, fence.job_id, "promotion", _message(promotion, name), promotion, fence=fence)
        return promotion


def _message(p: dict[str, Any], name: str) -> str:
    scores = f"{p['metric']} {p['new']:.6g}" + ("" if p["current"] is None else
                                                 f" vs {p['current']:.6g} (version {p['current_version']})")
    if p["moved"]:
        return f"{name}@{p['alias']} moved to version {p['version']}: {scores}"
    where = p.get("now_version", p["current_version"])
    return f"{name}@{p['alias']} stays at version {where}: {scores}" + (
        f"; {p['reason']}" if "reason" in p else f", improvement below {p['min_improvement']:g}")


def evaluate_for_promotion(spec: JobSpec, *, staging: Path, store: ArtifactStore,
                           callbacks: JobCallbacks) -> Decision:
    """Score the staged new version and the alias's current version on the promotion dataset and decide."""
    from training.evaluation import EvaluationCancelled, evaluate_version, improves
    from training.runner import Cancelled
    from worker.child import source_for

    promote = spec.promote
    assert promote is not None
    name, metric = spec.model_name, promote.metric

    def current(s: Session) -> tuple[int, Path] | None:
        row = s.get(ModelAlias, (name, promote.alias))
        mv = s.get(ModelVersion, (name, row.version)) if row is not None else None
        return (mv.version, Path(store.version_dir(name, mv.version))) if mv is not None else None

    source, _ = source_for(promote.dataset, store, callbacks)
    now = callbacks.write("reading the alias", current)
    callbacks.on_event("log", f"promotion: evaluating the new version and {name}@{promote.alias} "
                              f"({'none yet' if now is None else f'version {now[0]}'}) on {source.label}",
                       {"alias": promote.alias, "current_version": None if now is None else now[0]})

    def score(model_dir: Path, what: str) -> float:
        try:
            metrics = evaluate_version(model_dir, task=spec.task, source=source, columns=spec.columns,
                                       should_stop=callbacks.should_stop)
        except EvaluationCancelled as exc:
            raise Cancelled(str(exc)) from exc
        except (UserError, ValidationFailed) as exc:
            raise type(exc)(f"promotion to '{promote.alias}': evaluating {what}: {exc.message}") from exc
        if metric not in metrics:
            raise UserError(f"promotion to '{promote.alias}': the evaluation of {what} gave no {metric} "
                            f"(it gave {', '.join(metrics)})")
        return metrics[metric]

    new = score(staging, "the new version")
    current_score = None if now is None else score(now[1], f"{name}:{now[0]}")
    return Decision(alias=promote.alias, metric=metric, min_improvement=promote.min_improvement, new=new,
                    current=current_score, current_version=None if now is None else now[0],
                    moved=improves(metric=metric, new=new, current=current_score,
                                   min_improvement=promote.min_improvement),
                    dataset=_dataset_out(promote.dataset))


def _dataset_out(ref: Any) -> dict[str, Any]:
    if ref.id is not None:
        return {"id": ref.id}
    return {"hub": ref.hub, "config": ref.config, "split": ref.split}
