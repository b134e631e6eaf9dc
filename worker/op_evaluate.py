"""Jobs of kind `evaluate`: score a registered version on a dataset (training/evaluation.py) and rewrite its card.

The job's spec is `{"dataset": {"id": …} | {"hub": …, "config", "split"}, "columns": {field: column}}`, checked
at submit (api/routes/evaluations.py); its result `{metrics, dataset_sha256, dataset}`.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

from filelock import FileLock
from sqlalchemy import select

from core.errors import UserError
from registry import jobs as jobrepo
from registry.db import session_scope
from registry.models import Job, ModelVersion
from registry.store import ArtifactStore
from training.spec import EvalDatasetRef
from worker.operations import OperationCancelled, OperationContext, Outcome, operation

log = logging.getLogger("ftserve.child")
MAX_CARD_EVALUATIONS = 50  # the newest ones; the API lists them all


@operation("evaluate")
def evaluate(ctx: OperationContext) -> Outcome:
    from training.evaluation import EvaluationCancelled, evaluate_version
    from worker.child import source_for

    job, fence = ctx.job, ctx.fence
    name, version = job.model_name, int(job.model_version or 0)
    ref = EvalDatasetRef.model_validate(job.spec["dataset"])

    def version_dir(s: Any) -> Path | None:
        mv = s.get(ModelVersion, (name, version))
        return None if mv is None or mv.deleted_at is not None else ctx.store.version_dir(name, version)

    model_dir = ctx.callbacks.write("reading the version", version_dir)
    if model_dir is None or not model_dir.is_dir():
        raise UserError(f"model '{name}' has no version {version} any more (it was deleted)")
    source, provenance = source_for(ref, ctx.store, ctx.callbacks)
    ctx.callbacks.on_event("log", f"evaluating {name}:{version} on {source.label}", {})
    try:
        metrics = evaluate_version(model_dir, task=job.task, source=source, columns=dict(job.spec["columns"]),
                                   should_stop=ctx.callbacks.should_stop)
    except EvaluationCancelled as exc:
        raise OperationCancelled from exc
    result = {"metrics": metrics, "dataset_sha256": provenance.get("dataset_sha256"),
              "dataset": {"id": ref.id} if ref.id else {"hub": ref.hub, "config": ref.config, "split": ref.split}}
    ctx.callbacks.on_event("metrics", f"{name}:{version} on {source.label}", metrics)
    # Written here, then the card: the card lists succeeded evaluations, this one included.
    ctx.callbacks.write("the outcome", lambda s: jobrepo.finish(s, fence.job_id, fence=fence,
                                                                status=jobrepo.SUCCEEDED, result=result))
    try:
        refresh_card(ctx.store, name, version)
    except Exception:
        # The evaluation stands (it is written); the card catches up with the next evaluation.
        log.exception("evaluation %s of %s:%s: could not rewrite the model card", fence.job_id, name, version)
    return Outcome(written=True)


def refresh_card(store: ArtifactStore, name: str, version: int) -> None:
    """Rewrite the version's README.md with an "Evaluation results" section listing its owner's evaluations.

    Only evaluations run by the model's owner reach the card: another key evaluating a shared model sees its
    numbers through the API, but does not write into someone else's card (nor show its dataset ids there).
    One writer at a time per version (a lock), reading the list under it, so the last writer has every
    evaluation; the file is replaced, never edited.
    """
    from training.model_card import render_card

    folder = store.version_dir(name, version)
    with FileLock(str(store.model_dir(name) / f".card-{int(version)}.lock"), timeout=60):
        with session_scope() as s:
            mv = s.get(ModelVersion, (name, version))
            if mv is None or mv.deleted_at is not None or not folder.is_dir():
                return
            task, stored_metrics = mv.task, dict(mv.metrics or {})
            imported = (mv.lineage or {}).get("source") == "imported"
            rows = [(j.id, j.spec.get("dataset") or {}, dict(j.result or {})) for j in s.scalars(
                select(Job).where(Job.kind == "evaluate", Job.model_name == name, Job.model_version == version,
                                  Job.status == jobrepo.SUCCEEDED, Job.owner == mv.owner)
                .order_by(Job.finished_at.desc(), Job.id.desc()).limit(MAX_CARD_EVALUATIONS))]
        metrics_file = folder / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else stored_metrics
        if imported:
            # Its own card (the Hub repo's, or the one made at import) stays; the evaluations are appended.
            card = folder / "README.md"
            old = card.read_text(encoding="utf-8") if card.exists() else ""
            text = old.split(_MARK, 1)[0].rstrip("\n") + "\n\n" + _MARK + "\n" + _evaluations_section(rows)
        else:
            text = render_card(folder, name=name, version=version, task=task, metrics=metrics, evaluations=[
                {"id": job_id, "dataset": dataset, "dataset_sha256": result.get("dataset_sha256"),
                 "metrics": result.get("metrics") or {}} for job_id, dataset, result in rows])
        tmp = folder / f".README.md.{secrets.token_hex(4)}"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, folder / "README.md")


_MARK = "<!-- ftserve: evaluations -->"


def _evaluations_section(rows: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> str:
    lines = ["## Evaluation results", ""]
    if not rows:
        return "\n".join([*lines, "No evaluations yet (`POST /models/{name}/versions/{v}/evaluations`).", ""])
    lines += ["| evaluation | dataset | sha256 | metric | value |", "|---|---|---|---|---|"]
    for job_id, dataset, result in rows:
        if dataset.get("id"):
            where = f"`{dataset['id']}`"
        else:
            where = f"hub `{dataset.get('hub')}`" + (f" ({dataset['config']})" if dataset.get("config") else "") + (
                f" split `{dataset.get('split')}`")
        sha = f"`{result['dataset_sha256'][:12]}…`" if result.get("dataset_sha256") else ""
        for metric, value in sorted((result.get("metrics") or {}).items()):
            lines.append(f"| `{job_id}` | {where} | {sha} | {metric} | {value!r} |")
    return "\n".join([*lines, ""])
