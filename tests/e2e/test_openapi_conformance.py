"""The OpenAPI document against the live API: schemathesis, every phase (stateful included, following the
document's links from an upload to a job), against uvicorn and a Celery worker on PostgreSQL and Redis.

The server is seeded with a trained classifier first, so predict calls and the registry answer with real
bodies, not only 404s. 0 server errors and 0 failures of the four conformance checks; the case count is printed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, fresh_pg_database
from tests.stack import Stack, free_port
from tests.tinymodels import TINY_BERT

CHECKS = ("not_a_server_error", "status_code_conformance", "response_schema_conformance",
          "content_type_conformance", "allow_header_conformance")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, hf_home: Path, redis_url: str) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("openapi")
    with fresh_pg_database() as url, Stack(
        data_dir=data_dir,
        env={"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "FTSERVE_DATABASE_URL": url,
             "FTSERVE_BROKER_URL": redis_url, "FTSERVE_QUEUE": f"openapi_{free_port()}",
             # Generated jobs queue up behind each other: a small cap turns the rest into documented 429s.
             "FTSERVE_MAX_ACTIVE_JOBS_PER_OWNER": "3", "FTSERVE_MAX_JOB_SECONDS": "60"},
    ) as s:
        yield s


def test_schemathesis_finds_no_nonconformance(stack: Stack, tmp_path: Path) -> None:
    csv = "text,label\n" + "".join(f"{w} film,{lab}\n" for w, lab in [("great", "pos"), ("dull", "neg")] * 8)
    ds = stack.upload(content=csv.encode(), filename="seed.csv").json()
    job = stack.client.post("/jobs", json={"task": "classification", "base_model": TINY_BERT,
                                           "dataset": {"id": ds["id"]}, "model_name": "seed",
                                           "hyperparameters": {"max_steps": 1, "batch_size": 8}})
    assert job.status_code == 201, job.text
    assert stack.wait_job(job.json()["id"])["status"] == "succeeded", stack.logs("worker")

    out = subprocess.run(
        [str(Path(sys.executable).parent / "schemathesis"), "run", f"{stack.base_url}/openapi.json",
         "--checks", ",".join(CHECKS), "--phases", "examples,coverage,fuzzing,stateful",
         "--max-examples", "8", "--workers", "2", "--seed", "7", "--no-color", "--request-timeout", "30",
         "--generation-database", "none", "--report", "junit", "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.e2e.schemathesis_hooks", "PYTHONPATH": str(REPO)},
    )
    report = out.stdout + out.stderr
    (tmp_path / "schemathesis.txt").write_text(report)
    print(report[-4000:])
    cases = re.search(r"(\d+) generated", report) or re.search(r"(\d+) test cases", report)
    assert cases, report[-3000:]
    print(f"schemathesis ran {cases.group(1)} cases")
    assert out.returncode == 0, report[report.find("FAILURES"):][:20000]
    stateful = re.search(r"Stateful \(in [^)]*\)\s+Scenarios:\s+(\d+)\s+API Links:\s+(\d+) covered", report)
    assert stateful and int(stateful.group(2)) >= 4, report[-3000:]
    # The stateful phase made datasets and, from their links, jobs (which the worker ran to an end).
    with_jobs = stack.client.get("/jobs", params={"limit": 100}).json()["data"]
    assert len(stack.client.get("/datasets", params={"limit": 100}).json()["data"]) > 1
    assert len(with_jobs) > 1, with_jobs
    print(f"after the run: {len(with_jobs)} jobs, statuses {sorted({j['status'] for j in with_jobs})}")
    assert "unhandled error" not in stack.logs("api"), stack.logs("api")[-3000:]
