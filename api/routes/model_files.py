"""A version's files in and out: export as a .tar.gz (streamed), import an archive as a new version.

Export is reading: the owner and, for a shared model, every key. Import changes the model: its owner only (403
for another owner's shared model, 404 for their private one); a new name is the caller's, unless it is a hub
model this server has cached (409, as for a job's model_name).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.deps import SessionDep, SettingsDep, StoreDep, ViewerDep
from api.responses import VALIDATED, errors, json_body
from api.responses import Job as JobOut
from api.responses import ModelVersion as VersionOut
from api.routes.jobs import _check_not_a_cached_hub_model, parse_body, submit_operation
from api.routes.models import Name, Version, _model, _owned, _version
from api.schemas import job_out, version_out
from api.uploads import receive_upload
from core.errors import NotReady, ValidationFailed, scrub_paths
from core.ids import new_id
from core.settings import Settings
from core.tasks import TASKS
from inference.importing import Checked, check_model_folder, write_params
from registry import jobs as jobrepo
from registry import versions
from registry.access import Viewer
from registry.archive import archive_format, stream_tar_gz, unpack
from registry.db import session_scope
from registry.models import ModelVersion, RegisteredModel
from registry.store import MODEL_NAME, ArtifactStore
from training.spec import hub_repo_id, hub_revision

router = APIRouter(prefix="/models", tags=["models"])
log = logging.getLogger("ftserve.api")
IMPORT_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {
        "type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary",
                     "description": "a .tar.gz, .tgz, .tar or .zip of a save_pretrained folder (safetensors only)"},
            "task": {"type": "string", "enum": list(TASKS)}}}},
    **json_body("HubImport")["requestBody"]["content"]}}}


@router.get("/{name}/versions/{version}/archive", response_class=StreamingResponse, responses={
    200: {"content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}},
          "description": "The version folder as a .tar.gz."}, **VALIDATED, **errors(404, 503)})
def export_version(name: Name, version: Version, session: SessionDep, store: StoreDep, viewer: ViewerDep,
                   merged: bool = False) -> StreamingResponse:
    """The version folder as a .tar.gz, members under `{name}-{version}/`, produced while it is sent.

    `?merged=true` on a LoRA adapter version: a full model instead (members under `{name}-{version}-merged/`), the
    base with the adapter merged in — safetensors weights, config, tokenizer, training_params.json and a card that
    names the base — a folder that loads with plain `transformers` and imports as a full version. A full version's
    folder is already that, and is sent as it is."""
    _model(session, name, viewer)
    mv = _version(session, name, version)
    folder = store.version_dir(mv.name, mv.version)
    if not folder.is_dir():
        raise NotReady(f"the files of model '{name}' version {version} are missing on this server")
    arcroot = f"{mv.name}-{mv.version}"  # a model name is [a-z0-9._-]: safe in a header and a path
    work: Path | None = None
    if merged and mv.method == "lora":
        from inference.adapters import write_merged

        arcroot += "-merged"
        work = store.import_dir(new_id("exp"))
        try:
            folder = write_merged(folder, work / arcroot, task=mv.task, name=mv.name, version=mv.version)
        except Exception as exc:
            shutil.rmtree(work, ignore_errors=True)
            log.exception("merging %s:%s for export failed", mv.name, mv.version)
            raise NotReady(f"the adapter of {mv.name}:{mv.version} could not be merged into its base "
                           f"({type(exc).__name__}: {scrub_paths(str(exc))[:200]})") from exc
    chunks = stream_tar_gz(folder, arcroot=arcroot)
    return StreamingResponse(chunks if work is None else _removing(chunks, work), media_type="application/gzip",
                             headers={"Content-Disposition": f'attachment; filename="{arcroot}.tar.gz"'})


async def _removing(chunks: AsyncIterator[bytes], work: Path) -> AsyncIterator[bytes]:
    """`chunks`, then `work` (a merged export's folder) removed, however the response ends."""
    try:
        async for chunk in chunks:
            yield chunk
    finally:
        await anyio.to_thread.run_sync(partial(shutil.rmtree, work, ignore_errors=True))


def _check_target(session: Any, name: str, viewer: Viewer) -> None:
    """Before a byte of the body is read: may the caller add a version to `name`?"""
    if not MODEL_NAME.match(name):
        raise ValidationFailed(f"invalid model name '{name}': use lowercase letters, digits, '.', '_' or '-' "
                               "(at most 64, starting with a letter or digit)")
    if session.get(RegisteredModel, name) is not None:
        _owned(session, name, viewer)  # another owner's: 404 (private) or 403 (shared)
    else:
        _check_not_a_cached_hub_model(session, name)


def _registered(name: str, version: int) -> bool:
    with session_scope() as s:
        return s.get(ModelVersion, (name, version)) is not None


def _card(root: Path, checked: Checked, *, name: str, version: int, sha256: str) -> None:
    if checked.has_card:
        return
    from training.imported_card import imported_card

    (root / "README.md").write_text(imported_card(
        name=name, version=version, task=checked.task, base_model=checked.base_model, license=checked.license,
        labels=checked.labels, metrics=checked.metrics, archive_sha256=sha256))


def _publish(store: ArtifactStore, root: Path, checked: Checked, *, name: str, viewer: Viewer,
             sha256: str) -> dict[str, Any]:
    """Register the checked folder as the next version of `name`: the folder is renamed into place inside the
    transaction that adds its row, under the model's publish lock (as the worker registers a trained one)."""
    version: int | None = None
    published = False
    with FileLock(str(store.publish_lock_path(name)), timeout=60):
        try:
            with session_scope() as s:
                versions.ensure_model(s, name=name, task=checked.task, viewer=viewer)  # 409: taken, other task
                version = versions.next_version(s, name)
                from training.provenance import card_license  # reads the card's front matter, no torch

                write_params(root, checked)
                _card(root, checked, name=name, version=version, sha256=sha256)
                mv = ModelVersion(
                    name=name, version=version, task=checked.task, owner=viewer.owner, job_id=None,
                    base_model="import", base_model_resolved=f"import:{sha256}",
                    hyperparameters=checked.hyperparameters, metrics=checked.metrics,
                    path=str(store.version_dir(name, version)),
                    lineage={"source": "imported", "job_id": None, "base_model": checked.base_model,
                             "archive_sha256": sha256, "license": card_license(root / "README.md") or checked.license})
                s.add(mv)
                s.flush()  # takes the (name, version) key before the folder is published
                store.publish(root, name, version)
                published = True
                out = version_out(mv)
        except BaseException:
            if published and version is not None and not _registered(name, version):
                shutil.rmtree(store.version_dir(name, version), ignore_errors=True)
            raise
    return out


def _import(store: ArtifactStore, settings: Settings, *, work: Path, archive: Path, fmt: str, name: str,
            task: str | None, viewer: Viewer, sha256: str) -> dict[str, Any]:
    t0 = time.perf_counter()
    root = unpack(archive, fmt, into=work / "tree", max_members=settings.max_import_members,
                  max_bytes=settings.max_import_bytes)
    archive.unlink()  # the unpacked copy is what is kept
    checked = check_model_folder(root, task=task)
    out = _publish(store, root, checked, name=name, viewer=viewer, sha256=sha256)
    log.info("imported %s as a %s model in %.1fs", out["ref"], checked.task, time.perf_counter() - t0)
    return out


class HubImport(BaseModel):
    """`{"hub": "org/repo", "revision": "main", "task": "question-answering"}`: a model from the Hub."""

    model_config = ConfigDict(extra="forbid")
    hub: str = Field(max_length=96, description="A Hugging Face hub model id, `name` or `org/name`.")
    revision: str | None = Field(default=None, max_length=128, description="A branch, tag or commit.")
    task: Literal[tuple(TASKS)] | None = Field(  # type: ignore[valid-type]  # the tasks, as the enum of the schema
        default=None, description="Inferred from config.architectures when absent; must agree with it.")

    @field_validator("hub")
    @classmethod
    def _hub(cls, value: str) -> str:
        return hub_repo_id(value, what="model")

    @field_validator("revision")
    @classmethod
    def _revision(cls, value: str | None) -> str | None:
        return None if value is None else hub_revision(value)


def _import_from_hub(session: Any, viewer: Viewer, name: str, body: Any) -> dict[str, Any]:
    spec = parse_body(HubImport, body)
    job = submit_operation(session, viewer, kind="import", id_prefix="job", task=spec.task or "auto",
                           spec=spec.model_dump(), model_name=name)
    return job_out(job, queue_position=jobrepo.queue_position(session, job))


@router.post("/{name}/versions", status_code=201, openapi_extra=IMPORT_BODY, response_model=VersionOut,
             responses={202: {"model": JobOut, "description": "A Hub import (JSON body `{\"hub\": …}`) is queued as a "
                                                              "job of kind `import`; poll it at /jobs/{id}."},
                        **VALIDATED, **errors(404, 409, 429)})
async def import_version(name: Name, request: Request, session: SessionDep, settings: SettingsDep,
                         store: StoreDep, viewer: ViewerDep) -> Any:
    """Multipart `file` (an archive of a save_pretrained folder) and optional `task` → 201 with the version,
    servable at once; or a 422 naming what is wrong with the archive (nothing is kept).

    A JSON body `{"hub": "org/repo", "revision": …, "task": …}` imports a Hub model instead: 202 with a job of
    kind `import` that a worker runs (the cached snapshot is used when the Hub is offline or unreachable)."""
    _check_target(session, name, viewer)
    if request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json":
        try:
            body = await request.json()
        except ValueError as exc:
            raise ValidationFailed(f"the body is not valid JSON: {exc}") from exc
        out = await anyio.to_thread.run_sync(_import_from_hub, session, viewer, name, body)
        return JSONResponse(out, status_code=202)
    session.commit()  # no transaction stays open while the body streams in
    work = store.import_dir(new_id("imp"))
    try:
        upload = await receive_upload(request, target_dir=work / "upload", max_file_bytes=settings.max_import_bytes,
                                      format_of=archive_format, text_fields=("task",), what="the model archive",
                                      limit_setting="FTSERVE_MAX_IMPORT_BYTES")
        task = upload.fields.get("task")
        if task is not None and task not in TASKS:
            raise ValidationFailed(f"task '{task[:50]}' is not one of {', '.join(TASKS)}")
        return await anyio.to_thread.run_sync(partial(
            _import, store, settings, work=work, archive=upload.path, fmt=upload.format, name=name, task=task,
            viewer=viewer, sha256=upload.sha256))
    finally:
        shutil.rmtree(work, ignore_errors=True)
