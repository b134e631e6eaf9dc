"""The CLI against real processes (uvicorn + a Celery worker on PostgreSQL and Redis, auth on), run as a
subprocess the way a user runs it: upload → submit from a spec file → `jobs logs --follow` to the end (exit 0)
→ classify; a failing job exits 1 with its error; `generate` streams; `--json` output parses; API errors exit 3."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import keyed_stack
from tests.e2e.test_classification import csv_slice
from tests.stack import Stack, free_port
from tests.tiny_gpt2 import TINY_GPT2
from tests.tinymodels import TINY_BERT

KEY = "sk-cli-e2e-alice"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, hf_home: Path, redis_url: str) -> Iterator[Stack]:
    with keyed_stack(tmp_path_factory.mktemp("cli"), hf_home, redis_url, keys=f"alice:{KEY}") as s:
        yield s


def cli_env(stack: Stack, key: str = KEY) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FTSERVE_")}
    return {**env, "FTSERVE_URL": stack.base_url, "FTSERVE_API_KEY": key, "COLUMNS": "200"}


def ftserve(stack: Stack, *args: str, key: str = KEY, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *args], env=cli_env(stack, key), cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def csv_labels(path: Path) -> list[str]:
    with path.open(encoding="utf-8") as f:
        return [row["label"] for row in csv.DictReader(f)]


def test_upload_submit_spec_follow_classify_and_json(stack: Stack, shared_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "reviews.csv"
    data.write_bytes(csv_slice(shared_data / "classification" / "train.csv", 64))
    up = ftserve(stack, "datasets", "upload", str(data), "--json")
    assert up.returncode == 0, up.stderr
    ds = json.loads(up.stdout)
    assert ds["id"].startswith("ds_") and ds["num_rows"] == 64

    spec = tmp_path / "classification.json"
    spec.write_text(json.dumps({"task": "classification", "base_model": TINY_BERT, "dataset": {"id": ds["id"]},
                                "model_name": "cli-sentiment",
                                "hyperparameters": {"max_steps": 3, "batch_size": 8, "logging_steps": 1}}))
    submitted = ftserve(stack, "jobs", "submit", "--file", str(spec))
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert job_id.startswith("job_")

    logs = ftserve(stack, "jobs", "logs", job_id, "--follow")
    assert logs.returncode == 0, (logs.stdout, logs.stderr, stack.logs("worker"))
    lines = logs.stdout.splitlines()
    # Not a terminal: one plain line per event, from queued to succeeded, then the outcome.
    assert " status job queued" in lines[0] and any(" metrics " in line and '"loss"' in line for line in lines)
    assert f"job {job_id} succeeded: model cli-sentiment:1" in lines
    assert '"status":"succeeded"' in [line for line in lines if " status " in line][-1]

    shown = json.loads(ftserve(stack, "jobs", "show", job_id, "--json").stdout)
    assert shown["status"] == "succeeded" and shown["model"]["ref"] == "cli-sentiment:1"
    waited = ftserve(stack, "jobs", "wait", job_id)
    assert waited.returncode == 0 and "succeeded" in waited.stdout

    labels = set(csv_labels(data))
    classified = ftserve(stack, "classify", "--model", "cli-sentiment", "a wonderful film", "dull and long")
    assert classified.returncode == 0, classified.stderr
    rows = classified.stdout.splitlines()
    assert len(rows) == 2 and all(row.split("\t")[0] in labels for row in rows)
    as_json = json.loads(ftserve(stack, "classify", "--model", "cli-sentiment", "great", "--json").stdout)
    assert as_json["model"] == "cli-sentiment:1" and as_json["predictions"][0][0]["label"] in labels

    models = json.loads(ftserve(stack, "models", "list", "--json").stdout)
    assert [m["name"] for m in models] == ["cli-sentiment"]
    table = ftserve(stack, "jobs", "list")
    assert table.returncode == 0 and job_id in table.stdout and "succeeded" in table.stdout

    denied = ftserve(stack, "datasets", "list", key="sk-wrong")
    assert denied.returncode == 3 and denied.stderr.startswith("error: unauthorized: ") and "sk-wrong" not in \
        denied.stderr
    down = subprocess.run([sys.executable, "-m", "cli.main", "--url", f"http://127.0.0.1:{free_port()}",
                           "datasets", "list"], env=cli_env(stack), cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert down.returncode == 3 and down.stderr.startswith("error: connection_error: ")


def test_a_failing_job_exits_1_with_its_error(stack: Stack) -> None:
    failed = ftserve(stack, "jobs", "submit", "--task", "classification", "--base-model", TINY_BERT,
                     "--hub", "ftserve-test/nope", "--hp", "max_steps=2", "--follow")
    assert failed.returncode == 1, (failed.stdout, failed.stderr)
    assert failed.stdout.startswith("submitted job_") and '"status":"failed"' in failed.stdout
    job_id = failed.stdout.split()[1]
    assert f"job {job_id} failed: " in failed.stderr and "ftserve-test/nope" in failed.stderr
    again = ftserve(stack, "jobs", "wait", job_id, "--json")
    assert again.returncode == 1 and json.loads(again.stdout)["status"] == "failed"


def test_generate_streams_to_the_terminal(stack: Stack, shared_data: Path, tmp_path: Path) -> None:
    corpus = (shared_data / "generation" / "train.txt").read_text(encoding="utf-8")[:6000]
    data = tmp_path / "poems.txt"
    data.write_text(corpus[: corpus.rfind("\n\n")], encoding="utf-8")
    ds = ftserve(stack, "datasets", "upload", str(data)).stdout.strip()
    job = ftserve(stack, "jobs", "submit", "--task", "generation", "--base-model", TINY_GPT2, "--dataset", ds,
                  "--model-name", "cli-bard", "--hp", "max_steps=2", "--hp", "block_size=64", "--follow", "--json")
    assert job.returncode == 0, (job.stdout, job.stderr, stack.logs("worker"))

    wanted = "240"  # the tiny model's context is 256 positions
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "generate", "--model", "cli-bard", "ROMEO:",
                             "--max-new-tokens", wanted, "--min-new-tokens", wanted], env=cli_env(stack),
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    try:
        first = os.read(proc.stdout.fileno(), 65536)  # blocks until the CLI prints its first chunk
        if not first:
            pytest.fail(f"no output: {proc.stderr.read().decode() if proc.stderr else ''}")
        assert proc.poll() is None, "the first chunk came only when the CLI was done"
        rest = proc.stdout.read()
        assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
    text = (first + rest).decode()
    assert len(text.strip()) > 20 and text.endswith("\n")
    whole = json.loads(ftserve(stack, "generate", "--model", "cli-bard", "ROMEO:", "--max-new-tokens", "5",
                               "--json").stdout)
    assert whole["model"] == "cli-bard:1" and whole["generations"][0]["text"]
    started = time.monotonic()
    assert ftserve(stack, "generate", "--model", "nope", "x").returncode == 3 and time.monotonic() - started < 60
