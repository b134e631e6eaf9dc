"""The README walk-through, run as written: a fresh clone, `make up`, the curl commands, no hub access.

Commands are read from README.md itself so the documentation cannot drift from what works. The
data is the repo's own examples/sentiment.csv: nothing outside the clone is used.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]


def walkthrough_commands(readme: str) -> list[str]:
    block = next(b for b in re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
                 if "curl -F file=@examples/sentiment.csv" in b)
    commands: list[list[str]] = []
    for raw in block.splitlines():
        line = re.sub(r"\s+#.*$", "", raw).rstrip()
        if not line:
            continue
        if line.startswith("curl "):
            commands.append([line])
        else:
            commands[-1].append(line)
    return ["\n".join(c) for c in commands]


def run(cmd: str, cwd: Path) -> dict[str, Any]:
    out = subprocess.run(["bash", "-c", cmd], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, (cmd, out.stderr)
    return json.loads(out.stdout)


def test_readme_walkthrough_from_a_fresh_clone(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text()
    assert "make up" in readme and "make test" in readme
    commands = walkthrough_commands(readme)
    assert len(commands) == 4, commands

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    work = clone  # the commands run from the repo's root, on its own examples/

    venv = Path(sys.prefix)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FTSERVE_", "HF_"))}  # empty HF_HOME, data dir
    log = (tmp_path / "up.log").open("wb")
    # The venv is already installed by the suite's own `make test`: mark its stamp as up to date.
    up = subprocess.Popen(["make", "-o", str(venv / ".installed"), "up", f"VENV={venv}"], cwd=clone, env=env,
                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert up.poll() is None, (tmp_path / "up.log").read_text()
            try:
                if httpx.get("http://127.0.0.1:8000/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass  # not listening yet
            assert time.monotonic() < deadline, (tmp_path / "up.log").read_text()
            time.sleep(0.5)
        assert (clone / ".ftserve-data" / "hf" / "hub" / "models--sentence-transformers--all-MiniLM-L6-v2").is_dir()

        ds = run(commands[0], work)
        assert ds["id"].startswith("ds_") and ds["columns"] == ["text", "label"] and ds["num_rows"] == 48
        job = run(commands[1].replace("ds_…", ds["id"]), work)
        assert job["status"] == "queued" and job["base_model_resolved"] == "hub:sentence-transformers/all-MiniLM-L6-v2"
        seen = set()
        deadline = time.monotonic() + 600
        while job["status"] not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, job
            time.sleep(1)
            job = run(commands[2].replace("job_…", job["id"]), work)
            seen.add(job["status"])
        assert job["status"] == "succeeded", (job["error"], (tmp_path / "up.log").read_text()[-4000:])
        assert 0 <= job["metrics"]["accuracy"] <= 1 and job["model"]["ref"] == "sentiment:1"
        body = run(commands[3], work)
        assert body["model"] == "sentiment:1" and len(body["predictions"]) == 2
        assert all(p[0]["label"] in {"negative", "positive"} for p in body["predictions"])
    finally:
        os.killpg(up.pid, signal.SIGINT)  # Ctrl-C: ftserve up stops the API and the worker
        try:
            up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            raise
    try:
        httpx.get("http://127.0.0.1:8000/healthz", timeout=2)
        stopped = False
    except httpx.TransportError:
        stopped = True
    assert stopped, "Ctrl-C must stop the API"
