"""How many CPUs this process may use (decode workers, onnxruntime threads): affinity and cgroup quota."""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def affinity_cpus() -> int:
    """The CPUs of this process's affinity mask (``taskset``, a container's cpuset), else every CPU."""
    getaffinity = getattr(os, "sched_getaffinity", None)
    if getaffinity is not None:
        try:
            return max(1, len(getaffinity(0)))
        except OSError:
            pass
    return os.cpu_count() or 1


def usable_cpus(cpu_max: Path = CGROUP_CPU_MAX) -> int:
    """The CPUs this process may use: its affinity mask where the OS has one (``taskset``, a container's cpuset),
    else every CPU; fewer when a cgroup v2 CPU quota (``cpu.max``, e.g. a Kubernetes CPU limit) allows less.

    Why not ``os.cpu_count()``: it counts the machine's CPUs, so a run pinned to 2 of 16 cores, or limited to 2 CPUs
    by its container, would start 4 decode processes that share 2 cores' worth of time.
    """
    n = affinity_cpus()
    try:
        quota, period = cpu_max.read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):  # no cgroup v2 file, or one this code does not understand: no quota applied
        pass
    return n
