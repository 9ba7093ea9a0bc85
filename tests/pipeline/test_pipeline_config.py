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


def test_the_command_line_and_the_library_batch_the_same_by_default() -> None:
    import inspect
    from pathlib import Path

    from cxrtriage.cli.predict import predict_cmd
    from cxrtriage.pipeline.config import PREDICT_BATCH_SIZE, PredictConfig

    assert inspect.signature(predict_cmd).parameters["batch_size"].default == PREDICT_BATCH_SIZE
    assert PredictConfig(inputs=(Path("x"),), out_dir=Path("o")).batch_size == PREDICT_BATCH_SIZE
