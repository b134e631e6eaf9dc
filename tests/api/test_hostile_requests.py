"""Hostile requests to the API, in process (the dataset and body cases are in test_bounded_input.py): each is a
4xx in the error shape, never a 500, and the API answers /healthz afterwards."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from core.settings import get_settings
from tests.api.test_bounded_input import GOOD_CSV, err, healthy, job_body
from tests.api.test_tenancy import ENV, As, register


@pytest.fixture
def api(make_api: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setattr("api.routes.jobs.send_job", lambda job_id: None)
    return make_api()


def dataset(api: TestClient) -> str:
    return str(api.post("/datasets", files={"file": ("a.csv", GOOD_CSV)}).json()["id"])


def test_numbers_past_the_columns_range_are_422(api: TestClient) -> None:
    job = api.post("/jobs", json=job_body(dataset(api))).json()["id"]
    register("m", owner="default")
    assert "after" in err(api.get(f"/jobs/{job}/events", params={"after": 10**20}), 422, "validation_error")
    assert "version" in err(api.get(f"/models/m/versions/{10**20}"), 422, "validation_error")
    assert "version" in err(api.put("/models/m/aliases/x", json={"version": 10**20}), 422, "validation_error")
    r = api.get(f"/jobs/{job}/events", headers={"Accept": "text/event-stream", "Last-Event-ID": "9" * 5000})
    assert "last-event-id" in err(r, 422, "validation_error").lower()
    r = api.get(f"/jobs/{job}/events", headers={"Accept": "text/event-stream", "Last-Event-ID": "x1"})
    assert "last-event-id" in err(r, 422, "validation_error").lower()
    for field, value in (("seed", 10**30), ("warmup_steps", 10**30), ("max_steps", 10**30)):
        body = job_body(dataset(api), hyperparameters={field: value})
        assert field in err(api.post("/jobs", json=body), 422, "validation_error")
    healthy(api)


def test_a_non_utf8_header_byte_is_not_a_500(api: TestClient, make_api: Callable[..., TestClient]) -> None:
    assert api.get("/jobs", headers={"X-Anything": b"caf\xe9"}).status_code == 200
    locked = make_api(**ENV)
    assert "invalid" in err(locked.get("/jobs", headers={"Authorization": b"Bearer \xff\xfe"}), 401, "unauthorized")
    assert locked.get("/jobs", headers={**As(locked, "alice").headers, "X-Anything": b"\xff"}).status_code == 200


@pytest.mark.parametrize(("body", "field"), [
    ({"prompt": "x", "temperature": 1e-300, "do_sample": True}, "temperature"),
    ({"prompt": "x", "repetition_penalty": 1e-300}, "repetition_penalty"),
    ({"prompt": "x", "seed": 10**30}, "seed"),
    ({"prompt": "x", "stop": ["s"] * 17}, "stop"),
    ({"prompt": "x", "stop": ["s" * 257]}, "stop"),
    ({"prompt": "x", "model": "m" * 10_000}, "model"),
])
def test_generation_parameters_are_bounded(api: TestClient, body: dict[str, Any], field: str) -> None:
    assert field in err(api.post("/generate", json=body), 422, "validation_error")


def test_summarize_and_classify_parameters_are_bounded(api: TestClient) -> None:
    for body, field in (({"inputs": "x", "length_penalty": 1e308}, "length_penalty"),
                        ({"inputs": "x", "no_repeat_ngram_size": 10**20}, "no_repeat_ngram_size")):
        assert field in err(api.post("/summarize", json=body), 422, "validation_error")
    assert "top_k" in err(api.post("/classify", json={"inputs": "x", "top_k": 10**20}), 422, "validation_error")
    assert "model" in err(api.post("/classify", json={"inputs": "x", "model": "m" * 300}), 422, "validation_error")


def test_unknown_model_names_do_not_become_metric_labels(api: TestClient) -> None:
    for i in range(300):
        assert api.post("/classify", json={"model": f"made-up-{i}", "inputs": ["x"]}).status_code == 404
    text = api.get("/metrics").text
    assert "made-up" not in text
    assert 'ftserve_requests_total{endpoint="/classify",model="-",status="404"} 300.0' in text


@pytest.mark.parametrize("hub", ["/etc", "../../etc", "x/..", "./data", "a/b/c", "~/x"])
def test_hub_names_cannot_name_a_path(api: TestClient, hub: str) -> None:
    ds = dataset(api)
    for body in (job_body(ds, dataset={"hub": hub}), job_body(ds, validation={"hub": hub}),
                 job_body(ds, base_model=hub)):
        assert "hub" in err(api.post("/jobs", json=body), 422, "validation_error")


def test_messages_carry_no_absolute_path(api: TestClient) -> None:
    register("broken", owner="default")  # its files are at /nonexistent/broken/1
    message = err(api.post("/classify", json={"model": "broken", "inputs": ["x"]}), 503, "not_ready")
    assert "broken:1" in message and "/nonexistent" not in message and str(get_settings().data_dir) not in message


def test_auth_off_answers_loopback_hosts_and_same_origin_writes_only(api: TestClient) -> None:
    for host in ("localhost", "localhost:8000", "127.0.0.1:9", "[::1]:8000"):
        assert api.get("/jobs", headers={"Host": host}).status_code == 200, host
    for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil.example"):
        assert "localhost" in err(api.get("/jobs", headers={"Host": host}), 403, "forbidden"), host
    # A form another site's page posts to the API carries that site's Origin: refused, and nothing is stored.
    r = api.post("/datasets", files={"file": ("a.csv", GOOD_CSV)}, headers={"Origin": "http://evil.example"})
    assert "cross-site" in err(r, 403, "forbidden")
    assert api.get("/datasets").json()["data"] == []
    assert api.post("/jobs", json={}, headers={"Origin": "null"}).status_code == 403
    # The API's own pages, and clients that send no Origin (curl, scripts), may write; reads pass from anywhere.
    ok = api.post("/datasets", files={"file": ("a.csv", GOOD_CSV)}, headers={"Origin": "http://localhost"})
    assert ok.status_code == 201
    assert api.post("/datasets", files={"file": ("a.csv", GOOD_CSV)}).status_code == 201
    assert api.get("/datasets", headers={"Origin": "http://evil.example"}).status_code == 200
    healthy(api)


def test_auth_on_checks_keys_not_hosts(make_api: Callable[..., TestClient]) -> None:
    locked = make_api(**ENV)
    r = locked.get("/jobs", headers={**As(locked, "alice").headers, "Host": "ftserve.example.com"})
    assert r.status_code == 200


def test_idempotency_race_compares_the_body(api: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two requests with one key: the second misses the first in its lookup (not committed yet), and its
    insert then violates the key's unique index. It must compare bodies like the lookup would have."""
    import api.routes.jobs as jobs_route

    ds = dataset(api)
    first = api.post("/jobs", json=job_body(ds), headers={"Idempotency-Key": "k1"})
    assert first.status_code == 201
    real = jobs_route._first_with_key
    calls: list[int] = []

    def racing(*args: Any) -> Any:
        calls.append(1)
        return None if len(calls) == 1 else real(*args)

    monkeypatch.setattr(jobs_route, "_first_with_key", racing)
    other = api.post("/jobs", json=job_body(ds, model_name="other"), headers={"Idempotency-Key": "k1"})
    assert "different request body" in err(other, 409, "conflict")
    calls.clear()
    same = api.post("/jobs", json=job_body(ds), headers={"Idempotency-Key": "k1"})
    assert same.status_code == 200 and same.json()["id"] == first.json()["id"]
    # Without a key, two identical requests are two jobs.
    monkeypatch.setattr(jobs_route, "_first_with_key", real)
    a, b = (api.post("/jobs", json=job_body(ds)).json()["id"] for _ in range(2))
    assert a != b


