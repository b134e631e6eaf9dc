"""The dashboard's files in process: served under /ui with a strict CSP, open without a key while every data route
still needs one, never outside web/, and not in the OpenAPI document. The pages themselves are tested in a browser
(tests/e2e/test_dashboard.py)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient

from api.routes.ui import WEB_DIR

SHELL = ["/ui", "/ui/", "/ui/js/app.js", "/ui/css/app.css", "/ui/vendor/uplot/uPlot.esm.js", "/ui/favicon.svg",
         "/favicon.ico"]


def test_root_redirects_to_the_dashboard(api: TestClient) -> None:
    r = api.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/ui"
    r = api.get("/")
    assert r.status_code == 200 and r.url.path == "/ui"
    assert '<script type="module" src="/ui/js/app.js">' in r.text


def test_files_are_served_with_their_types_under_the_csp(api: TestClient) -> None:
    types = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".ico": "image/x-icon",
             "": "text/html", "/": "text/html"}
    for path in SHELL:
        r = api.get(path)
        assert r.status_code == 200, (path, r.text)
        suffix = next(s for s in types if path.endswith(s))
        assert r.headers["content-type"].startswith(types[suffix]), (path, r.headers["content-type"])
        csp = r.headers["content-security-policy"]
        assert csp.split(";")[0] == "default-src 'self'", csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
    assert api.get("/favicon.ico").content == (WEB_DIR / "favicon.ico").read_bytes()
    assert api.head("/ui").status_code == 200


def test_the_html_has_no_inline_script_or_style() -> None:
    """Under `default-src 'self'` an inline script or style would be blocked: there must be none to block."""
    import re

    for path in WEB_DIR.rglob("*.html"):
        text = path.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), path
        assert "<style" not in text and " style=" not in text, path
        assert not re.search(r"\son[a-z]+=", text), path  # no inline event handlers


def test_only_dashboard_files_inside_web_are_served(api: TestClient) -> None:
    for path in ["/ui/__init__.py", "/ui/nothing.js", "/ui/%2e%2e/api/main.py", "/ui/..%2fapi%2fmain.py",
                 "/ui/vendor/uplot/LICENSE", "/ui/js", "/ui/js/app%00.js"]:
        r = api.get(path)
        assert r.status_code == 404, (path, r.status_code)
        assert r.json()["error"]["type"] == "not_found"
    r = api.post("/ui")
    assert r.status_code == 405 and r.json()["error"]["type"] == "validation_error"


def test_the_shell_is_open_with_auth_on_and_the_data_is_not(make_api: Callable[..., TestClient]) -> None:
    api = make_api(FTSERVE_API_KEYS="alice:secret-a")
    for path in SHELL:
        assert api.get(path).status_code == 200, path  # a browser must load the page to be asked for the key
    assert api.get("/", follow_redirects=False).status_code == 307
    for path in ["/jobs", "/datasets", "/models", "/openapi.json", "/docs", "/ui-not-the-dashboard"]:
        r = api.get(path)
        assert r.status_code == 401, (path, r.status_code)
    # A path under /ui reaches only the file route: it cannot be walked to a data route.
    assert api.get("/ui/../jobs").status_code in (401, 404)
    assert api.get("/ui/%2e%2e/jobs").status_code == 404
    ok = {"Authorization": "Bearer secret-a"}
    assert api.get("/jobs", headers=ok).status_code == 200


def test_the_dashboard_is_not_in_the_openapi_document(api: TestClient) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p == "/" or p.startswith("/ui") or p == "/favicon.ico"]


def test_job_form_schema_names_each_tasks_hyperparameters_and_columns(api: TestClient) -> None:
    """The job form reads defaults and bounds from /openapi.json: each task's hyperparameters model and column
    fields are in the document."""
    from training.spec import FIELDS, PARAMS

    schemas = api.get("/openapi.json").json()["components"]["schemas"]
    request = schemas["JobRequest"]
    assert request["x-task-columns"] == FIELDS
    for task, model in PARAMS.items():
        name = request["x-task-params"][task].rsplit("/", 1)[1]
        props = schemas[name]["properties"]
        assert set(props) == set(model.model_fields), task
        for field, info in model.model_fields.items():
            assert props[field].get("default") == info.default, (task, field)
