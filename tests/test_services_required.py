"""A missing Redis or PostgreSQL fails the run; it never skips."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket is closed


def test_missing_services_fail_not_skip() -> None:
    port = closed_port()
    env = {**os.environ, "FTSERVE_TEST_PG_ADMIN": f"postgresql://postgres@127.0.0.1:{port}/test",
           "FTSERVE_TEST_REDIS": f"redis://127.0.0.1:{port}/0"}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "tests/services_probe.py"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 1, out.stdout
    assert "2 errors" in out.stdout and "skipped" not in out.stdout, out.stdout
    assert "PostgreSQL is required" in out.stdout and "Redis is required" in out.stdout
