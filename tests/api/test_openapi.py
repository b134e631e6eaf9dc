"""The OpenAPI document: every route says what it returns and how it refuses; 405s carry a true `Allow`.

The live conformance run (schemathesis) is tests/e2e/test_openapi_conformance.py; these are the in-process
checks of the document's shape."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

ERROR_REF = {"$ref": "#/components/schemas/Error"}
# Successes that are not JSON: a model card, an archive, Prometheus text.
NOT_JSON = {("/models/{name}/versions/{version}/card", "get"): "text/markdown",
            ("/models/{name}/versions/{version}/archive", "get"): "application/gzip",
            ("/metrics", "get"): "text/plain"}


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(path, method, op) for path, ops in doc["paths"].items() for method, op in ops.items()]


def test_every_success_has_a_schema_and_every_error_the_error_shape(api: TestClient) -> None:
    doc = api.get("/openapi.json").json()
    assert len(operations(doc)) >= 34
    for path, method, op in operations(doc):
        responses = op["responses"]
        successes = [code for code in responses if code.startswith("2")]
        assert successes, (path, method)
        for code in successes:
            content = responses[code].get("content")
            if code == "204":
                assert not content, (path, method)
                continue
            media = NOT_JSON.get((path, method), "application/json")
            assert media in content, (path, method, code, content)
            schema = content[media]["schema"]
            if media == "application/json":
                assert "$ref" in schema, (path, method, code, schema)  # a named model, not a bare object
        errors = [code for code in responses if code[0] in "45"]
        assert {"401", "403", "405", "413"} <= set(errors), (path, method, errors)
        for code in errors:
            expected = {"$ref": "#/components/schemas/NotReadyBody"} if (path, code) == ("/readyz", "503") \
                else ERROR_REF
            assert responses[code]["content"] == {"application/json": {"schema": expected}}, (path, method, code)
        if op.get("parameters") or op.get("requestBody"):
            assert "422" in errors, (path, method)
    assert "HTTPValidationError" not in doc["components"]["schemas"]  # FastAPI's own 422 shape is not ours


def test_bodies_read_by_hand_are_documented(api: TestClient) -> None:
    doc = api.get("/openapi.json").json()
    jobs = doc["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert jobs == {"$ref": "#/components/schemas/JobRequest"}
    request = doc["components"]["schemas"]["JobRequest"]
    assert {"task", "base_model", "dataset"} <= set(request["required"])
    assert request["properties"]["task"]["enum"] == ["classification", "question-answering", "summarization",
                                                      "generation"]
    imports = doc["paths"]["/models/{name}/versions"]["post"]["requestBody"]["content"]
    assert set(imports) == {"multipart/form-data", "application/json"}
    # The links a client (and schemathesis's stateful phase) follows from an upload.
    links = doc["paths"]["/datasets"]["post"]["responses"]["201"]["links"]
    assert links["TrainOnDataset"]["requestBody"] == {"dataset": {"id": "$response.body#/id"}}
    assert links["GetDataset"]["parameters"] == {"dataset_id": "$response.body#/id"}


def test_a_405_lists_every_method_of_the_path(api: TestClient) -> None:
    for path, method, allowed in [("/jobs", "DELETE", {"GET", "POST"}),
                                  ("/models/m", "POST", {"GET", "PUT", "DELETE"}),
                                  ("/healthz", "HEAD", {"GET"}),
                                  ("/models/m/aliases/prod", "GET", {"PUT", "DELETE"}),
                                  ("/classify", "OPTIONS", {"POST"})]:
        r = api.request(method, path)
        assert r.status_code == 405, (path, method, r.text)
        assert {m.strip() for m in r.headers["allow"].split(",")} == allowed, (path, r.headers["allow"])
        if method != "HEAD":  # a HEAD answer has no body
            assert r.json()["error"]["type"] == "validation_error"
            assert method in r.json()["error"]["message"]


def test_a_body_that_is_not_utf8_json_is_a_422(api: TestClient) -> None:
    r = api.post("/classify", content=b"\xff\xfe\x00", headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["type"] == "validation_error"


def test_responses_are_checked_against_their_models(api: TestClient) -> None:
    """The models forbid extra fields: a route returning a field its model lacks fails, it is not dropped."""
    body = {"id": "ds_x", "name": "n", "format": "csv", "num_rows": 1, "columns": ["a"], "size_bytes": 1,
            "sha256": "0", "owner": "o", "created_at": "2026-01-01T00:00:00Z"}
    from pydantic import ValidationError

    from api.responses import Dataset

    Dataset.model_validate(body)
    try:
        Dataset.model_validate({**body, "surprise": 1})
    except ValidationError:
        pass
    else:
        raise AssertionError("an unknown field passed")
