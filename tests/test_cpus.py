"""CPU sizing for torch threads: cgroup quotas (v1 and v2) cap the affinity mask."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.cpus import available_cpus, cgroup_cpu_quota


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.mark.parametrize(("cpu_max", "quota"), [("200000 100000\n", 2.0), ("150000 100000\n", 1.5),
                                                 ("max 100000\n", None)])
def test_cgroup_v2(tmp_path: Path, cpu_max: str, quota: float | None) -> None:
    write(tmp_path / "cpu.max", cpu_max)
    assert cgroup_cpu_quota(tmp_path) == quota


@pytest.mark.parametrize(("q", "p", "quota"), [("50000", "100000", 0.5), ("-1", "100000", None)])
def test_cgroup_v1(tmp_path: Path, q: str, p: str, quota: float | None) -> None:
    write(tmp_path / "cpu" / "cpu.cfs_quota_us", q)
    write(tmp_path / "cpu" / "cpu.cfs_period_us", p)
    assert cgroup_cpu_quota(tmp_path) == quota


def test_a_quota_caps_the_affinity_mask_rounding_up_and_never_below_one(tmp_path: Path) -> None:
    mask = len(os.sched_getaffinity(0))
    assert cgroup_cpu_quota(tmp_path) is None  # no cgroup files: no cap
    assert available_cpus(tmp_path) == mask
    write(tmp_path / "cpu.max", "50000 100000\n")  # half a CPU: still one thread
    assert available_cpus(tmp_path) == 1
    write(tmp_path / "cpu.max", f"{(mask + 8) * 100000} 100000\n")  # a quota above the mask does not add CPUs
    assert available_cpus(tmp_path) == mask
