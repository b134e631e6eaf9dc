"""Bad input gets a clear 4xx naming what is wrong (or a failed job of type `user`), and nothing breaks."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.stack import Stack
from tests.tinymodels import HUB_ONE_CLASS, HUB_REVIEWS, TINY_BERT

GOOD_CSV = ("text,label\n" + "".join(f"good film {i},positive\nbad film {i},negative\n" for i in range(20))).encode()


def err(r: Any, status: int, type_: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]["type"] == type_, body
    return str(body["error"]["message"])


@pytest.fixture(scope="module")
def dataset_id(pg_stack: Stack) -> str:
    r = pg_stack.upload(content=GOOD_CSV, filename="reviews.csv")
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def job_body(dataset_id: str, **over: Any) -> dict[str, Any]:
    return {"task": "classification", "base_model": TINY_BERT, "dataset": {"id": dataset_id},
            "hyperparameters": {"max_steps": 2}, **over}


def test_unknown_task(pg_stack: Stack, dataset_id: str) -> None:
    msg = err(pg_stack.client.post("/jobs", json=job_body(dataset_id, task="translation")), 422, "validation_error")
    assert "unknown task 'translation'" in msg and "classification" in msg and "generation" in msg


def test_unknown_hyperparameter(pg_stack: Stack, dataset_id: str) -> None:
    body = job_body(dataset_id, hyperparameters={"epochs": 1, "learning_rat": 1e-4})
    msg = err(pg_stack.client.post("/jobs", json=body), 422, "validation_error")
    assert "learning_rat" in msg and "learning_rate" in msg


def test_unknown_top_level_field_and_bad_value(pg_stack: Stack, dataset_id: str) -> None:
    msg = err(pg_stack.client.post("/jobs", json=job_body(dataset_id, modle_name="x")), 422, "validation_error")
    assert "modle_name" in msg
    body = job_body(dataset_id, hyperparameters={"batch_size": 0})
    assert "batch_size" in err(pg_stack.client.post("/jobs", json=body), 422, "validation_error")
    body = job_body(dataset_id, model_name="Bad Name!")
    assert "model_name" in err(pg_stack.client.post("/jobs", json=body), 422, "validation_error")


def test_missing_column_names_it_and_the_columns_present(pg_stack: Stack, dataset_id: str) -> None:
    body = job_body(dataset_id, columns={"label": "stars"})
    msg = err(pg_stack.client.post("/jobs", json=body), 422, "validation_error")
    assert "'stars'" in msg and "columns are: text, label" in msg
    body = job_body(dataset_id, columns={"answer": "text"})
    assert "'answer'" in err(pg_stack.client.post("/jobs", json=body), 422, "validation_error")


@pytest.mark.parametrize(
    ("filename", "content", "expected"),
    [
        ("empty.csv", b"", "empty"),
        ("header_only.csv", b"text,label\n", "no data rows"),
        ("latin1.csv", "text,label\ncaf\xe9,positive\n".encode("latin-1"), "UTF-8"),
        ("broken.jsonl", b'{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n{"text": "c", "label\n', "line 3"),
        ("ragged.csv", b"text,label\na,b\nc,d,e\n", "line 3"),
        ("list.json", b'{"text": "a"}', "list of objects"),
        ("data.xlsx", b"PK\x03\x04", "unsupported file type"),
    ],
)
def test_bad_uploads(pg_stack: Stack, filename: str, content: bytes, expected: str) -> None:
    before = pg_stack.client.get("/datasets", params={"limit": 100}).json()["data"]
    msg = err(pg_stack.upload(content=content, filename=filename), 422, "validation_error")
    assert expected in msg, msg
    after = pg_stack.client.get("/datasets", params={"limit": 100}).json()["data"]
    assert len(after) == len(before), "a rejected upload leaves nothing behind"


def test_dataset_get_preview_and_pagination(pg_stack: Stack, dataset_id: str) -> None:
    r = pg_stack.client.get(f"/datasets/{dataset_id}")
    assert r.status_code == 200
    body = r.json()
    assert body["preview"][0] == {"text": "good film 0", "label": "positive"} and len(body["preview"]) == 5
    assert body["num_rows"] == 40 and body["format"] == "csv" and len(body["sha256"]) == 64
    ids = [pg_stack.upload(content=GOOD_CSV, filename=f"p{i}.csv").json()["id"] for i in range(3)]
    page1 = pg_stack.client.get("/datasets", params={"limit": 2}).json()
    assert [d["id"] for d in page1["data"]] == ids[::-1][:2] and page1["has_more"] is True
    page2 = pg_stack.client.get("/datasets", params={"limit": 2, "after": page1["data"][-1]["id"]}).json()
    assert page2["data"][0]["id"] == ids[0]


def test_label_column_with_one_class_uploaded_is_422(pg_stack: Stack) -> None:
    r = pg_stack.upload(content=b"text,label\na,pos\nb,pos\nc,pos\n", filename="one.csv")
    msg = err(pg_stack.client.post("/jobs", json=job_body(r.json()["id"])), 422, "validation_error")
    assert "1 class" in msg and "pos" in msg


def test_unknown_ids_are_404(pg_stack: Stack) -> None:
    assert "ds_nope" in err(pg_stack.client.post("/jobs", json=job_body("ds_nope")), 404, "not_found")
    assert "ds_nope" in err(pg_stack.client.get("/datasets/ds_nope"), 404, "not_found")
    assert "job_nope" in err(pg_stack.client.get("/jobs/job_nope"), 404, "not_found")
    msg = err(pg_stack.client.post("/classify", json={"model": "no-such-model", "inputs": ["x"]}), 404, "not_found")
    assert "no-such-model" in msg
    body = job_body("ds_x", base_model="no-such-model:3")
    assert "no-such-model" in err(pg_stack.client.post("/jobs", json=body), 404, "not_found")


def test_empty_inputs_is_422(pg_stack: Stack) -> None:
    msg = err(pg_stack.client.post("/classify", json={"inputs": []}), 422, "validation_error")
    assert "inputs" in msg
    assert "inputs" in err(pg_stack.client.post("/classify", json={}), 422, "validation_error")


def test_hub_dataset_failures_are_user_errors_and_the_worker_goes_on(pg_stack: Stack) -> None:
    """Unloadable base model, one-class hub dataset, unreachable hub dataset: failed jobs of type user;
    the same worker then trains from a hub dataset whose class names become the labels."""
    bad = [
        ({"base_model": "no-such-org/no-such-model", "dataset": {"hub": HUB_REVIEWS}}, "no-such-org/no-such-model"),
        ({"dataset": {"hub": HUB_ONE_CLASS}}, "1 class"),
        ({"dataset": {"hub": "no-such-org/no-such-data"}}, "no-such-org/no-such-data"),
    ]
    ids = []
    for over, _ in bad:
        body = {**job_body("unused"), **over, "model_name": f"hubfail-{secrets.token_hex(3)}"}
        r = pg_stack.client.post("/jobs", json=body)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    for job_id, (_, expected) in zip(ids, bad, strict=True):
        job = pg_stack.wait_job(job_id)
        assert job["status"] == "failed" and job["error"]["type"] == "user", job["error"]
        assert expected in job["error"]["message"], job["error"]["message"]
        assert job["model"] is None
    assert "could not be reached" in pg_stack.client.get(f"/jobs/{ids[0]}").json()["error"]["message"] or \
        "offline" in pg_stack.client.get(f"/jobs/{ids[0]}").json()["error"]["message"]
    assert pg_stack.alive("worker")
    body = {**job_body("unused"), "dataset": {"hub": HUB_REVIEWS}, "model_name": "hub-reviews",
            "hyperparameters": {"epochs": 2, "learning_rate": 1e-3}}
    job = pg_stack.wait_job(pg_stack.client.post("/jobs", json=body).json()["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["dataset"] == {"hub": HUB_REVIEWS, "config": None, "split": "train"}
    r = pg_stack.client.post("/classify", json={"model": "hub-reviews", "inputs": ["x"], "top_k": None})
    assert {p["label"] for p in r.json()["predictions"][0]} == {"negative", "positive"}


def test_model_name_used_by_another_task_is_409_and_wrong_endpoint_is_422(pg_stack: Stack, dataset_id: str) -> None:
    r = pg_stack.client.post("/jobs", json=job_body(dataset_id, model_name="shared-name"))
    job = pg_stack.wait_job(r.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    body = {"task": "generation", "base_model": "gpt2", "dataset": {"id": dataset_id}, "model_name": "shared-name"}
    assert "shared-name" in err(pg_stack.client.post("/jobs", json=body), 409, "conflict")


def test_delete_dataset_conflicts_while_a_job_uses_it(pg_stack: Stack) -> None:
    ds = pg_stack.upload(content=GOOD_CSV, filename="del.csv").json()["id"]
    r = pg_stack.client.post("/jobs", json=job_body(ds, hyperparameters={"max_steps": 3}))
    job_id = r.json()["id"]
    # Either queued or running right now: both count as in use.
    assert "is used by job" in err(pg_stack.client.delete(f"/datasets/{ds}"), 409, "conflict")
    assert pg_stack.wait_job(job_id)["status"] == "succeeded"
    assert pg_stack.client.delete(f"/datasets/{ds}").status_code == 204
    assert pg_stack.client.get(f"/datasets/{ds}").status_code == 404


# -- auth and upload limit: a stack of their own --------------------------------------------------------

@pytest.fixture(scope="module")
def locked_stack(tmp_path_factory: pytest.TempPathFactory, hf_home: Path) -> Iterator[Stack]:
    stack = Stack(
        data_dir=tmp_path_factory.mktemp("locked"),
        env={"FTSERVE_API_KEYS": "alice:key-a,bob:key-b", "FTSERVE_MAX_UPLOAD_BYTES": "2000",
             "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"},
        workers=0,
    )
    with stack:
        yield stack


def test_api_keys(locked_stack: Stack) -> None:
    c = locked_stack.client
    assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
    for path in ("/datasets", "/jobs", "/models", "/metrics", "/docs", "/openapi.json"):
        assert "API key" in err(c.get(path), 401, "unauthorized"), path
    assert "invalid" in err(c.get("/jobs", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
    r = locked_stack.upload(content=GOOD_CSV[:500], filename="a.csv", headers={"Authorization": "Bearer key-b"})
    assert r.status_code == 201 and r.json()["owner"] == "bob"
    # /metrics names every owner's models: a key that is not an admin's may not read it.
    assert "admin key" in err(c.get("/metrics", headers={"Authorization": "Bearer key-a"}), 403, "forbidden")


def test_upload_over_the_size_limit_is_413(locked_stack: Stack) -> None:
    r = locked_stack.upload(content=GOOD_CSV * 3, filename="big.csv", headers={"Authorization": "Bearer key-a"})
    assert "limit" in err(r, 413, "payload_too_large")
    assert not list((locked_stack.data_dir / "datasets").glob("*/big.csv"))
