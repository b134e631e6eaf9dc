#!/usr/bin/env python
"""Lifecycle bench: how fast an idle worker claims a job, and how fast the API serves a finished one.

Starts ftserve as it runs in production, as real processes with default settings: `python -m cli.main api`
(uvicorn, one worker) and `python -m cli.main worker --concurrency 1` (Celery, solo pool), on a fresh
PostgreSQL database (created here, dropped at the end) and Redis (a queue of its own). The base model is the
tests' tiny BERT (`tests/tinymodels.py::build_tiny_bert`), placed in a temporary `HF_HOME` (offline); the
dataset is the first `--rows` rows of `../shared/data/classification/train.csv`, uploaded once.

1. Claim latency. `--warmup` jobs (not counted), then `--count` jobs, one at a time, each submitted to an idle
   worker (the previous job has finished and the worker has logged its task as done, plus `--idle-seconds`):
     POST -> running     = the job's `started_at` (written by the worker's claim UPDATE, queued -> running)
                           minus the bench's clock just before `POST /jobs` was sent (same machine, same clock);
     POST -> first step  = `created_at` of the job's first `metrics` event (the Trainer's log of step 1:
                           `logging_steps=1`) minus the same clock.
   Median and max of each (target: median claim <= 250 ms).
2. Read throughput. `GET /jobs/{id}` of the last finished job (with its full metrics) under
   `wrk -t<threads> -c<connections> -d<duration>s --latency`, then the same against a bare FastAPI + SQLAlchemy
   endpoint reading the same row of the same database (`--serve-bare`, below), run by uvicorn with one worker
   like ftserve's API. The worker is stopped first; the two runs are one after the other, each after a short
   unmeasured wrk warm-up. Targets: ftserve req/s >= 0.8 x bare, and ftserve p99/p50 <= 1.5 x bare p99/p50.

CPU use of the machine and of each process group is printed per phase, so contention from other work on
the machine shows in the output; for each load run, the server process's CPU time per request too, a figure
that moves less with contention than req/s does. Exits 0 unless `--strict` and a target fails; 2 when `wrk`
is missing.

    apt-get install -y wrk
    .venv/bin/python bench/lifecycle_bench.py [--count 20] [--duration 20] [--connections 50] [--strict]

Internal: `bench/lifecycle_bench.py --serve-bare --port P --db URL` runs the bare endpoint alone.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import os
import platform
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.measure import (
    WrkStats,
    cpu_model,
    load_average,
    machine_cpu_seconds,
    parse_wrk,
    process_cpu_seconds,
    run_wrk,
    tree_cpu_seconds,
    verdict,
)
from tests.stack import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
TRAIN_CSV = SHARED_DATA / "classification" / "train.csv"
PG_ADMIN_URL = os.environ.get("FTSERVE_BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("FTSERVE_BENCH_REDIS", "redis://127.0.0.1:6379/0")
CLAIM_TARGET_MS = 250.0
RPS_RATIO_TARGET = 0.8
TAIL_RATIO_TARGET = 1.5
TERMINAL = ("succeeded", "failed", "cancelled")
# Celery logs this line when a task returns: the worker is then back to waiting on the broker.
TASK_DONE = re.compile(r"Task ftserve\.run_job\[[^\]]+\] succeeded in")


# -- the bare baseline ----------------------------------------------------------------------------------------
def serve_bare(port: int, db_url: str) -> None:
    """One sync FastAPI endpoint reading one `jobs` row by id through SQLAlchemy, served like ftserve's API."""
    import uvicorn
    from fastapi import FastAPI, HTTPException
    from sqlalchemy import MetaData, Table, create_engine, select
    from sqlalchemy.orm import Session

    # The pool is sized like ftserve's (registry/db.py), so a pool wait is not a difference between the two.
    engine = create_engine(db_url, pool_size=10, max_overflow=20)
    jobs = Table("jobs", MetaData(), autoload_with=engine)
    app = FastAPI(title="bare")

    @app.get("/jobs/{job_id}")
    def get_job(job_id: str) -> dict[str, Any]:
        with Session(engine) as session:
            row = session.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
        if row is None:
            raise HTTPException(status_code=404, detail=f"job '{job_id}' not found")
        return dict(row)

    # As `cli.main cmd_api` runs ftserve's API: one worker, log level info (so the access log is on in both).
    uvicorn.run(app, host="127.0.0.1", port=port, workers=1, log_level="info", timeout_graceful_shutdown=10)


