"""Datasets: upload (streamed to disk under the size limit, read once into a profile), list, get, delete."""

from __future__ import annotations

import shutil
from functools import partial
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Path, Query, Request
from sqlalchemy import select

from api.deps import OwnerDep, SessionDep, SettingsDep, StoreDep, ViewerDep
from api.pagination import paginate
from api.responses import VALIDATED, DatasetDetail, Page, errors
from api.responses import Dataset as DatasetOut
from api.schemas import dataset_out, page
from api.uploads import MAX_NAME_CHARS, receive_upload
from core.errors import Conflict, NotFound
from core.ids import new_id
from registry import jobs as jobrepo
from registry.access import Viewer
from registry.datafiles import Limits, profile_file
from registry.datasets import profile_of
from registry.models import Dataset, Job

router = APIRouter(prefix="/datasets", tags=["datasets"])
DatasetId = Annotated[str, Path(max_length=64)]
# The body is parsed by the route as it streams (api/uploads.py), so its form is described here by hand.
UPLOAD_BODY = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "csv, jsonl, json, parquet or txt"},
        "name": {"type": "string", "maxLength": MAX_NAME_CHARS}}}}}}}


def get_dataset(session: Any, dataset_id: str, viewer: Viewer) -> Dataset:
    """The dataset if `viewer` owns it; another owner's is as unknown as a made-up id."""
    ds = session.get(Dataset, dataset_id)
    if ds is None or not viewer.owns(ds.owner):
        raise NotFound(f"dataset '{dataset_id}' not found")
    return ds


@router.post("", status_code=201, openapi_extra=UPLOAD_BODY, response_model=DatasetOut,
             responses={**VALIDATED})
async def upload_dataset(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    owner: OwnerDep,
) -> dict[str, Any]:
    dataset_id = new_id("ds")
    target_dir = store.dataset_dir(dataset_id)
    upload = await receive_upload(request, target_dir=target_dir, max_file_bytes=settings.max_upload_bytes)
    try:
        # The one full read of the file: GET /datasets/{id} and POST /jobs answer from its profile.
        profile = await anyio.to_thread.run_sync(partial(
            profile_file, upload.path, upload.format, limits=Limits.from_settings(settings), label=upload.file_name))
        ds = Dataset(id=dataset_id, owner=owner, name=upload.name or upload.file_name, file_name=upload.file_name,
                     format=upload.format, num_rows=profile.num_rows, columns=profile.columns,
                     size_bytes=upload.size, sha256=upload.sha256, profile=profile.data)
        session.add(ds)
        session.flush()
    except BaseException:
        shutil.rmtree(target_dir, ignore_errors=True)
        raise
    return dataset_out(ds)


@router.get("", response_model=Page[DatasetOut], responses={**VALIDATED, **errors(404)})
def list_datasets(
    session: SessionDep,
    viewer: ViewerDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, Any]:
    rows, more = paginate(session, select(Dataset).where(viewer.owner_filter(Dataset.owner)), Dataset,
                          after=after, limit=limit, visible=lambda d: viewer.owns(d.owner))
    return page([dataset_out(d) for d in rows], more)


@router.get("/{dataset_id}", response_model=DatasetDetail, responses={**VALIDATED, **errors(404, 409)})
def get_dataset_route(dataset_id: DatasetId, session: SessionDep, settings: SettingsDep, store: StoreDep,
                      viewer: ViewerDep) -> dict[str, Any]:
    ds = get_dataset(session, dataset_id, viewer)
    profile = profile_of(ds, path=store.dataset_file(ds.id, ds.file_name), limits=Limits.from_settings(settings))
    return {**dataset_out(ds), "preview": profile.preview, "column_types": profile.column_types()}


@router.delete("/{dataset_id}", status_code=204, responses={**VALIDATED, **errors(404, 409)})
def delete_dataset(dataset_id: DatasetId, session: SessionDep, store: StoreDep, viewer: ViewerDep) -> None:
    ds = get_dataset(session, dataset_id, viewer)
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
