"""How many decode processes a run starts when none are asked for: from the CPUs the process may use."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrtriage.errors import ConfigError
from cxrtriage.pipeline import config
from cxrtriage.pipeline.config import PredictConfig, auto_workers


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


def test_options_for_outputs_the_run_does_not_write_are_refused_not_ignored(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """--deidentify alone ran, wrote no report, and left a user believing the outputs were de-identified."""
    monkeypatch.setenv("CXRTRIAGE_PSEUDONYM_KEY", "a-site-secret-of-sixteen+")
    base = {"inputs": (tmp_path,), "out_dir": tmp_path / "out"}
    with pytest.raises(ConfigError, match=r"--deidentify .* needs --report, --dicom or --send .*results\.csv"):
        PredictConfig(**base, deidentify=True)
    with pytest.raises(ConfigError, match=r"--segmenter .* needs --lungs"):
        PredictConfig(**base, segmenter="lung-segmenter")
    with pytest.raises(ConfigError, match=r"--segmenter"):
        PredictConfig(**base, segmenter="lung-segmenter", report=True, lungs=False)
    with pytest.raises(ConfigError, match=r"--no-pdf .* needs --report"):
        PredictConfig(**base, pdf=False)
    with pytest.raises(ConfigError, match=r"--modality .* needs --dicom or --send"):
        PredictConfig(**base, report=True, modality="OT")
    with pytest.raises(ConfigError, match=r"--aet and --called-aet .* need --send"):
        PredictConfig(**base, report=True, dicom=True, called_aet="MYPACS")
    for ok in ({"deidentify": True, "report": True}, {"deidentify": True, "send": "pacs:104"},
               {"pdf": False, "report": True}, {"modality": "OT", "dicom": True},
               {"aet": "ME", "called_aet": "MYPACS", "send": "pacs:104"},
               {"segmenter": "lung-segmenter", "lungs": True}, {"segmenter": "lung-segmenter", "report": True}):
        PredictConfig(**base, **ok)  # type: ignore[arg-type]
