"""The CPUs this process may use: the affinity mask, lowered by a cgroup v2 CPU quota."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cxrtriage.cpus import usable_cpus


def test_usable_cpus_is_the_affinity_mask_not_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert usable_cpus() == 2  # `taskset -c 0,1` on a 16-core machine: 2 decode processes, not 4


def test_usable_cpus_without_an_affinity_api_counts_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert usable_cpus() == 6


@pytest.mark.parametrize(("content", "cpus"), [("200000 100000\n", 2), ("150000 100000\n", 2), ("50000 100000\n", 1),
                                               ("max 100000\n", 8), ("garbage\n", 8)])
def test_a_cgroup_cpu_quota_lowers_the_count(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: str,
                                             cpus: int) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    (tmp_path / "cpu.max").write_text(content)
    assert usable_cpus(tmp_path / "cpu.max") == cpus  # a Kubernetes limit of 2 CPUs on an 8-core node: 2
    assert usable_cpus(tmp_path / "missing") == 8
