"""The client against the real API in process (TestClient on SQLite, no worker): shapes, auto-paging, errors."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

import ftserve
from ftserve.types import Dataset, Job, JobEvent, Model
from registry import jobs as jobrepo
from registry.db import session_scope
from tests.api.test_bounded_input import GOOD_CSV
from tests.api.test_tenancy import ENV, KEYS, register

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def api(make_api: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setattr("api.routes.jobs.send_job", lambda job_id: None)  # no worker here: jobs stay queued
    return make_api(**ENV)


def sdk(api: TestClient, key: str = "alice", **kw: object) -> ftserve.Client:
    return ftserve.Client("http://localhost", api_key=KEYS[key], http_client=api, **kw)  # type: ignore[arg-type]


def csv(tmp_path: Path, name: str = "d.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(GOOD_CSV)
    return path


def test_import_ftserve_loads_none_of_the_server_packages() -> None:
    code = ("import sys, ftserve; from ftserve import Client, AsyncClient; Client('http://x'); "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'datasets', "
            "'api', 'core', 'registry', 'training', 'inference', 'worker', 'fastapi', 'sqlalchemy', 'celery')); "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]", out.stdout


def test_datasets_upload_list_pages_get_delete(api: TestClient, tmp_path: Path) -> None:
    c = sdk(api)
    made = [c.datasets.upload(csv(tmp_path, f"d{i}.csv")) for i in range(3)]
    assert all(isinstance(d, Dataset) and d.id.startswith("ds_") for d in made)
    assert made[0].columns == ["text", "label"] and made[0].num_rows == 40 and made[0].format == "csv"
    assert made[0].owner == "alice" and made[0].created_at is not None
    named = c.datasets.upload(csv(tmp_path), name="reviews")
    assert named.name == "reviews"

    pages: list[httpx.Request] = []
    api.event_hooks["request"].append(pages.append)
    listed = [d.id for d in c.datasets.list(limit=2)]
    assert listed == [named.id, *[d.id for d in reversed(made)]]  # newest first, every page
    assert [r.url.params.get("after") for r in pages] == [None, made[2].id]
    api.event_hooks["request"].clear()

    got = c.datasets.get(made[0].id)
    assert got.preview and got.preview[0] == {"text": "good film 0", "label": "positive"}
    assert got.column_types and set(got.column_types) == {"text", "label"}
    assert c.datasets.delete(made[0].id) is None
    with pytest.raises(ftserve.NotFoundError) as info:
        c.datasets.get(made[0].id)
    assert info.value.status == 404 and info.value.type == "not_found" and made[0].id in info.value.message
    # Another key's dataset is as unknown as a made-up id.
    with pytest.raises(ftserve.NotFoundError):
        sdk(api, "bob").datasets.get(made[1].id)


def test_jobs_create_list_get_events_cancel_wait(api: TestClient, tmp_path: Path) -> None:
    c = sdk(api)
    ds = c.datasets.upload(csv(tmp_path))
    fields = {"task": "classification", "base_model": "ftserve-test/tiny-bert",
              "hyperparameters": {"max_steps": 2}}
    job = c.jobs.create(**fields, dataset=ds, model_name="sdk-a")
    assert isinstance(job, Job) and job.status == "queued" and job.queue_position == 0 and not job.done
    assert job.dataset == {"id": ds.id} and job.hyperparameters and job.hyperparameters["max_steps"] == 2
    # The same key and body is the first job again; the same key with another body a conflict.
    again = c.jobs.create(**fields, dataset={"id": ds.id}, model_name="sdk-a", idempotency_key="k1")
    assert c.jobs.create(**fields, dataset=ds.id, model_name="sdk-a", idempotency_key="k1").id == again.id
    with pytest.raises(ftserve.ConflictError, match="Idempotency-Key"):
        c.jobs.create(**fields, dataset=ds.id, model_name="sdk-b", idempotency_key="k1")
    with pytest.raises(ftserve.InvalidRequestError) as info:
        c.jobs.create(**{**fields, "hyperparameters": {"learning_rte": 1}}, dataset=ds.id)
    assert info.value.status == 422 and "learning_rte" in info.value.message

    assert [j.id for j in c.jobs.list(limit=1)] == [again.id, job.id]
    assert [j.id for j in c.jobs.list(status="queued", kind="train")] == [again.id, job.id]
    assert c.jobs.get(job.id).model_name == "sdk-a"

    with session_scope() as s:
        for step in range(1, 4):
            jobrepo.add_event(s, job.id, "metrics", "", {"step": step})
    events = c.jobs.events(job.id)
    assert [e.type for e in events] == ["status", "metrics", "metrics", "metrics"]
    assert all(isinstance(e, JobEvent) for e in events) and events[1].data == {"step": 1}
    assert [e.id for e in c.jobs.events(job.id, after=2)] == [3, 4]

    cancelled = c.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.done
    assert c.jobs.cancel(job.id).status == "cancelled"  # again: harmless
    assert c.jobs.wait(job.id, timeout=5).status == "cancelled"
    followed = list(c.jobs.events(job.id, follow=True))  # ends after the terminal status event
    assert [e.id for e in followed] == [e.id for e in c.jobs.events(job.id)] and followed[-1].terminal
    assert [e.id for e in c.jobs.events(job.id, follow=True, after=3)] == [4, 5]
    with pytest.raises(ftserve.NotFoundError):
        sdk(api, "bob").jobs.cancel(job.id)
    with pytest.raises(ftserve.JobWaitTimeout) as waited:
        c.jobs.wait(again.id, timeout=0.3, poll_interval=0.1)
    assert waited.value.job.status == "queued"


def test_models_aliases_visibility_delete(api: TestClient) -> None:
    c, bob = sdk(api), sdk(api, "bob")
    register("alices", owner="alice")
    model = c.models.get("alices")
    assert isinstance(model, Model) and model.latest_version == 1 and model.aliases == {"production": 1}
    assert [v.ref for v in c.models.versions("alices")] == ["alices:1"]
    assert c.models.version("alices", 1).task == "classification"
    assert [m.name for m in c.models.list()] == ["alices"]
    assert [m.name for m in c.models.list(task="generation")] == []

    assert c.models.set_alias("alices", "staging", 1).aliases == {"production": 1, "staging": 1}
    assert c.models.delete_alias("alices", "staging").aliases == {"production": 1}
    with pytest.raises(ftserve.NotFoundError):
        bob.models.get("alices")
    assert c.models.set_visibility("alices", "shared").visibility == "shared"
    with pytest.raises(ftserve.PermissionDeniedError) as info:
        bob.models.set_alias("alices", "mine", 1)
    assert info.value.status == 403 and info.value.type == "forbidden"

    with pytest.raises(ftserve.ConflictError):
        c.models.delete("alices", 1)  # an alias points at it
    with pytest.raises(ftserve.ConflictError):
        c.models.delete("alices")  # aliases, no force
    assert c.models.delete("alices", force=True) is None
    assert c.models.versions("alices") == []
    with pytest.raises(ValueError, match="exactly one"):
        c.models.import_("x")


def test_errors_of_the_real_api_by_type(api: TestClient,
                                        tmp_path: Path) -> None:
    with pytest.raises(ftserve.AuthenticationError) as info:
        ftserve.Client("http://localhost", api_key="wrong", http_client=api).datasets.list().__next__()
    assert info.value.status == 401 and "wrong" not in str(info.value)
    with pytest.raises(ftserve.NotFoundError, match="no classification model"):
        sdk(api).classify(["x"])  # no classification model yet
    with pytest.raises(ftserve.InvalidRequestError, match="top_k"):
        sdk(api).classify(["x"], top_k=0)
    big = tmp_path / "big.csv"
    big.write_bytes(b"text,label\n" + b"a,b\n" * 400_000)  # over the in-process cap of 1 MiB
    with pytest.raises(ftserve.PayloadTooLargeError) as too_big:
        sdk(api).datasets.upload(big)
    assert too_big.value.status == 413


def test_async_client_against_the_app(api: TestClient, tmp_path: Path) -> None:
    path = csv(tmp_path)

    async def main() -> None:
        transport = httpx.ASGITransport(app=api.app)
        async with ftserve.AsyncClient("http://localhost", api_key=KEYS["alice"],
                                       http_client=httpx.AsyncClient(transport=transport)) as c:
            ds = await c.datasets.upload(path)
            assert (await c.datasets.get(ds.id)).num_rows == 40
            job = await c.jobs.create(task="classification", base_model="ftserve-test/tiny-bert", dataset=ds,
                                      hyperparameters={"max_steps": 2})
            assert [d.id async for d in c.datasets.list()] == [ds.id]
            assert [e.type for e in await c.jobs.events(job.id)] == ["status"]
            assert (await c.jobs.cancel(job.id)).status == "cancelled"
            assert (await c.jobs.wait(job.id)).done
            with pytest.raises(ftserve.NotFoundError):
                await c.models.get("nothing")

    asyncio.run(main())


def test_the_client_distribution_holds_the_package_and_needs_httpx_and_pydantic_only(tmp_path: Path) -> None:
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(REPO / "sdk")], check=True, cwd=REPO, capture_output=True)
    (wheel,) = tmp_path.glob("ftserve_client-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    packages = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert packages == {"ftserve"}
    assert {f"ftserve/{m}.py" for m in ("__init__", "_client", "_core", "_resources", "errors", "types")} <= set(names)
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    requires = sorted(line.split(":", 1)[1].split(">")[0].strip() for line in metadata.splitlines()
                      if line.startswith("Requires-Dist:"))
    assert requires == ["httpx", "pydantic"]