# -- processes, CPU accounting -------------------------------------------------------------------------------
@dataclass
class CpuReport:
    wall: float
    cores: dict[str, float]  # CPU seconds per wall second, per group
    other: float  # the machine's busy cores less the groups'
    text: str


class CpuMeter:
    """CPU used over a window, in cores: the machine's, that of process trees (given by their root pid) and of
    this process alone. A process that exits within the window is counted when its parent in the tree reaps it
    (cutime): training processes by the worker, PostgreSQL backends by the postmaster, wrk by this process."""

    def __init__(self, trees: dict[str, int], self_label: str | None = None) -> None:
        self.trees = trees
        self.self_label = self_label
        self.start_wall = time.monotonic()
        self.start_machine = machine_cpu_seconds()
        self.start_trees = {name: tree_cpu_seconds(root) for name, root in trees.items()}
        self.start_self = process_cpu_seconds(os.getpid())

    def report(self, other_label: str = "other processes") -> CpuReport:
        wall = time.monotonic() - self.start_wall
        busy, total = machine_cpu_seconds()
        machine = (busy - self.start_machine[0]) / wall
        used: dict[str, float] = {}
        for name, root in self.trees.items():
            before, after = self.start_trees[name], tree_cpu_seconds(root)
            seconds = sum(v - before.get(pid, 0.0) for pid, v in after.items())
            seconds -= sum(v for pid, v in before.items() if pid not in after)  # now in the parent's cutime
            used[name] = seconds / wall
        if self.self_label:
            used[self.self_label] = (process_cpu_seconds(os.getpid()) - self.start_self) / wall
        share = 100 * (busy - self.start_machine[0]) / max(1e-9, total - self.start_machine[1])
        parts = [f"machine {machine:.2f} of {os.cpu_count()} cores busy ({share:.0f} %)"]
        parts += [f"{name} {value:.2f}" for name, value in used.items()]
        other = max(0.0, machine - sum(used.values()))
        parts.append(f"{other_label} {other:.2f}")
        text = f"CPU over {wall:.0f} s, in cores: " + "; ".join(parts) + f"; load average {load_average()}"
        return CpuReport(wall=wall, cores=used, other=other, text=text)


