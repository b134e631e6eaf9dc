"""Evaluations and promotion gates, in process: what POST …/evaluations and a job's `promote` accept (checked at
submit like a job's data: 422 naming the problem, another owner's dataset a 404), what they show, and the
promotion decision itself. Owners across keys: tests/api/test_tenancy.py."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from core.errors import ValidationFailed
from registry.db import session_scope
from registry.models import ModelVersion
from tests.api.test_bounded_input import GOOD_CSV, err, healthy, job_body
from tests.api.test_tenancy import ENV, As, register
from training.evaluation import improves
from training.spec import metric_key

URL = "/models/alices/versions/1/evaluations"


@pytest.fixture
def api(make_api: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setattr("api.routes.jobs.send_job", lambda job_id: None)  # no worker: jobs stay queued
    return make_api(**ENV)


def test_an_evaluation_is_queued_with_its_data(api: TestClient) -> None:
    alice = As(api, "alice")
    register("alices", owner="alice")
    ds = alice.post("/datasets", files={"file": ("a.csv", GOOD_CSV)}).json()
    r = alice.post(URL, json={"dataset": {"id": ds["id"]}, "columns": {"text": "text"}})
    assert r.status_code == 202, r.text
    ev = r.json()
    assert ev["id"].startswith("eval_") and ev["status"] == "queued"
    assert ev["dataset"] == {"id": ds["id"]} and ev["dataset_sha256"] == ds["sha256"]
    assert ev["columns"] == {"text": "text", "label": "label"}
    assert (ev["metrics"], ev["error"], ev["finished_at"]) == (None, None, None)
    assert ev["model"] == {"name": "alices", "version": 1, "ref": "alices:1"} and ev["created_at"]
    assert alice.get(f"{URL}/{ev['id']}").json() == ev
    assert alice.get(URL).json() == {"data": [ev], "has_more": False}
    job = alice.get(f"/jobs/{ev['id']}").json()
    assert (job["kind"], job["model_name"]) == ("evaluate", "alices")
    # The dataset is in use while the evaluation waits.
    err(alice.delete(f"/datasets/{ds['id']}"), 409, "conflict")
    hub = alice.post(URL, json={"dataset": {"hub": "ftserve-test/sentiment", "split": "test"}})
    assert hub.status_code == 202 and hub.json()["dataset"] == {
        "hub": "ftserve-test/sentiment", "config": None, "split": "test"}
    assert alice.post(URL, json={"dataset": {"hub": "x/y"}}).json()["dataset"]["split"] == "validation"


def test_bad_evaluation_requests_are_422_naming_the_problem(api: TestClient) -> None:
    alice = As(api, "alice")
    register("alices", owner="alice")
    ds = alice.post("/datasets", files={"file": ("a.csv", GOOD_CSV)}).json()["id"]
    one_class = alice.post("/datasets", files={"file": ("o.csv", b"text,label\na,x\nb,x\n")}).json()["id"]
    cases = [
        ({"dataset": {"id": ds}, "columns": {"text": "review"}}, "'review'"),
        ({"dataset": {"id": ds}, "columns": {"answers": "label"}}, "'answers'"),
        ({"dataset": {"id": ds, "hub": "x/y"}}, "exactly one"),
        ({"dataset": {"hub": "../etc"}}, "hub dataset id"),
        ({"dataset": {"id": ds}, "extra": 1}, "extra"),
        ({"dataset": {"id": ds}, "columns": {"text": "t" * 300}}, "256"),
        ({"dataset": {"id": one_class}}, "at least 2"),
        ({}, "dataset"),
    ]
    for body, needle in cases:
        assert needle in err(alice.post(URL, json=body), 422, "validation_error"), body
    assert "'ds_nope'" in err(alice.post(URL, json={"dataset": {"id": "ds_nope"}}), 404, "not_found")
    assert alice.get(URL).json()["data"] == []
    healthy(api)


def test_unknown_and_deleted_versions_are_404(api: TestClient) -> None:
    alice = As(api, "alice")
    register("alices", owner="alice")
    ds = alice.post("/datasets", files={"file": ("a.csv", GOOD_CSV)}).json()["id"]
    ev = alice.post(URL, json={"dataset": {"id": ds}}).json()["id"]
    train = alice.post("/jobs", json=job_body(ds)).json()["id"]
    assert "version 2" in err(alice.post("/models/alices/versions/2/evaluations", json={"dataset": {"id": ds}}),
                              404, "not_found")
    assert "'nobody'" in err(alice.get("/models/nobody/versions/1/evaluations"), 404, "not_found")
    assert f"'{train}'" in err(alice.get(f"{URL}/{train}"), 404, "not_found")  # a training job is no evaluation
    with session_scope() as s:
        s.get(ModelVersion, ("alices", 1)).deleted_at = dt.datetime.now(dt.UTC)
    for call in (lambda: alice.post(URL, json={"dataset": {"id": ds}}), lambda: alice.get(URL),
                 lambda: alice.get(f"{URL}/{ev}")):
        assert "no version 1" in err(call(), 404, "not_found")


def test_a_jobs_promote_is_checked_at_submit(api: TestClient) -> None:
    alice, bob = As(api, "alice"), As(api, "bob")
    ds = alice.post("/datasets", files={"file": ("a.csv", GOOD_CSV)}).json()["id"]
    theirs = bob.post("/datasets", files={"file": ("b.csv", GOOD_CSV)}).json()["id"]
    wrong = alice.post("/datasets", files={"file": ("w.csv", b"review,stars\ngood,1\nbad,0\n")}).json()["id"]

    def promote(**over: object) -> dict[str, object]:
        return job_body(ds, promote={"metric": "f1_macro", "dataset": {"id": ds}, **over})

    r = alice.post("/jobs", json=promote(metric="eval_f1_macro"))
    assert r.status_code == 201, r.text
    assert r.json()["promote"] == {"alias": "production", "metric": "f1_macro", "min_improvement": 0.0,
                                   "dataset": {"id": ds, "hub": None, "config": None, "split": "validation"}}
    assert r.json()["promotion"] is None
    assert alice.post("/jobs", json=promote(metric="eval_loss", alias="staging", min_improvement=0.01)
                      ).json()["promote"]["metric"] == "eval_loss"
    for over, needle in [({"metric": "perplexity"}, "accuracy, f1_macro, eval_loss"),
                         ({"metric": "train_loss"}, "not a classification metric"),
                         ({"alias": "Prod!"}, "alias"), ({"min_improvement": "inf"}, "min_improvement"),
                         ({"dataset": {"id": wrong}}, "'text'"), ({"extra": 1}, "extra")]:
        assert needle in err(alice.post("/jobs", json=promote(**over)), 422, "validation_error"), over
    assert "perplexity" in err(alice.post("/jobs", json={**promote(), "task": "generation"}), 422,
                               "validation_error")  # the generation keys are listed
    assert f"'{theirs}'" in err(alice.post("/jobs", json=promote(dataset={"id": theirs})), 404, "not_found")
    healthy(api)


@pytest.mark.parametrize(("metric", "new", "current", "min_improvement", "moves"), [
    ("f1_macro", 0.8, 0.7, 0.0, True),          # better
    ("f1_macro", 0.7, 0.7, 0.0, True),          # as good, and no improvement asked for
    ("f1_macro", 0.6, 0.7, 0.0, False),         # worse
    ("f1_macro", 0.75, 0.7, 0.1, False),        # better, by less than asked
    ("f1_macro", 0.81, 0.7, 0.1, True),
    ("accuracy", 0.1, None, 0.5, True),         # no alias yet: it moves, whatever the score
    ("eval_loss", 0.4, 0.5, 0.0, True),         # lower is better
    ("eval_loss", 0.6, 0.5, 0.0, False),
    ("eval_loss", 0.45, 0.5, 0.1, False),
    ("perplexity", 10.0, 20.0, 5.0, True),
    ("perplexity", 30.0, 20.0, -20.0, True),    # a negative threshold tolerates a worse score
])
def test_the_promotion_decision(metric: str, new: float, current: float | None, min_improvement: float,
                                moves: bool) -> None:
    assert improves(metric=metric, new=new, current=current, min_improvement=min_improvement) is moves


def test_metric_keys_are_the_metrics_json_keys() -> None:
    assert metric_key("classification", "f1_macro") == metric_key("classification", "eval_f1_macro") == "f1_macro"
    assert metric_key("generation", "eval_loss") == "eval_loss"
    assert metric_key("question-answering", "eval_exact_match") == "exact_match"
    with pytest.raises(ValidationFailed, match="rougeLsum"):
        metric_key("summarization", "bleu")
