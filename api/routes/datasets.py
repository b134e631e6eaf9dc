"""Datasets: upload (streamed to disk under the size limit), list, get with a preview, delete."""

from __future__ import annotations

import hashlib
import shutil
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from sqlalchemy import select

from api.deps import OwnerDep, SessionDep, SettingsDep, StoreDep
from api.pagination import paginate
from api.schemas import dataset_out, page
from core.errors import Conflict, NotFound, PayloadTooLarge, ValidationFailed
from core.ids import new_id
from registry import jobs as jobrepo
from registry.datafiles import format_for, read_table
from registry.models import Dataset, Job
from registry.store import safe_file_name

router = APIRouter(prefix="/datasets", tags=["datasets"])
CHUNK = 1024 * 1024


def get_dataset(session: Any, dataset_id: str) -> Dataset:
    ds = session.get(Dataset, dataset_id)
    if ds is None:
        raise NotFound(f"dataset '{dataset_id}' not found")
    return ds


@router.post("", status_code=201)
async def upload_dataset(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    owner: OwnerDep,
    file: Annotated[UploadFile, File(description="csv, jsonl, json, parquet or txt")],
    name: Annotated[str | None, Form(max_length=256)] = None,
) -> dict[str, Any]:
    limit = settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise PayloadTooLarge(f"upload is {int(declared)} bytes; the limit is {limit} bytes")
    file_name = safe_file_name(file.filename or "upload")
    fmt = format_for(file_name)
    dataset_id = new_id("ds")
    target = store.dataset_file(dataset_id, file_name)
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    try:
        with target.open("wb") as out:
            while chunk := await file.read(CHUNK):
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"upload exceeds the limit of {limit} bytes")
                digest.update(chunk)
                out.write(chunk)
        table = await anyio.to_thread.run_sync(read_table, target, fmt)
    except BaseException:
        shutil.rmtree(target.parent, ignore_errors=True)
        raise
    ds = Dataset(id=dataset_id, owner=owner, name=name or file_name, file_name=file_name, format=fmt,
                 num_rows=len(table.rows), columns=table.columns, size_bytes=size, sha256=digest.hexdigest())
    session.add(ds)
    session.flush()
    return dataset_out(ds)


@router.get("")
def list_datasets(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
) -> dict[str, Any]:
    rows, more = paginate(session, select(Dataset), Dataset, after=after, limit=limit)
    return page([dataset_out(d) for d in rows], more)


@router.get("/{dataset_id}")
def get_dataset_route(dataset_id: str, session: SessionDep, store: StoreDep) -> dict[str, Any]:
    ds = get_dataset(session, dataset_id)
    try:
        preview = read_table(store.dataset_file(ds.id, ds.file_name), ds.format).rows[:5]
    except ValidationFailed as exc:  # stored files were checked at upload; say so if one changed since
        raise Conflict(f"dataset file can no longer be read: {exc.message}") from exc
    return {**dataset_out(ds), "preview": preview}


@router.delete("/{dataset_id}", status_code=204)
def delete_dataset(dataset_id: str, session: SessionDep, store: StoreDep) -> None:
    ds = get_dataset(session, dataset_id)
    in_use = session.scalars(
        select(Job.id).where(
            Job.status.in_(jobrepo.ACTIVE),
            (Job.dataset_id == dataset_id) | (Job.validation_dataset_id == dataset_id),
        ).limit(1)
    ).first()
    if in_use:
        raise Conflict(f"dataset '{dataset_id}' is used by job '{in_use}', which is queued or running")
    session.delete(ds)
    session.flush()
    shutil.rmtree(store.dataset_dir(dataset_id), ignore_errors=True)
