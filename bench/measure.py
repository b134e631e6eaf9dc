"""What the benches share: CPU accounting from /proc, and running wrk and reading its `--latency` output."""

from __future__ import annotations

import atexit
import os
import platform
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.stack import descendants


def offline_workdir(prefix: str) -> tuple[Path, Path]:
    """(a temp work dir removed on every exit path, an empty HF_HOME inside it), with the hub switched off.

    Call before transformers or huggingface_hub are imported: both read HF_HOME and offline mode once, at import.
    """
    work = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, work, ignore_errors=True)  # --help, errors and Ctrl-C included
    hf_home = work / "hf_home"
    os.environ["HF_HOME"] = str(hf_home)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # Progress bars of weight loading and dataset mapping would bury the figures.
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    return work, hf_home


def keep_workdir() -> None:
    """Leave the work dir of `offline_workdir` in place at exit (for `--keep`)."""
    atexit.unregister(shutil.rmtree)


CLK_TCK = os.sysconf("SC_CLK_TCK")
UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}


def process_cpu_seconds(pid: int) -> float:
    """utime + stime + the same of its waited-for children; 0 when the process is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / CLK_TCK


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, busy + idle) CPU seconds summed over all cores since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = values
    busy = user + nice + system + irq + softirq + steal
    return busy / CLK_TCK, (busy + idle + iowait) / CLK_TCK


def tree_cpu_seconds(root: int) -> dict[int, float]:
    return {pid: process_cpu_seconds(pid) for pid in [root, *descendants(root)]}


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@dataclass
class WrkStats:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    non_2xx: int
    socket_errors: str


def parse_wrk(output: str) -> WrkStats:
    def latency(pct: str) -> float:
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s|m|h)\s*$", output, re.MULTILINE)
        if m is None:
            raise ValueError(f"no {pct}% line in wrk's output:\n{output}")
        return float(m.group(1)) * UNIT_MS[m.group(2)]

    rps = re.search(r"^Requests/sec:\s+([\d.]+)", output, re.MULTILINE)
    total = re.search(r"^\s*(\d+) requests in", output, re.MULTILINE)
    if rps is None or total is None:
        raise ValueError(f"no Requests/sec or request count in wrk's output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(r"Socket errors:\s+(.*)$", output, re.MULTILINE)
    return WrkStats(rps=float(rps.group(1)), p50_ms=latency("50"), p99_ms=latency("99"),
                    requests=int(total.group(1)), non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
                    socket_errors=errors.group(1).strip() if errors else "none")


def run_wrk(url: str, *, threads: int, connections: int, seconds: int, extra: tuple[str, ...] = ()
            ) -> tuple[str, str]:
    """(the command line, wrk's output); raises when wrk fails."""
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", *extra, url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {done.returncode}:\n{done.stdout}{done.stderr}")
    return " ".join(command), done.stdout


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"