class Processes:
    """Child processes, each in its own session (so that a whole tree can be signalled), logging to files."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (self.log_dir / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                    start_new_session=True)
        self.procs[name] = proc
        return proc

    def log(self, name: str, tail: int = 6000) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-tail:] if path.exists() else ""

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode}:\n{self.log(name)}")

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name)
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):  # exited between poll() and here
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


# -- services ---------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """A new PostgreSQL database for this run (a shared one would mix in other runs' jobs); dropped after."""
    import psycopg

    name = f"ftserve_bench_{secrets.token_hex(4)}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise SystemExit(f"PostgreSQL is required at {PG_ADMIN_URL} and is not reachable: {exc}") from exc
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postmaster_pid() -> int:
    """The PostgreSQL server's parent process: its tree holds every backend, and it reaps the ones that exit."""
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        backend = admin.info.backend_pid
        return int(Path(f"/proc/{backend}/stat").read_text().rsplit(")", 1)[1].split()[1])


@contextlib.contextmanager
def redis_queue() -> Iterator[str]:
    """A queue name of our own; its keys are deleted at the end."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise SystemExit(f"Redis is required at {REDIS_URL} and is not reachable: {exc}") from exc
    queue = f"ftserve_bench_{secrets.token_hex(4)}"
    try:
        yield queue
    finally:
        keys = list(client.scan_iter(match=f"*{queue}*"))
        if keys:
            client.delete(*keys)
        client.close()


def build_tiny_bert(hf_home: Path) -> str:
    """Built in a subprocess (as tests/conftest.py does), so this process never imports torch."""
    code = ("import sys; from pathlib import Path; from tests import tinymodels as t;"
            "t.build_tiny_bert(Path(sys.argv[1]), Path(sys.argv[2]))")
    done = subprocess.run([sys.executable, "-c", code, str(SHARED_DATA), str(hf_home)], cwd=REPO_ROOT,
                          capture_output=True, text=True)  # its progress bars would bury the figures
    if done.returncode != 0:
        raise RuntimeError(f"building the tiny BERT failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    from tests.tinymodels import TINY_BERT

    return TINY_BERT


def wait_http(client: Any, url: str, procs: Processes, *, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        procs.check_alive()
        try:
            if client.get(url).status_code == 200:
                return
        except httpx.TransportError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f} s")
        time.sleep(0.2)


# -- claim latency -------------------------------------------------------------------------------------------
@dataclass
class JobTiming:
    job_id: str
    post_ms: float  # round trip of POST /jobs
    claim_ms: float  # POST sent -> started_at
    created_to_claim_ms: float  # created_at -> started_at, both server clocks
    child_ms: float  # POST sent -> the training process's "attempt N started" event
    first_step_ms: float  # POST sent -> the first `metrics` event (step 1)


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).astimezone(UTC).timestamp()


def count_done(procs: Processes) -> int:
    return len(TASK_DONE.findall(procs.log("worker", tail=10**9)))


def run_job(client: Any, procs: Processes, body: dict[str, Any], *, done_before: int, idle_seconds: float
            ) -> JobTiming:
    """Submit one job to an idle worker, wait until it is finished and the worker idle again; its timings."""
    t_post = time.time()
    response = client.post("/jobs", json=body)
    post_ms = (time.time() - t_post) * 1000
    if response.status_code != 201:
        raise RuntimeError(f"POST /jobs answered {response.status_code}: {response.text}")
    job_id = response.json()["id"]
    deadline = time.monotonic() + 600
    while True:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in TERMINAL:
            break
        procs.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} still {job['status']} after 600 s:\n{procs.log('worker')}")
        time.sleep(0.1)
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job_id} {job['status']}: {job['error']}\n{procs.log('worker')}")
    events = client.get(f"/jobs/{job_id}/events", params={"limit": 1000}).json()["data"]
    started = [e for e in events if e["type"] == "status" and e["message"].startswith("attempt ")]
    steps = [e for e in events if e["type"] == "metrics" and (e["data"].get("step") or 0) >= 1]
    if not started or not steps:
        raise RuntimeError(f"job {job_id}: no 'attempt started' or step metrics event in {events}")
    # Idle again: Celery has logged the task as done (so it has acked and went back to the broker).
    deadline = time.monotonic() + 60
    while count_done(procs) <= done_before:
        procs.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"the worker did not log job {job_id} as done:\n{procs.log('worker')}")
        time.sleep(0.1)
    time.sleep(idle_seconds)
    started_at = epoch(job["started_at"])
    return JobTiming(
        job_id=job_id, post_ms=post_ms, claim_ms=(started_at - t_post) * 1000,
        created_to_claim_ms=(started_at - epoch(job["created_at"])) * 1000,
        child_ms=(epoch(started[0]["created_at"]) - t_post) * 1000,
        first_step_ms=(epoch(steps[0]["created_at"]) - t_post) * 1000,
    )


# -- load ------------------------------------------------------------------------------------------------------
@dataclass
class WrkResult(WrkStats):
    server_cpu_ms: float = 0.0  # CPU time of the server process per request (less sensitive to contention)
    others_cores: float = 0.0  # cores used by processes outside the bench meanwhile

    @property
    def tail(self) -> float:
        return self.p99_ms / self.p50_ms


def load_test(name: str, url: str, args: argparse.Namespace, server: int, postgres: int) -> tuple[WrkResult, str]:
    if args.wrk_warmup > 0:
        run_wrk(url, threads=args.threads, connections=args.connections, seconds=args.wrk_warmup)
    # wrk is a waited-for child of this process, so its CPU shows in this process's figure.
    meter = CpuMeter({f"{name} api": server, "PostgreSQL (all databases)": postgres}, self_label="wrk + bench")
    command, output = run_wrk(url, threads=args.threads, connections=args.connections, seconds=args.duration)
    cpu = meter.report()
    result = WrkResult(**vars(parse_wrk(output)))
    result.server_cpu_ms = cpu.cores[f"{name} api"] * cpu.wall * 1000 / result.requests
    result.others_cores = cpu.other
    print(f"\n$ {command}   # {name}\n{output.rstrip()}\n{cpu.text}", flush=True)
    if result.non_2xx:
        raise RuntimeError(f"{name}: {result.non_2xx} responses were not 2xx; the figures would not mean much")
    return result, command


# -- report ----------------------------------------------------------------------------------------------------
def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.0f} | {max(values):.0f} | {min(values):.0f}"


def print_jobs(title: str, timings: list[JobTiming]) -> None:
    print(f"\n{title}\n\n| # | job | POST round trip | POST → running | created_at → started_at "
          "| POST → attempt started | POST → first step |\n|---:|---|---:|---:|---:|---:|---:|")
    for i, t in enumerate(timings, 1):
        print(f"| {i} | {t.job_id} | {t.post_ms:.0f} | {t.claim_ms:.0f} | {t.created_to_claim_ms:.0f} "
              f"| {t.child_ms:.0f} | {t.first_step_ms:.0f} |")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=20, help="measured jobs (default 20)")
    parser.add_argument("--warmup", type=int, default=1, help="jobs run first and not counted (default 1)")
    parser.add_argument("--duration", type=int, default=20, help="seconds of each wrk run (default 20)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (default 50)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--wrk-warmup", type=int, default=3, help="unmeasured wrk seconds before each run")
    parser.add_argument("--rows", type=int, default=200, help="rows of classification/train.csv uploaded")
    parser.add_argument("--max-steps", type=int, default=2, help="training steps per job (default 2)")
    parser.add_argument("--idle-seconds", type=float, default=2.0,
                        help="wait after the worker logged a job as done, before the next POST")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    parser.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_bare and (args.port is None or args.db is None):
        parser.error("--serve-bare needs --port and --db")
    if args.count < 1 or args.threads < 1 or args.connections < args.threads or args.duration < 1:
        parser.error("--count, --threads, --duration must be >= 1 and --connections >= --threads")
    return args


def dataset_bytes(rows: int) -> bytes:
    with TRAIN_CSV.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        fieldnames = list(reader.fieldnames or [])
        selected = [row for _, row in zip(range(rows), reader, strict=False)]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    writer.writerows(selected)
    return out.getvalue().encode()


def _raise_exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # so that every `finally` below runs: processes, temp dir, database


def run(args: argparse.Namespace) -> int:
    import httpx

    started = time.monotonic()
    print(f"ftserve lifecycle bench, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} cores ({cpu_model()}); "
          f"python {platform.python_version()}; load average at start {load_average()}", flush=True)
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ftserve-lifecycle-bench-")))
        db_url = stack.enter_context(fresh_database())
        queue = stack.enter_context(redis_queue())
        procs = Processes(work)
        stack.callback(procs.stop_all)
        hf_home = work / "hf_home"
        base_model = build_tiny_bert(hf_home)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("FTSERVE_", "HF_"))},
            "FTSERVE_DATA_DIR": str(work / "data"),
            "FTSERVE_DATABASE_URL": db_url,
            "FTSERVE_BROKER_URL": REDIS_URL,
            "FTSERVE_QUEUE": queue,
            "HF_HOME": str(hf_home),
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        }
        port = free_port()
        procs.spawn("api", [sys.executable, "-m", "cli.main", "api", "--host", "127.0.0.1", "--port", str(port)],
                    env)
        procs.spawn("worker", [sys.executable, "-m", "cli.main", "worker", "--concurrency", "1"], env)
        client = stack.enter_context(httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60))
        wait_http(client, "/readyz", procs)
        upload = client.post("/datasets", files={"file": ("lifecycle-bench.csv", dataset_bytes(args.rows))})
        if upload.status_code != 201:
            raise RuntimeError(f"POST /datasets answered {upload.status_code}: {upload.text}")
        body = {"task": "classification", "base_model": base_model, "dataset": {"id": upload.json()["id"]},
                "model_name": "lifecycle-bench",
                "hyperparameters": {"max_steps": args.max_steps, "batch_size": 8, "logging_steps": 1,
                                    "learning_rate": 5e-5, "warmup_steps": 0}}
        print(f"\n{args.warmup} warm-up + {args.count} measured classification jobs, one at a time to an idle "
              f"worker: {base_model}, {args.rows} rows, max_steps={args.max_steps}, batch 8, logging_steps=1; "
              f"Redis broker, PostgreSQL, default ftserve settings. Times in ms.\n"
              "POST → running = job.started_at (the worker's claim) − the bench clock just before POST /jobs; "
              "POST → first step = created_at of the first `metrics` event (step 1) − the same clock; "
              "POST → attempt started = the training process's first event.", flush=True)
        jobs_meter = CpuMeter({"ftserve api": procs.pid("api"), "ftserve worker (+ training processes)":
                               procs.pid("worker")}, self_label="this bench")
        done = count_done(procs)
        warm: list[JobTiming] = []
        timings: list[JobTiming] = []
        for i in range(args.warmup + args.count):
            timing = run_job(client, procs, body, done_before=done, idle_seconds=args.idle_seconds)
            done += 1
            (warm if i < args.warmup else timings).append(timing)
        jobs_cpu = jobs_meter.report("other (incl. PostgreSQL, Redis)").text
        if warm:
            print_jobs("Warm-up (not counted):", warm)
        print_jobs("Measured:", timings)
        print(f"\n{jobs_cpu}", flush=True)

        finished = client.get(f"/jobs/{timings[-1].job_id}")
        if finished.status_code != 200 or not finished.json().get("metrics"):
            raise RuntimeError(f"the finished job has no metrics: {finished.status_code} {finished.text}")
        procs.stop("worker")
        bare_port = free_port()
        procs.spawn("bare", [sys.executable, str(Path(__file__).resolve()), "--serve-bare", "--port",
                             str(bare_port), "--db", db_url], env)
        path = f"/jobs/{timings[-1].job_id}"
        bare_url = f"http://127.0.0.1:{bare_port}{path}"
        wait_http(client, bare_url, procs)
        bare_row = client.get(bare_url).json()
        if bare_row["id"] != timings[-1].job_id or bare_row["metrics"] != finished.json()["metrics"]:
            raise RuntimeError(f"the bare endpoint read another row: {bare_row}")
        metric_names = ", ".join(sorted(finished.json()["metrics"]))
        print("\nftserve API: `python -m cli.main api` (uvicorn, 1 worker); bare: uvicorn, 1 worker.")
        print(f"GET {path}: ftserve answers {len(finished.content)} bytes (metrics: {metric_names}); the bare "
              f"endpoint {len(client.get(bare_url).content)} bytes (every column of the row). Worker stopped; "
              f"wrk warm-up {args.wrk_warmup} s before each run.", flush=True)
        postgres = postmaster_pid()
        ft, ft_cmd = load_test("ftserve", f"http://127.0.0.1:{port}{path}", args, procs.pid("api"), postgres)
        bare, _ = load_test("bare", bare_url, args, procs.pid("bare"), postgres)
        procs.check_alive()

    claims = [t.claim_ms for t in timings]
    steps = [t.first_step_ms for t in timings]
    rps_ratio = ft.rps / bare.rps
    tail_ratio = ft.tail / bare.tail
    checks = [
        (f"median POST → running ≤ {CLAIM_TARGET_MS:.0f} ms", f"{statistics.median(claims):.0f} ms",
         statistics.median(claims) <= CLAIM_TARGET_MS),
        (f"req/s ftserve / bare ≥ {RPS_RATIO_TARGET}", f"{ft.rps:.0f} / {bare.rps:.0f} = {rps_ratio:.2f}",
         rps_ratio >= RPS_RATIO_TARGET),
        (f"(p99/p50 ftserve) / (p99/p50 bare) ≤ {TAIL_RATIO_TARGET}",
         f"{ft.tail:.2f} / {bare.tail:.2f} = {tail_ratio:.2f}", tail_ratio <= TAIL_RATIO_TARGET),
    ]
    print(f"\nSummary ({len(timings)} jobs; load: {ft_cmd.replace(path, '/jobs/{id}')}):\n\n"
          "| job lifecycle | median ms | max ms | min ms |\n|---|---:|---:|---:|\n"
          f"| POST → running (claim) | {summary(claims)} |\n"
          f"| POST → first training step | {summary(steps)} |\n\n"
          "| GET /jobs/{id} | req/s | p50 ms | p99 ms | p99/p50 | requests | socket errors "
          "| server CPU ms/request | cores used by other processes |\n|---|---:|---:|---:|---:|---:|---|---:|---:|")
    for name, r in (("ftserve API", ft), ("bare FastAPI + SQLAlchemy", bare)):
        print(f"| {name} | {r.rps:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.tail:.2f} | {r.requests} "
              f"| {r.socket_errors} | {r.server_cpu_ms:.2f} | {r.others_cores:.2f} |")
    print("\n| target | figure | result |\n|---|---|---|")
    for name, figure, ok in checks:
        print(f"| {name} | {figure} | {verdict(ok)} |")
    print(f"\nWhole bench: {time.monotonic() - started:.0f} s.", flush=True)
    return 1 if args.strict and not all(ok for _, _, ok in checks) else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_bare:
        serve_bare(args.port, args.db)
        return 0
    if shutil.which("wrk") is None:
        print("lifecycle_bench: `wrk` was not found on PATH; it drives the load test (a Python load generator "
              "saturates a core before the server does). Install it: apt-get install -y wrk", file=sys.stderr)
        return 2
    if not TRAIN_CSV.is_file():
        print(f"lifecycle_bench: the shared dataset {TRAIN_CSV} is missing", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _raise_exit)
    signal.signal(signal.SIGHUP, _raise_exit)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
