"""Failpoints: fault injection for the lifecycle tests, inert unless `FTSERVE_FAILPOINTS` is set.

`FTSERVE_FAILPOINTS="before_train=hang@slowpoke,before_train=kill_worker@crasher"` makes the training
process of any job whose `model_name` is `slowpoke` hang before its first step, and that of `crasher`
SIGKILL its worker (as the kernel's OOM killer would), on every attempt. Real failures of these kinds
cannot be produced on demand; the supervision code that handles them is the same either way.
"""

from __future__ import annotations

import logging
import os
import signal
import time

log = logging.getLogger("ftserve.failpoints")
ACTIONS = ("hang", "kill_worker")


def parse(spec: str) -> dict[tuple[str, str], str]:
    """'point=action@model,…' → {(point, model): action}."""
    points: dict[tuple[str, str], str] = {}
    for item in filter(None, (p.strip() for p in spec.split(","))):
        point, _, rest = item.partition("=")
        action, _, model = rest.partition("@")
        if not point or action not in ACTIONS or not model:
            raise ValueError(f"bad failpoint {item!r}; expected point=action@model_name, action one of {ACTIONS}")
        points[(point, model)] = action
    return points


def hit(spec: str, point: str, *, model_name: str) -> None:
    if not spec:
        return
    action = parse(spec).get((point, model_name))
    if action is None:
        return
    log.warning("failpoint %s=%s for model %s", point, action, model_name)
    if action == "hang":
        while True:
            time.sleep(3600)
    # kill_worker: the worker first, then this process (which the kernel would kill with it anyway).
    os.kill(os.getppid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
