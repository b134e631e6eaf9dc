"""Start `ftserve api` and `ftserve worker` as real processes and talk to them over HTTP."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

TERMINAL = ("succeeded", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid`, read from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class Stack:
    def __init__(self, *, data_dir: Path, env: dict[str, str], workers: int = 1) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("FTSERVE_", "HF_"))},
            "FTSERVE_DATA_DIR": str(data_dir),
            "FTSERVE_HEARTBEAT_SECONDS": "2",
            "FTSERVE_PROGRESS_INTERVAL_SECONDS": "0.5",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.workers = workers
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.client = httpx.Client(base_url=self.base_url, timeout=60)
        self.metrics_headers: dict[str, str] = {}  # e.g. a key's Authorization when auth is on

    def _spawn(self, name: str, *args: str) -> None:
        log = (self.data_dir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "cli.main", *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parents[1], start_new_session=True,
        )

    def start_worker(self, name: str = "worker") -> None:
        self._spawn(name, "worker", "--concurrency", "1")

    def start_api(self) -> None:
        self._spawn("api", "api", "--host", "127.0.0.1", "--port", str(self.port))

    def __enter__(self) -> Stack:
        self.start_api()
        for i in range(self.workers):
            self.start_worker("worker" if i == 0 else f"worker{i}")
        deadline = time.monotonic() + 90
        while True:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited early:\n{self.logs(name)}")
            try:
                if self.client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise RuntimeError(f"API not ready in time:\n{self.logs('api')}")
            time.sleep(0.3)
        return self

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(name)
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def __exit__(self, *exc: object) -> None:
        self.client.close()
        for name in list(self.procs):
            self.stop(name)

    def kill_tree(self, name: str) -> list[int]:
        """SIGKILL a process and every descendant at once, as a lost machine would; returns the pids."""
        proc = self.procs.pop(name)
        pids = [*descendants(proc.pid), proc.pid]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # exited on its own meanwhile
                os.kill(pid, signal.SIGKILL)
        proc.wait()
        return pids

    def logs(self, name: str) -> str:
        path = self.data_dir / f"{name}.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""

    def alive(self, name: str = "worker") -> bool:
        return self.procs[name].poll() is None

    # -- API helpers ------------------------------------------------------------------------------------
    def upload(self, path: Path | None = None, *, content: bytes | None = None, filename: str | None = None,
               **kw: Any) -> httpx.Response:
        data = content if content is not None else path.read_bytes()  # type: ignore[union-attr]
        return self.client.post("/datasets", files={"file": (filename or path.name, data)}, **kw)  # type: ignore[union-attr]

    def wait_job(self, job_id: str, *, timeout: float = 300, statuses: tuple[str, ...] = TERMINAL) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.client.get(f"/jobs/{job_id}").json()
            if job["status"] in statuses:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"job {job_id} still {job['status']} after {timeout}s\n--- worker log:\n{self.logs('worker')}"
                )
            time.sleep(0.3)

    def metric(self, name: str, **labels: str) -> float:
        """One sample of `GET /metrics` by name and exact label set (0 when absent)."""
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in self.client.get("/metrics", headers=self.metrics_headers).text.splitlines():
            m = re.fullmatch(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)", line)
            if m and ",".join(sorted((m.group(1) or "").split(","))) == want:
                return float(m.group(2))
        return 0.0

    def events(self, job_id: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        after = 0
        while True:
            page = self.client.get(f"/jobs/{job_id}/events", params={"after": after, "limit": 1000}).json()
            out += page["data"]
            if not page["has_more"]:
                return out
            after = out[-1]["id"]
