"""How many CPUs this process may really use, for sizing torch's thread pool.

torch (through OpenMP) starts one thread per CPU in the process's affinity mask. In a container limited with
a CPU quota (`docker run --cpus 2`, Kubernetes `limits.cpu`) on a 64-core host, that is 64 threads sharing
2 CPUs' worth of time: every parallel region then waits on descheduled threads. The quota is read from the
cgroup (v2 `cpu.max`, v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

log = logging.getLogger("ftserve")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs' worth of time the cgroup allows (e.g. 1.5), or None when unlimited or unknown."""
    v2 = root / "cpu.max"
    if v2.is_file():
        fields = v2.read_text().split()
        if len(fields) == 2 and fields[0] != "max" and int(fields[1]) > 0:
            return int(fields[0]) / int(fields[1])
        return None
    quota, period = root / "cpu" / "cpu.cfs_quota_us", root / "cpu" / "cpu.cfs_period_us"
    if quota.is_file() and period.is_file():
        q, p = int(quota.read_text()), int(period.read_text())
        if q > 0 and p > 0:
            return q / p
    return None


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """CPUs in this process's affinity mask, capped by the cgroup quota (rounded up); at least 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota(root)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def size_torch_threads(requested: int = 0) -> int:
    """Set torch's intra-op threads: `requested` when > 0, else `available_cpus()`; returns the number set."""
    import torch

    threads = requested if requested > 0 else available_cpus()
    if torch.get_num_threads() != threads:
        log.info("torch threads: %d (was %d)", threads, torch.get_num_threads())
        torch.set_num_threads(threads)
    return threads
