"""Hostile or broken input to the API, in process: each case is a 4xx in the error shape (or a correct answer),
the API answers /healthz afterwards, and nothing is left behind."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import anyio
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from core.settings import get_settings
from registry.db import session_scope
from registry.models import Dataset, DatasetCheck

GOOD_CSV = ("text,label\n" + "".join(f"good film {i},positive\nbad film {i},negative\n" for i in range(20))).encode()


def err(r: Any, status: int, type_: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"]["type"] == type_, body
    assert not body["error"]["message"].startswith("internal"), body
    return str(body["error"]["message"])


def healthy(api: TestClient) -> None:
    r = api.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def upload(api: TestClient, content: bytes, filename: str) -> Any:
    return api.post("/datasets", files={"file": (filename, content)})


def stored_files() -> list[Path]:
    root = get_settings().data_dir / "datasets"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def dataset_rows() -> int:
    with session_scope() as s:
        return s.query(Dataset).count()


@pytest.fixture
def no_enqueue(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    sent: list[str] = []
    monkeypatch.setattr("api.routes.jobs.send_job", sent.append)
    return sent


def job_body(dataset_id: str, **over: Any) -> dict[str, Any]:
    return {"task": "classification", "base_model": "ftserve-test/tiny-bert", "dataset": {"id": dataset_id},
            "hyperparameters": {"max_steps": 2}, **over}


# -- request bodies ------------------------------------------------------------------------------------------

def test_json_body_over_the_cap_is_413(api: TestClient) -> None:
    body = json.dumps({"task": "classification", "base_model": "x", "model_name": "y" * 70_000})
    msg = err(api.post("/jobs", content=body, headers={"content-type": "application/json"}), 413,
              "payload_too_large")
    assert "65536" in msg
    healthy(api)


def test_declared_content_length_over_the_cap_is_refused_before_reading(api: TestClient) -> None:
    """The body is never read: `receive` fails the test if it is called."""
    app = api.app
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body was read although Content-Length is over the cap")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def call(path: str, declared: int) -> None:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": [(b"host", b"localhost"), (b"content-type", b"application/json"),
                             (b"content-length", str(declared).encode())],
                 "client": ("127.0.0.1", 1), "server": ("testserver", 80)}
        await app(scope, receive, send)

    for path, declared in (("/jobs", 65_537), ("/datasets", 3 * 1024 * 1024), ("/classify", 10**12)):
        sent.clear()
        anyio.run(call, path, declared)
        assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413, (path, sent)
        body = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
        assert body["error"]["type"] == "payload_too_large", body
        assert (b"connection", b"close") in sent[0]["headers"]
    healthy(api)


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [100, 900, 20_000])
def test_deeply_nested_json_bodies_are_4xx(api: TestClient, no_enqueue: list[str], depth: int) -> None:
    bodies = {
        "/jobs": '{"task": "classification", "base_model": "x", "dataset": {"id": "ds_x"}, '
                 f'"hyperparameters": {{"epochs": {nested(depth)}}}}}',
        "/classify": f'{{"inputs": {nested(depth)}}}',
        "/answer": f'{{"inputs": [{{"question": "q", "context": {nested(depth)}}}]}}',
    }
    for path, body in bodies.items():
        r = api.post(path, content=body, headers={"content-type": "application/json"})
        assert 400 <= r.status_code < 500, (path, r.status_code, r.text[:300])
        assert r.json()["error"]["type"] == "validation_error", r.text[:300]
        if depth > 100:
            assert "nested" in r.json()["error"]["message"], r.text[:300]
    assert no_enqueue == []
    healthy(api)


def test_huge_integer_in_a_json_body_is_422(api: TestClient) -> None:
    body = '{"inputs": ["x"], "top_k": ' + "9" * 5000 + "}"
    msg = err(api.post("/classify", content=body, headers={"content-type": "application/json"}), 422,
              "validation_error")
    assert "digits" in msg
    healthy(api)


# -- uploads -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("filename", "content", "expected"),
    [
        ("deep.jsonl", b'{"text": "a", "label": "x"}\n{"text": "b", "label": ' + nested(5000).encode() + b"}\n",
         "line 2"),
        ("deep100.jsonl", b'{"text": "a", "label": "x"}\n{"text": "b", "label": ' + nested(100).encode() + b"}\n",
         "line 2"),
        ("deep.json", b'[{"text": "a", "label": "x"}, {"text": "b", "label": ' + nested(5000).encode() + b"}]",
         "item 2"),
        ("bigint.jsonl", b'{"text": "a", "label": 1}\n{"text": "b", "label": ' + b"7" * 5000 + b"}\n", "line 2"),
        ("bigint.json", b'[{"text": "a", "label": ' + b"7" * 5000 + b"}]", "item 1"),
        ("bad.parquet", b"PAR1 this is not parquet PAR1", "Parquet"),
    ],
)
def test_bad_uploads_are_422_naming_the_line(api: TestClient, filename: str, content: bytes, expected: str) -> None:
    msg = err(upload(api, content, filename), 422, "validation_error")
    assert expected in msg, msg
    assert filename in msg, msg
    assert str(get_settings().data_dir) not in msg and "/tmp" not in msg, msg
    if "deep" in filename:
        assert "nested" in msg
    if "bigint" in filename:
        assert "digits" in msg
    assert stored_files() == [] and dataset_rows() == 0
    healthy(api)


def test_upload_over_the_cap_is_413_and_leaves_nothing(api: TestClient) -> None:
    big = b"text,label\n" + b"a long review,positive\n" * 50_000  # 1.15 MB > the 1 MiB cap
    assert "limit" in err(upload(api, big, "big.csv"), 413, "payload_too_large")
    assert stored_files() == [] and dataset_rows() == 0
    healthy(api)


def test_rows_over_the_cap_are_422(api: TestClient) -> None:
    data = b"text,label\n" + b"".join(b"row %d,%d\n" % (i, i % 2) for i in range(1001))
    msg = err(upload(api, data, "many.csv"), 422, "validation_error")
    assert "1000 rows" in msg and "many.csv" in msg
    assert stored_files() == [] and dataset_rows() == 0


def parquet_bytes(table: pa.Table, **kw: Any) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, **kw)
    return buf.getvalue()


def test_parquet_binary_column_preview(api: TestClient) -> None:
    table = pa.table({"text": ["a", "b", "c"], "label": [0, 1, 0], "blob": [b"\x00\xff" * 100, b"", None]})
    r = upload(api, parquet_bytes(table), "blob.parquet")
    assert r.status_code == 201, r.text
    got = api.get(f"/datasets/{r.json()['id']}")
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["preview"][0]["text"] == "a" and body["preview"][0]["label"] == 0
    assert isinstance(body["preview"][0]["blob"], str) and "200 bytes" in body["preview"][0]["blob"]
    assert body["preview"][2]["blob"] is None
    assert body["column_types"] == {"text": ["string"], "label": ["integer"], "blob": ["binary", "null"]}
    healthy(api)


def test_preview_of_long_cells_is_truncated_under_64_kib(api: TestClient) -> None:
    rows = [{"text": "w" * 60_000, "label": i % 2, "extra": {"deep": ["x" * 20_000]}} for i in range(6)]
    r = upload(api, "".join(json.dumps(row) + "\n" for row in rows).encode(), "long.jsonl")
    assert r.status_code == 201, r.text
    got = api.get(f"/datasets/{r.json()['id']}")
    assert got.status_code == 200 and len(got.content) < 64 * 1024
    preview = got.json()["preview"]
    assert len(preview) == 5 and preview[0]["text"].startswith("www") and preview[0]["label"] == 0


def test_parquet_over_the_uncompressed_cap_is_422(api: TestClient) -> None:
    # 8 MiB cap in this app; the metadata says 16 MB before a page is read.
    table = pa.table({"text": ["x" * 2_000_000] * 8, "label": [0, 1] * 4})
    data = parquet_bytes(table, compression="zstd", use_dictionary=False)
    assert len(data) < 20_000
    msg = err(upload(api, data, "bomb.parquet"), 422, "validation_error")
    assert "decompressed" in msg and "bomb.parquet" in msg
    # Dictionary-encoded: the metadata says a few KB; counted while read, stopped at the cap.
    idx = pa.array([0] * 1000, pa.int32())
    table = pa.table({"text": pa.DictionaryArray.from_arrays(idx, pa.array(["y" * 10_000])),
                      "label": pa.DictionaryArray.from_arrays(idx, pa.array(["a"]))})
    msg = err(upload(api, parquet_bytes(table, compression="zstd"), "rows.parquet"), 422, "validation_error")
    assert "decompressed" in msg
    assert stored_files() == [] and dataset_rows() == 0
    healthy(api)


# -- reads answer from the stored profile ----------------------------------------------------------------------

def test_get_and_submit_do_not_read_the_file(api: TestClient, no_enqueue: list[str]) -> None:
    r = upload(api, GOOD_CSV, "reviews.csv")
    assert r.status_code == 201, r.text
    ds = r.json()
    one_class = upload(api, b"text,label\na,pos\nb,pos\nc,pos\n", "one.csv").json()
    for path in stored_files():
        path.write_bytes(b"\xff\xfe garbage, not a dataset\n")
    got = api.get(f"/datasets/{ds['id']}")
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["preview"][0] == {"text": "good film 0", "label": "positive"} and len(body["preview"]) == 5
    assert body["num_rows"] == 40 and body["columns"] == ["text", "label"]
    assert set(body) >= {"id", "name", "format", "num_rows", "columns", "size_bytes", "sha256", "created_at",
                         "preview"}
    r = api.post("/jobs", json=job_body(ds["id"]))
    assert r.status_code == 201, r.text
    assert no_enqueue == [r.json()["id"]]
    msg = err(api.post("/jobs", json=job_body(ds["id"], columns={"label": "stars"})), 422, "validation_error")
    assert "'stars'" in msg and "columns are: text, label" in msg
    msg = err(api.post("/jobs", json=job_body(one_class["id"])), 422, "validation_error")
    assert "1 class" in msg and "pos" in msg
    body = {"task": "generation", "base_model": "gpt2", "dataset": {"id": ds["id"]}, "columns": {"text": "label"}}
    assert api.post("/jobs", json=body).status_code == 201


def test_wrong_types_are_422_from_the_profile(api: TestClient) -> None:
    rows = [{"review": "fine", "stars": 5, "n": 1}, {"review": "meh", "stars": 2, "n": 2},
            {"review": "", "stars": 3, "n": 3}]
    ds = upload(api, "".join(json.dumps(r) + "\n" for r in rows).encode(), "typed.jsonl").json()
    msg = err(api.post("/jobs", json=job_body(ds["id"], columns={"text": "n", "label": "stars"})), 422,
              "validation_error")
    assert "row 1" in msg and "'text'" in msg and "string" in msg
    msg = err(api.post("/jobs", json=job_body(ds["id"], columns={"text": "review", "label": "stars"})), 422,
              "validation_error")
    assert "row 3" in msg and "empty" in msg
    body = {"task": "summarization", "base_model": "t5-small", "dataset": {"id": ds["id"]},
            "columns": {"document": "review", "summary": "stars"}}
    msg = err(api.post("/jobs", json=body), 422, "validation_error")
    assert "row 1" in msg and "'summary'" in msg and "int" in msg


def test_a_dataset_stored_before_profiles_gets_one_on_first_use(api: TestClient) -> None:
    ds = upload(api, GOOD_CSV, "legacy.csv").json()
    with session_scope() as s:
        s.get(Dataset, ds["id"]).profile = None
    got = api.get(f"/datasets/{ds['id']}").json()
    assert got["preview"][1] == {"text": "bad film 0", "label": "negative"}
    with session_scope() as s:
        profile = s.get(Dataset, ds["id"]).profile
    assert profile is not None and profile["num_rows"] == 40


QA_ROWS = [
    {"question": "Who?", "context": "Ada wrote it.", "answers": {"text": ["Ada"], "answer_start": [0]}},
    {"question": "What?", "context": "Ada wrote it.", "answers": {"text": ["wrote"], "answer_start": [0]}},
]


def test_question_answering_row_check_is_cached(api: TestClient, no_enqueue: list[str]) -> None:
    bad = upload(api, "".join(json.dumps(r) + "\n" for r in QA_ROWS).encode(), "bad_squad.jsonl").json()
    good = upload(api, (json.dumps(QA_ROWS[0]) + "\n") * 3, "squad.jsonl").json()
    body = {"task": "question-answering", "base_model": "ftserve-test/tiny-bert"}
    msg = err(api.post("/jobs", json={**body, "dataset": {"id": bad["id"]}}), 422, "validation_error")
    assert "row 2" in msg and "answer_start 0" in msg
    assert api.post("/jobs", json={**body, "dataset": {"id": good["id"]}}).status_code == 201
    with session_scope() as s:
        checks = {c.dataset_id: c.error for c in s.query(DatasetCheck)}
    assert checks[good["id"]] is None and "row 2" in (checks[bad["id"]] or "")
    for path in stored_files():
        path.write_bytes(b"garbage")  # a cached outcome does not read the rows again
    assert msg == err(api.post("/jobs", json={**body, "dataset": {"id": bad["id"]}}), 422, "validation_error")
    assert api.post("/jobs", json={**body, "dataset": {"id": good["id"]}}).status_code == 201
    # Another column mapping is another check (and reads the now broken file).
    r = api.post("/jobs", json={**body, "dataset": {"id": good["id"]},
                                "columns": {"question": "context", "context": "context", "answers": "answers"}})
    assert r.status_code in (409, 422), r.text


def test_a_json_body_to_the_upload_route_has_the_body_cap(api: TestClient) -> None:
    """Only a multipart upload streams to disk; a JSON body to /datasets is read into memory, so it gets the
    (smaller) body cap, not the upload cap."""
    body = json.dumps({"rows": ["x" * 1000] * 100})  # 100 KB: over the 64 KiB body cap, under the 1 MiB upload cap
    err(api.post("/datasets", content=body, headers={"content-type": "application/json"}), 413, "payload_too_large")
    healthy(api)


def test_parquet_map_columns_are_counted_and_read(api: TestClient) -> None:
    maps = pa.array([[("k", "v" * 10)], [], [("a", "b"), ("c", "d")]], pa.map_(pa.string(), pa.string()))
    table = pa.table({"text": ["a", "b", "c"], "label": [0, 1, 0], "meta": maps})
    r = upload(api, parquet_bytes(table), "maps.parquet")
    assert r.status_code == 201, r.text
    assert api.get(f"/datasets/{r.json()['id']}").status_code == 200
    # A map column over the decompressed cap is refused like any other.
    big = pa.array([[("k", "v" * 1_000_000)]] * 10, pa.map_(pa.string(), pa.string()))
    table = pa.table({"text": ["a"] * 10, "label": [0] * 10, "meta": big})
    msg = err(upload(api, parquet_bytes(table, compression="zstd", use_dictionary=False), "bigmap.parquet"), 422,
              "validation_error")
    assert "decompressed" in msg
    healthy(api)


@pytest.mark.parametrize(("filename", "content"), [
    ("wide.csv", ("text," + "c" * 300 + "\na,b\n").encode()),
    ("wide.jsonl", (json.dumps({"text": "a", "c" * 300: 1}) + "\n").encode()),
])
def test_column_names_are_bounded(api: TestClient, filename: str, content: bytes) -> None:
    msg = err(upload(api, content, filename), 422, "validation_error")
    assert "256" in msg and filename in msg
    assert stored_files() == [] and dataset_rows() == 0
