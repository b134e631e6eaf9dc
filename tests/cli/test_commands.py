"""The CLI's client commands in process: typer's CliRunner, the SDK pointed at the real app (TestClient on
SQLite, no worker): tables, `--json`, spec files, exit codes 0/1/2/3, errors on stderr, the server commands'
flags."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

import ftserve
from cli import commands
from cli.main import app
from registry import jobs as jobrepo
from registry.db import session_scope
from tests.api.test_bounded_input import GOOD_CSV
from tests.api.test_tenancy import ENV, KEYS, register


@pytest.fixture
def api(make_api: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setattr("api.routes.jobs.send_job", lambda job_id: None)  # no worker here: jobs stay queued
    client = make_api(**ENV)
    seen: list[commands.Connection] = []

    def make_client(conn: commands.Connection) -> ftserve.Client:
        seen.append(conn)
        return ftserve.Client(conn.url, api_key=conn.api_key, http_client=client)  # type: ignore[arg-type]

    monkeypatch.setattr(commands, "make_client", make_client)
    client.seen = seen  # type: ignore[attr-defined]
    return client


def run(*args: str, key: str = "alice", url: str = "http://localhost") -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["--url", url, *args], env={"FTSERVE_API_KEY": KEYS[key], "COLUMNS": "200"})
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def upload(tmp_path: Path) -> str:
    path = tmp_path / "reviews.csv"
    path.write_bytes(GOOD_CSV)
    code, out, _ = run("datasets", "upload", str(path))
    assert code == 0
    return out.strip()


def test_datasets_upload_list_show_rm(api: TestClient, tmp_path: Path) -> None:
    ds = upload(tmp_path)
    assert ds.startswith("ds_")
    assert api.seen[-1].url == "http://localhost" and api.seen[-1].api_key == KEYS["alice"]  # type: ignore[attr-defined]
    code, out, _ = run("datasets", "list")
    assert code == 0 and ds in out and "reviews.csv" in out and "40" in out  # a table row
    code, out, _ = run("datasets", "list", "--json")
    listed = json.loads(out)
    assert [d["id"] for d in listed] == [ds] and listed[0]["columns"] == ["text", "label"]
    code, out, _ = run("datasets", "show", ds, "--json")
    assert json.loads(out)["preview"][0] == {"text": "good film 0", "label": "positive"}
    code, out, _ = run("datasets", "show", ds)
    assert code == 0 and "good film 0" in out and "column_types" in out
    # Another owner's dataset: an API error, exit 3, `error: <type>: <message>` on stderr.
    code, out, err = run("datasets", "show", ds, key="bob")
    assert code == 3 and out == "" and err.startswith("error: not_found: ") and ds in err
    assert run("datasets", "rm", ds) == (0, f"deleted {ds}\n", "")
    assert run("datasets", "list", "--json")[1].strip() == "[]"


def test_jobs_submit_from_flags_and_spec_files_list_show_logs_cancel_wait(api: TestClient, tmp_path: Path) -> None:
    ds = upload(tmp_path)
    code, out, _ = run("jobs", "submit", "--task", "classification", "--base-model", "ftserve-test/tiny-bert",
                       "--dataset", ds, "--model-name", "cli-a", "--hp", "max_steps=2", "--hp",
                       "learning_rate=2e-5", "--hp", "lr_scheduler_type=linear", "--column", "text=text", "--json")
    assert code == 0, out
    job = json.loads(out)
    assert job["status"] == "queued" and job["dataset"] == {"id": ds} and job["model_name"] == "cli-a"
    assert job["hyperparameters"]["max_steps"] == 2 and job["hyperparameters"]["learning_rate"] == 2e-5
    assert job["hyperparameters"]["lr_scheduler_type"] == "linear" and job["columns"]["text"] == "text"

    spec = {"task": "classification", "base_model": "ftserve-test/tiny-bert", "dataset": {"id": ds},
            "hyperparameters": {"max_steps": 3}, "model_name": "cli-b"}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "spec.yaml").write_text(f"task: classification\nbase_model: ftserve-test/tiny-bert\n"
                                        f"dataset: {{id: {ds}}}\nhyperparameters:\n  max_steps: 4\n")
    code, out, _ = run("jobs", "submit", "--file", str(tmp_path / "spec.json"), "--model-name", "cli-c")
    assert code == 0 and out.strip().startswith("job_")
    from_json = out.strip()
    code, out, _ = run("jobs", "submit", "-f", str(tmp_path / "spec.yaml"), "--json")
    assert code == 0 and json.loads(out)["hyperparameters"]["max_steps"] == 4
    got = json.loads(run("jobs", "show", from_json, "--json")[1])
    assert got["model_name"] == "cli-c" and got["hyperparameters"]["max_steps"] == 3  # the flag over the file

    code, out, _ = run("jobs", "list")
    assert code == 0 and from_json in out and "queued" in out
    assert len(json.loads(run("jobs", "list", "--json", "--status", "queued")[1])) == 3

    with session_scope() as s:
        jobrepo.add_event(s, from_json, "metrics", "", {"step": 1, "loss": 0.5})
    code, out, _ = run("jobs", "logs", from_json)
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2 and "status job queued" in lines[0] and '"loss":0.5' in lines[1]
    assert [e["type"] for e in json.loads(run("jobs", "logs", from_json, "--json")[1])] == ["status", "metrics"]
    code, out, _ = run("jobs", "show", from_json)
    assert code == 0 and "cli-c" in out and "max_steps" in out

    assert run("jobs", "cancel", from_json) == (0, f"job {from_json} cancelled\n", "")
    # A cancelled job: exit 1 with its status, for wait and a followed log alike (plain lines: no TTY here).
    code, out, err = run("jobs", "wait", from_json)
    assert code == 1 and out == "" and f"job {from_json} cancelled" in err
    code, out, err = run("jobs", "logs", from_json, "--follow")
    assert code == 1 and "status job queued" in out and "cancel" in out.splitlines()[-1]
    assert f"job {from_json} cancelled" in err
    code, out, err = run("jobs", "wait", job["id"], "--timeout", "0.3")
    assert code == 3 and "did not end" in err


def test_submit_usage_and_api_errors(api: TestClient, tmp_path: Path) -> None:
    code, _, err = run("jobs", "submit", "--task", "classification")
    assert code == 2 and "--base-model" in err and "--dataset" in err
    code, _, err = run("jobs", "submit", "--task", "classification", "--base-model", "b", "--dataset", "ds_x",
                       "--hp", "nonsense")
    assert code == 2 and "key=value" in err
    (tmp_path / "bad.json").write_text("[1, 2")
    code, _, err = run("jobs", "submit", "--file", str(tmp_path / "bad.json"))
    assert code == 2 and "bad.json is not a valid job spec" in err
    code, _, err = run("jobs", "submit", "--file", str(tmp_path / "nope.json"))
    assert code == 2  # typer: the file does not exist
    code, _, err = run("jobs", "frobnicate")
    assert code == 2
    ds = upload(tmp_path)
    code, out, err = run("jobs", "submit", "--task", "classification", "--base-model", "ftserve-test/tiny-bert",
                         "--dataset", ds, "--hp", "learning_rte=1")
    assert code == 3 and out == "" and err.startswith("error: validation_error: ") and "learning_rte" in err
    code, _, err = run("jobs", "show", "job_nope", key="bob")
    assert code == 3 and err.startswith("error: not_found: ")


def test_models_list_show_alias_rm(api: TestClient) -> None:
    register("alices", owner="alice")
    code, out, _ = run("models", "list")
    assert code == 0 and "alices" in out and "classification" in out
    assert [m["name"] for m in json.loads(run("models", "list", "--json")[1])] == ["alices"]
    code, out, _ = run("models", "show", "alices")
    assert code == 0 and "production" in out and "versions" in out
    assert run("models", "alias", "alices", "staging", "1") == (0, "alices@staging -> 1\n", "")
    assert json.loads(run("models", "show", "alices", "--json")[1])["aliases"] == {"production": 1, "staging": 1}
    code, _, err = run("models", "alias", "alices", "mine", "1", key="bob")
    assert code == 3 and err.startswith("error: not_found: ")
    code, _, err = run("models", "rm", "alices")
    assert code == 3 and err.startswith("error: conflict: ")
    assert run("models", "rm", "alices", "--force") == (0, "deleted alices\n", "")
    code, _, err = run("models", "import", "x")
    assert code == 2 and "PATH" in err


def test_predict_errors_name_the_model(api: TestClient) -> None:
    code, out, err = run("classify", "--model", "nope", "great film")
    assert code == 3 and out == "" and err.startswith("error: not_found: ") and "nope" in err
    code, _, err = run("generate", "--model", "nope", "Once")
    assert code == 3 and "nope" in err
    code, _, _ = run("classify", "great film")
    assert code == 2  # --model is required
    # Options left out are left to the API's defaults (not sent as null): the answer is the model's 404.
    for args in (("summarize", "--model", "nope", "A long text."), ("answer", "--model", "nope", "--question", "q",
                                                                      "--context", "c")):
        code, _, err = run(*args)
        assert code == 3 and err.startswith("error: not_found: ") and "nope" in err, err


def test_server_commands_keep_their_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    from cli import main

    calls: list[tuple[str, tuple[object, ...]]] = []
    monkeypatch.setattr(main, "cmd_api", lambda *a: calls.append(("api", a)) or 0)
    monkeypatch.setattr(main, "cmd_up", lambda *a: calls.append(("up", a)) or 0)
    monkeypatch.setattr(main, "cmd_worker", lambda *a: calls.append(("worker", a)) or 0)
    assert main.main(["api", "--host", "0.0.0.0", "--port", "8123"]) == 0
    assert main.main(["up"]) == 0
    assert main.main(["worker", "--queues", "a,b", "--concurrency", "2"]) == 0
    assert main.main(["worker"]) == 0
    assert calls == [("api", ("0.0.0.0", 8123)), ("up", ("127.0.0.1", 8000)), ("worker", ("a,b", 2)),
                     ("worker", (None, 1))]
    assert main.main(["api", "--port", "x"]) == 2
    assert main.main([]) == 2  # no command: the help, as a usage error


def test_follow_on_a_terminal_draws_a_progress_bar(api: TestClient, tmp_path: Path) -> None:
    import io

    from rich.console import Console
    from sqlalchemy import update

    from cli.follow import follow
    from registry.models import Job

    ds = upload(tmp_path)
    code, out, _ = run("jobs", "submit", "--task", "classification", "--base-model", "ftserve-test/tiny-bert",
                       "--dataset", ds, "--hp", "max_steps=8")
    assert code == 0
    job_id = out.strip()
    with session_scope() as s:
        s.execute(update(Job).where(Job.id == job_id).values(
            progress={"step": 3, "total_steps": 8, "epoch": 0.75, "eta_seconds": 65.0}))
        jobrepo.add_event(s, job_id, "metrics", "", {"step": 2, "loss": 0.6931})
        jobrepo.add_event(s, job_id, "metrics", "", {"step": 3, "eval_loss": 0.7, "eval_accuracy": 0.625})
        jobrepo.add_event(s, job_id, "log", "data: 40 training rows", {})
    assert run("jobs", "cancel", job_id)[0] == 0
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=160, color_system=None)
    client = commands.make_client(commands.Connection("http://localhost", KEYS["alice"]))
    final = follow(client, job_id, tty=True, console=console)
    text = screen.getvalue()
    assert final.status == "cancelled"
    assert "3/8" in text and "epoch 0.75" in text and "loss 0.6931" in text and "eval accuracy 0.6250" in text
    assert "ETA 1:05" in text and "log: data: 40 training rows" in text and "status: job queued" in text
