"""Faults while jobs flow: workers SIGKILLed, the API killed, Redis and PostgreSQL restarted.

The test runs its own PostgreSQL cluster and Redis server (so that it may restart them), two workers and the
API as real processes with short timings, submits 12 small classification jobs, and injects faults one at a
time at moments drawn from a fixed seed. At the end every job is terminal exactly once — succeeded, or failed
with a message because its attempts ran out — and each success has exactly one version whose files load with
plain transformers. A client that meets the API down retries until a deadline, as a real one would.
"""

from __future__ import annotations

import os
import pwd
import random
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_classification import csv_slice
from tests.e2e.test_lifecycle import wait_for
from tests.stack import TERMINAL, Stack, free_port
from tests.tinymodels import TINY_BERT

SEED = 1313
JOBS = 12
TEST_SECONDS = 285  # the whole test, set-up included, must fit in 5 minutes
ENV = {
    "FTSERVE_HEARTBEAT_SECONDS": "1",
    "FTSERVE_LEASE_SECONDS": "6",
    "FTSERVE_RECONCILE_SECONDS": "2",
    "FTSERVE_REQUEUE_AFTER_SECONDS": "6",
    "FTSERVE_MAX_ATTEMPTS": "4",
    "FTSERVE_PROGRESS_INTERVAL_SECONDS": "0.5",
}
FAULTS = ["kill_worker"] * 3 + ["kill_api"] * 2 + ["restart_redis"] * 2 + ["restart_postgres"] * 2


def _postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    assert found, "PostgreSQL server binaries (initdb, pg_ctl) are required under /usr/lib/postgresql/<version>/bin"
    return found[-1].parent


class PgCluster:
    """A throw-away cluster run as the `postgres` user (initdb and pg_ctl refuse root), socket in its dir."""

    def __init__(self, root: Path) -> None:
        self.root, self.port, self.bin = root, free_port(), _postgres_bin()
        self.data = root / "pgdata"
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/ftserve"

    def _run(self, *args: str) -> None:
        done = subprocess.run(["runuser", "-u", "postgres", "--", *args], capture_output=True, text=True,
                              timeout=120, cwd=self.root)
        assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"

    def _ctl(self, *args: str) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "postgres.log"),
                  "-w", "-t", "60", *args)

    def start(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync",
                  "-E", "UTF8")
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c max_connections=200")
        self._ctl("-o", options, "start")
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE ftserve")

    def restart(self) -> None:
        self._ctl("-m", "fast", "restart")  # terminates every session, as a failover or upgrade would

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._ctl("-m", "immediate", "stop")


class RedisServer:
    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import redis

        exe = shutil.which("redis-server")
        assert exe, "redis-server is required"
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        wait_for("redis-server", lambda: _pings(client), timeout=20, every=0.1)

    def restart(self) -> None:
        self.stop()
        self.start()  # no persistence: whatever was queued is gone

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def _pings(client: Any) -> bool:
    import redis

    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.fixture
def services() -> Iterator[tuple[PgCluster, RedisServer]]:
    # Not under pytest's tmp dir: the postgres user must be able to reach it.
    root = Path(tempfile.mkdtemp(prefix="ftserve-faults-"))
    postgres = pwd.getpwnam("postgres")
    os.chown(root, postgres.pw_uid, postgres.pw_gid)
    pg, broker = PgCluster(root), RedisServer(root)
    try:
        pg.start()
        broker.start()
        yield pg, broker
    finally:
        broker.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


class Client:
    """Calls the API, retrying while it is down or failing (5xx) until the test's deadline."""

    def __init__(self, base_url: str, deadline: float) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=15)
        self.deadline = deadline
        self.retries = 0

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        while True:
            try:
                r = self.http.request(method, path, **kw)
                if r.status_code < 500:
                    return r
                why = f"{r.status_code} {r.text[:300]}"
            except httpx.TransportError as exc:
                why = repr(exc)
            self.retries += 1
            assert time.monotonic() < self.deadline, f"{method} {path} kept failing: {why}"
            time.sleep(0.25)

    def json(self, method: str, path: str, **kw: Any) -> Any:
        r = self.call(method, path, **kw)
        assert r.status_code in (200, 201), r.text
        return r.json()


