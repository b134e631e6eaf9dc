"""Following a job: a live rich progress bar on a terminal, one plain line per event otherwise.

The events come from the SDK's SSE iterator (`jobs.events(id, follow=True)`: status, log and metrics events, which
carry the loss and eval metrics); the step counter, total steps, epoch and ETA are the job's `progress`, which
the worker updates between events, so on a terminal a thread polls the job for it once a second.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

import ftserve
from ftserve.types import Job, JobEvent

POLL_SECONDS = 1.0
_SKIP_EVAL = {"eval_loss", "eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "epoch", "step"}


def event_line(event: JobEvent) -> str:
    """One plain line for an event: `[id] type message {data}`."""
    when = event.created_at.isoformat(timespec="seconds") if event.created_at else "-"
    parts = [when, event.type]
    if event.message:
        parts.append(event.message)
    if event.data:
        parts.append(json.dumps(event.data, separators=(",", ":"), ensure_ascii=False))
    return " ".join(parts)


def eval_metric(data: dict[str, Any]) -> tuple[str, Any] | None:
    """The headline eval metric of a metrics event (`eval_accuracy`, `eval_rougeL`, …; else `eval_loss`)."""
    for key, value in data.items():
        if key.startswith("eval_") and key not in _SKIP_EVAL:
            return key.removeprefix("eval_"), value
    if "eval_loss" in data:
        return "loss", data["eval_loss"]
    return None


class _Bar:
    """The state shown after the bar: epoch, loss, eval metric, ETA."""

    def __init__(self, progress: Progress, task: TaskID) -> None:
        self.progress, self.task = progress, task
        self.epoch: float | None = None
        self.loss: float | None = None
        self.eval: tuple[str, Any] | None = None
        self.eta: float | None = None
        self.lock = threading.Lock()

    def info(self) -> str:
        bits = []
        if self.epoch is not None:
            bits.append(f"epoch {self.epoch:.2f}")
        if self.loss is not None:
            bits.append(f"loss {self.loss:.4f}")
        if self.eval is not None:
            name, value = self.eval
            bits.append(f"eval {name} {value:.4f}" if isinstance(value, float) else f"eval {name} {value}")
        if self.eta is not None:
            minutes, seconds = divmod(int(self.eta), 60)
            bits.append(f"ETA {minutes}:{seconds:02d}")
        return "  ".join(bits)

    def job(self, job: Job) -> None:
        p = job.progress or {}
        with self.lock:
            if isinstance(p.get("epoch"), (int, float)):
                self.epoch = float(p["epoch"])
            self.eta = p.get("eta_seconds") if isinstance(p.get("eta_seconds"), (int, float)) else None
            total = p.get("total_steps") if isinstance(p.get("total_steps"), int) else None
            step = p.get("step") if isinstance(p.get("step"), int) else None
            self.progress.update(self.task, total=total, completed=step or 0, description=job.status,
                                 info=self.info())

    def event(self, event: JobEvent) -> None:
        with self.lock:
            data = event.data
            if event.type == "metrics":
                if isinstance(data.get("loss"), (int, float)):
                    self.loss = float(data["loss"])
                self.eval = eval_metric(data) or self.eval
            if event.type == "status" and isinstance(data.get("status"), str):
                self.progress.update(self.task, description=data["status"])
            self.progress.update(self.task, info=self.info())


def follow(client: ftserve.Client, job_id: str, *, tty: bool, console: Console) -> Job:
    """Show the job's events until it ends; returns its final state."""
    if not tty:
        for event in client.jobs.events(job_id, follow=True):
            console.print(event_line(event), markup=False, highlight=False)
        return client.jobs.get(job_id)
    columns = (TextColumn("{task.description:>10}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"))
    with Progress(*columns, console=console, transient=False) as progress:
        bar = _Bar(progress, progress.add_task("queued", total=None, info=""))
        stop = threading.Event()

        def poll() -> None:
            while not stop.wait(POLL_SECONDS):
                try:
                    bar.job(client.jobs.get(job_id))
                except ftserve.FtserveError:
                    continue  # the next poll tries again; the event stream reports what matters

        poller = threading.Thread(target=poll, name="ftserve-progress", daemon=True)
        poller.start()
        try:
            for event in client.jobs.events(job_id, follow=True):
                if event.type in ("status", "log") and event.message:
                    progress.console.print(f"{event.type}: {event.message}", markup=False, highlight=False)
                bar.event(event)
        finally:
            stop.set()
            poller.join(timeout=5)
        job = client.jobs.get(job_id)
        bar.job(job)
    return job
