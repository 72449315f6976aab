"""How many cores this process may use: its CPU affinity, capped by its cgroup's CPU quota.

`os.cpu_count()` counts the machine's cores; a container limited to 2 of 64 cores (a cgroup
`cpu.max` quota, Kubernetes' CPU limit) or a process pinned with `taskset` runs 64 decoders on 2
cores. The quota is rounded down (at least 1), as Go's automaxprocs does: 1.5 cores run 1 worker.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["usable_cores"]


def usable_cores(
    cgroup_root: Path = Path("/sys/fs/cgroup"), proc_cgroup: Path = Path("/proc/self/cgroup")
) -> int:
    """The cores this process may run on at once (>= 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota(cgroup_root, proc_cgroup)
    return max(1, min(cores, math.floor(quota))) if quota is not None else cores


def _cgroup_quota(root: Path, proc_cgroup: Path) -> float | None:
    """The smallest CPU quota (in cores) of this process's cgroup and its parents; None: no limit."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        _, controllers, relative = line.split(":", 2)
        if controllers == "":  # cgroup v2: one hierarchy, `cpu.max` is "QUOTA PERIOD" or "max PERIOD"
            quotas += [_v2_quota(folder) for folder in _folders(root, relative)]
        elif "cpu" in controllers.split(","):  # cgroup v1: the cpu controller's own hierarchy
            quotas += [_v1_quota(folder) for folder in _folders(root / controllers, relative)]
    limits = [quota for quota in quotas if quota is not None]
    return min(limits) if limits else None


def _folders(base: Path, relative: str) -> list[Path]:
    """The cgroup's folder and its parents up to `base` (a container sees its own cgroup as `/`)."""
    folder = base / relative.strip("/")
    return [folder, *(parent for parent in folder.parents if parent.is_relative_to(base))]


def _v2_quota(folder: Path) -> float | None:
    try:
        quota, period = (folder / "cpu.max").read_text().split()
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def _v1_quota(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 else quota / period