def test_version_numbers_past_32_bits_name_no_version(api: TestClient) -> None:
    register("m", owner="default")
    for ref in ("m:99999999999999999999", f"m:{2**31}"):
        assert ref in err(api.post("/classify", json={"model": ref, "inputs": ["x"]}), 404, "not_found")
        msg = err(api.post("/jobs", json=job_body(dataset(api), base_model=ref)), 422, "validation_error")
        assert "base_model" in msg
    healthy(api)


def test_a_new_model_name_cannot_hide_a_cached_hub_model(api: TestClient, tmp_path: Any) -> None:
    """`model_name: "gpt2"` on a server that has hub `gpt2` cached would make the bare name `gpt2` a registered
    model: every other key's `base_model: "gpt2"` would then be a 404 instead of the hub model."""
    from core.hfcache import place_in_cache

    src = tmp_path / "gpt2-src"
    src.mkdir()
    (src / "config.json").write_text('{"model_type": "gpt2"}')
    place_in_cache(src, hf_home=tmp_path / "hf", repo_id="tinyhub")
    msg = err(api.post("/jobs", json=job_body(dataset(api), model_name="tinyhub")), 409, "conflict")
    assert "tinyhub" in msg and "cache" in msg
    assert api.post("/jobs", json=job_body(dataset(api), model_name="not-cached")).status_code == 201