def test_jobs_survive_killed_workers_api_broker_and_database(
        services: tuple[PgCluster, RedisServer], tmp_path_factory: pytest.TempPathFactory, hf_home: Path,
        shared_data: Path) -> None:
    started = time.monotonic()
    deadline = started + TEST_SECONDS
    pg, broker = services
    rng = random.Random(SEED)
    env = {**ENV, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "FTSERVE_DATABASE_URL": pg.url,
           "FTSERVE_BROKER_URL": broker.url, "FTSERVE_QUEUE": "faults"}
    with Stack(data_dir=tmp_path_factory.mktemp("faults"), env=env, workers=2) as stack:
        client = Client(stack.base_url, deadline)
        data = csv_slice(shared_data / "classification" / "train.csv", 200)
        ds = client.json("POST", "/datasets", files={"file": ("train.csv", data)})["id"]
        jobs: dict[str, str] = {}  # job id → model name
        for i in range(JOBS):
            name = "fault-shared" if i in (3, 8) else f"fault-{i}"  # two jobs register versions of one name
            body = {"task": "classification", "base_model": TINY_BERT, "dataset": {"id": ds}, "model_name": name,
                    "hyperparameters": {"batch_size": 8, "max_steps": rng.randint(20, 80), "eval_steps": 10,
                                        "logging_steps": 5}}
            job = client.json("POST", "/jobs", json=body, headers={"Idempotency-Key": f"fault-job-{i}"})
            jobs[job["id"]] = name

        def all_terminal() -> bool:
            return all(client.json("GET", f"/jobs/{j}")["status"] in TERMINAL for j in jobs)

        injected: Counter[str] = Counter()
        plan = list(FAULTS)
        rng.shuffle(plan)
        at = time.monotonic() + rng.uniform(3, 6)
        for kind in plan:
            time.sleep(max(0.0, at - time.monotonic()))  # the moment drawn from the seed, not a wait for state
            if all_terminal():
                break
            _inject(kind, stack=stack, pg=pg, broker=broker, rng=rng)
            injected[kind] += 1
            _wait_recovered(stack, client)
            at = time.monotonic() + rng.uniform(1, 4)  # so that every fault lands while jobs still flow

        wait_for("every job to end", all_terminal, timeout=max(1.0, deadline - time.monotonic()), every=0.5)
        resumed = _check_outcomes(stack, client, jobs)
        finals = [client.json("GET", f"/jobs/{j}") for j in jobs]
        print(f"\nfaults injected: {dict(sorted(injected.items()))}; jobs: "
              f"{dict(Counter(j['status'] for j in finals))}; attempts: {sorted(j['attempt'] for j in finals)}; "
              f"resumed from a checkpoint: {resumed}; client retries: {client.retries}; "
              f"{time.monotonic() - started:.0f}s")
        assert sum(injected.values()) == len(FAULTS), f"the jobs ended before every fault was injected: {injected}"
    assert time.monotonic() - started < TEST_SECONDS + 15


def _inject(kind: str, *, stack: Stack, pg: PgCluster, broker: RedisServer, rng: random.Random) -> None:
    if kind == "kill_worker":
        name = rng.choice(sorted(n for n in stack.procs if n.startswith("worker")))
        stack.kill_tree(name)  # the worker and its training process at once, as a lost machine
        stack.start_worker(name)
    elif kind == "kill_api":
        stack.kill_tree("api")
        stack.start_api()
    elif kind == "restart_redis":
        broker.restart()
    elif kind == "restart_postgres":
        pg.restart()
    else:
        raise AssertionError(kind)


def _wait_recovered(stack: Stack, client: Client) -> None:
    """One fault at a time: the next one comes once the API answers ready and every worker is consuming."""
    def api_ready() -> bool:
        return client.call("GET", "/readyz").status_code == 200

    def worker_ready(name: str) -> Callable[[], bool]:
        marker = f"ftserve-{stack.procs[name].pid}@"  # Celery's "<node name> ready." line of this process
        path = stack.data_dir / f"{name}.log"  # all of it: Stack.logs() keeps only the tail
        return lambda: any(marker in line and line.endswith("ready.")
                           for line in path.read_text(errors="replace").splitlines())

    wait_for("the API to be ready", api_ready, timeout=max(1.0, client.deadline - time.monotonic()), every=0.2)
    for name in [n for n in stack.procs if n.startswith("worker")]:
        wait_for(f"{name} to be ready", worker_ready(name), timeout=90, every=0.2)


def _check_outcomes(stack: Stack, client: Client, jobs: dict[str, str]) -> int:
    """Asserts what the module docstring promises; returns how many attempts resumed from a checkpoint."""
    from transformers import AutoModelForSequenceClassification

    resumed = 0
    listed: list[str] = []
    after: str | None = None
    while True:
        page = client.json("GET", "/jobs", params={"limit": 100, **({"after": after} if after else {})})
        listed += [j["id"] for j in page["data"]]
        if not page["has_more"]:
            break
        after = listed[-1]
    assert sorted(listed) == sorted(jobs), "no job lost, none created twice by a retried POST"

    for job_id, name in jobs.items():
        job = client.json("GET", f"/jobs/{job_id}")
        events: list[dict[str, Any]] = []
        while True:
            page = client.json("GET", f"/jobs/{job_id}/events",
                               params={"after": events[-1]["id"] if events else 0, "limit": 1000})
            events += page["data"]
            if not page["has_more"]:
                break
        assert [e["id"] for e in events] == list(range(1, len(events) + 1)), job_id
        resumed += sum(1 for e in events if e["type"] == "status" and "resumed_from_step" in e["data"])
        terminal = [e for e in events if e["type"] == "status" and e["data"].get("status") in TERMINAL]
        assert [e["data"]["status"] for e in terminal] == [job["status"]], (job_id, terminal)
        r = client.call("GET", f"/models/{name}")
        versions = [v for v in r.json()["versions"] if v["job_id"] == job_id] if r.status_code == 200 else []
        if job["status"] == "failed":
            assert job["error"]["type"] == "system" and "maximum attempts" in job["error"]["message"], job
            assert versions == [], job_id
            continue
        assert job["status"] == "succeeded", (job_id, job["error"])
        assert len(versions) == 1 and job["model"]["version"] == versions[0]["version"], (job_id, versions)
        version_dir = stack.data_dir / "models" / name / str(versions[0]["version"])
        model = AutoModelForSequenceClassification.from_pretrained(version_dir)
        assert set(model.config.id2label.values()) == {"negative", "positive"}, version_dir
        assert not (stack.data_dir / "jobs" / job_id / "checkpoints").exists(), job_id

    # Nothing published without a row: every version folder on disk is a registered version.
    for name in set(jobs.values()):
        r = client.call("GET", f"/models/{name}")
        registered = {str(v["version"]) for v in r.json()["versions"]} if r.status_code == 200 else set()
        folder = stack.data_dir / "models" / name
        on_disk = {p.name for p in folder.iterdir() if not p.name.startswith(".")} if folder.is_dir() else set()
        assert on_disk == registered, (name, on_disk, registered)
    return resumed
