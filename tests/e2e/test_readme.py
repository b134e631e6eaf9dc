"""The README walk-through, run as written: a fresh clone, `make up`, every curl and CLI command, no hub access.

Commands are read from README.md itself, so the documentation cannot drift from what works. The data is the
repo's own examples/: nothing outside the clone is used. The hub model ids that the commands and the job specs
name are tiny models placed in the Hugging Face cache under those ids (a real MiniLM, T5 and GPT-2 would make
this test minutes long; `make up` seeding the real MiniLM is tests/test_seed_models.py).
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

from core.hfcache import cache_repo_dir, place_in_cache
from tests.tiny_gpt2 import TINY_GPT2
from tests.tinymodels import TINY_BERT, TINY_T5

REPO = Path(__file__).resolve().parents[2]
# The hub ids of the walk-through → the tiny test model of the same architecture.
STAND_INS = {"sentence-transformers/all-MiniLM-L6-v2": TINY_BERT, "google-t5/t5-small": TINY_T5,
             "openai-community/gpt2": TINY_GPT2}
TERMINAL = ("succeeded", "failed", "cancelled")


def blocks(readme: str) -> list[list[str]]:
    """The walk-through's three bash blocks (curl, CLI, curl), each as its commands."""
    found = [b for b in re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
             if "examples/" in b or "localhost:8000/answer" in b]
    return [commands(b) for b in found]


def commands(block: str) -> list[str]:
    """A command starts at a line that is not indented and does not follow a trailing backslash."""
    out: list[str] = []
    continues = False
    for raw in block.splitlines():
        line = re.sub(r"\s+#.*$", "", raw).rstrip()
        if not line:
            continue
        if out and (continues or raw[:1].isspace()):
            out[-1] += "\n" + line
        else:
            out.append(line)
        continues = line.endswith("\\")
    return out


def test_readme_blocks_are_found() -> None:
    curl, cli, http = blocks((REPO / "README.md").read_text())
    assert len(curl) == 4 and curl[0].startswith("curl -F file=@examples/sentiment.csv")
    assert [c.split()[1] for c in cli] == ["classify", "datasets", "jobs", "answer", "datasets", "jobs", "summarize",
                                           "datasets", "jobs", "generate"]
    assert "--context" in cli[3] and len(http) == 3


def stand_in_cache(hf_home: Path, into: Path) -> Path:
    for hub_id, tiny in STAND_INS.items():
        snapshots = cache_repo_dir(hf_home, tiny) / "snapshots"
        (snapshot,) = list(snapshots.iterdir())
        place_in_cache(snapshot, hf_home=into, repo_id=hub_id)
    return into


class Shell:
    """Runs commands as a user would in the clone: bash, the venv's bin first on PATH, the ids seen so far."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.cwd, self.env = cwd, env
        self.ids: dict[str, str] = {}

    def run(self, cmd: str, *, timeout: float = 300) -> str:
        for placeholder, value in self.ids.items():
            cmd = cmd.replace(placeholder, value)
        out = subprocess.run(["bash", "-c", cmd], cwd=self.cwd, env=self.env, capture_output=True, text=True,
                             timeout=timeout)
        assert out.returncode == 0, (cmd, out.returncode, out.stdout[-2000:], out.stderr[-2000:])
        # The ids a user would copy from what an upload or a job submission printed.
        made = "ds_" if ("datasets upload" in cmd or "file=@" in cmd) else "job_" if "8000/jobs -H" in cmd else None
        if made is not None:
            match = re.search(rf"\b{made}[a-z0-9]+", out.stdout)
            assert match, (cmd, out.stdout)
            self.ids[f"{made}…"] = match.group(0)
        return out.stdout

    def json(self, cmd: str) -> dict[str, Any]:
        return json.loads(self.run(cmd))


def test_readme_walkthrough_from_a_fresh_clone(tmp_path: Path, hf_home: Path) -> None:
    readme = (REPO / "README.md").read_text()
    assert "make up" in readme and "make test" in readme
    curl, cli, http = blocks(readme)

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    venv = Path(sys.prefix)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FTSERVE_", "HF_"))}
    env["HF_HOME"] = str(stand_in_cache(hf_home, tmp_path / "hf"))
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"  # `. .venv/bin/activate`
    log = (tmp_path / "up.log").open("wb")
    # The venv is already installed by the suite's own `make test`: mark its stamp as up to date.
    up = subprocess.Popen(["make", "-o", str(venv / ".installed"), "up", f"VENV={venv}"], cwd=clone, env=env,
                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    sh = Shell(clone, env)
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

        # curl: classification, from upload to predict.
        ds = sh.json(curl[0])
        assert ds["id"].startswith("ds_") and ds["columns"] == ["text", "label"] and ds["num_rows"] == 48
        job = sh.json(curl[1])
        assert job["status"] == "queued"
        assert job["base_model_resolved"] == "hub:sentence-transformers/all-MiniLM-L6-v2"
        deadline = time.monotonic() + 300
        while job["status"] not in TERMINAL:
            assert time.monotonic() < deadline, job
            time.sleep(0.5)
            job = sh.json(curl[2])
        assert job["status"] == "succeeded", (job["error"], (tmp_path / "up.log").read_text()[-4000:])
        assert 0 <= job["metrics"]["accuracy"] <= 1 and job["model"]["ref"] == "sentiment:1"
        body = sh.json(curl[3])
        assert body["model"] == "sentiment:1" and len(body["predictions"]) == 2
        assert all(p[0]["label"] in {"negative", "positive"} for p in body["predictions"])

        # The CLI: the same model, then the other three tasks.
        outputs = [sh.run(cmd) for cmd in cli]
        rows = outputs[0].strip().splitlines()  # one line per text: its labels by score
        assert len(rows) == 2 and all(r.split()[0] in {"negative", "positive"} for r in rows), outputs[0]
        for i, model in ((2, "shop-qa"), (5, "town-news"), (8, "stories")):
            assert "succeeded" in outputs[i] and f"{model}:1" in outputs[i], outputs[i][-2000:]
        assert outputs[3].strip() and outputs[6].strip(), outputs
        assert outputs[9].strip(), outputs[9]

        # curl again: the models the CLI trained.
        answer = sh.json(http[0])
        assert answer["model"] == "shop-qa:1"
        context = "Mira Lund opened a bakery in Oslo in 1998."
        a = answer["answers"][0]
        assert context[a["start"]:a["end"]] == a["answer"]
        assert sh.json(http[1])["model"] == "town-news:1"
        stream = sh.run(http[2])
        assert "event: token" in stream and stream.rstrip().splitlines()[-1].startswith("data: "), stream
        assert "event: done" in stream, stream
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
