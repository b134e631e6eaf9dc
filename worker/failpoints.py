"""Failpoints: fault injection for the lifecycle tests, inert unless `FTSERVE_FAILPOINTS` is set.

`FTSERVE_FAILPOINTS="before_train=hang@slowpoke,before_train=kill_worker@crasher"` makes the training
process of any job whose `model_name` is `slowpoke` hang before its first step, and that of `crasher`
SIGKILL its worker (as the kernel's OOM killer would), on every attempt. Real failures of these kinds
cannot be produced on demand; the supervision code that handles them is the same either way.

An item is `point=action@model_name[#attempt][?switch]`: `#2` limits it to the job's second attempt, `?armed`
to the time while the file `<data dir>/failpoints/armed` exists (a test creates it once the run is where it
wants the fault). Points and the actions that make sense there:
- `before_train` (training process, before data loading): `hang`, `kill_worker`;
- `heartbeat` (the worker's lease renewal): `fail` — the renewal raises instead of writing, as when the
  database cannot be reached from the worker.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("ftserve.failpoints")
ACTIONS = ("hang", "kill_worker", "fail")
_ITEM = re.compile(r"(?P<point>[a-z_]+)=(?P<action>[a-z_]+)@(?P<model>[a-z0-9][a-z0-9._-]*?)"
                   r"(?:#(?P<attempt>\d+))?(?:\?(?P<switch>[A-Za-z0-9_-]+))?")


class InjectedFault(RuntimeError):
    """Raised by a `fail` failpoint."""


@dataclass(frozen=True)
class Failpoint:
    point: str
    action: str
    model: str
    attempt: int | None = None
    switch: str | None = None


def parse(spec: str) -> list[Failpoint]:
    points: list[Failpoint] = []
    for item in filter(None, (p.strip() for p in spec.split(","))):
        m = _ITEM.fullmatch(item)
        if m is None or m.group("action") not in ACTIONS:
            raise ValueError(f"bad failpoint {item!r}; expected point=action@model_name[#attempt][?switch], "
                             f"action one of {ACTIONS}")
        points.append(Failpoint(m.group("point"), m.group("action"), m.group("model"),
                                int(m.group("attempt")) if m.group("attempt") else None,
                                m.group("switch")))
    return points


def switch_path(data_dir: Path, switch: str) -> Path:
    return data_dir / "failpoints" / switch


def find(spec: str, point: str, *, model_name: str, attempt: int | None = None, data_dir: Path | None = None
         ) -> Failpoint | None:
    if not spec:
        return None
    for fp in parse(spec):
        if (fp.point, fp.model) == (point, model_name) and fp.attempt in (None, attempt) and (
                fp.switch is None or (data_dir is not None and switch_path(data_dir, fp.switch).exists())):
            return fp
    return None


def hit(spec: str, point: str, *, model_name: str, attempt: int | None = None, data_dir: Path | None = None
        ) -> None:
    fp = find(spec, point, model_name=model_name, attempt=attempt, data_dir=data_dir)
    if fp is None:
        return
    log.warning("failpoint %s=%s for model %s (attempt %s)", point, fp.action, model_name, attempt)
    if fp.action == "fail":
        raise InjectedFault(f"failpoint {point}=fail for model {model_name}")
    if fp.action == "hang":
        while True:
            time.sleep(3600)
    # kill_worker: the worker first, then this process (which the kernel would kill with it anyway).
    os.kill(os.getppid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
