"""How many decode processes a run starts when none are asked for: from the CPUs the process may use."""

from __future__ import annotations

import pytest

from cxrtriage.pipeline import config
from cxrtriage.pipeline.config import auto_workers


@pytest.mark.parametrize(("cpus", "workers"), [(1, 1), (2, 2), (3, 2), (4, 2), (8, 4), (16, 4)])
def test_auto_workers_follows_the_cpus_this_process_may_use(monkeypatch: pytest.MonkeyPatch, cpus: int,
                                                           workers: int) -> None:
    monkeypatch.setattr(config, "usable_cpus", lambda: cpus)
    assert auto_workers() == workers
