"""Issue 11 hostile files through the decode stage, in both worker modes: one failed row each, the others scored."""

from __future__ import annotations

from pathlib import Path

import pytest
from hostile import EXPECTED, hostile_folder, latin1_copy

from cxrtriage.pipeline import decode
from cxrtriage.pipeline.decode import Decoded, DecodeTask, decode_stream, examine
from cxrtriage.preprocess import PreprocessRecipe
from cxrtriage.results import Status

RECIPE = PreprocessRecipe(size=16)

@pytest.mark.parametrize("workers", [0, 1])
def test_hostile_files_fail_with_reasons_in_both_worker_modes(tmp_path: Path, workers: int) -> None:
    root = hostile_folder(tmp_path / "in")
    files = sorted(root.iterdir())
    out = list(decode_stream([DecodeTask(i, str(p), RECIPE) for i, p in enumerate(files)], workers=workers, window=4))
    assert [Path(d.path).name for d in out] == [p.name for p in files]
    by_name = {Path(d.path).name: d.record for d in out}
    for name, phrase in EXPECTED.items():
        assert by_name[name].status is Status.FAILED, (name, by_name[name].reason)
        assert phrase in (by_name[name].reason or ""), (name, by_name[name].reason)
    assert by_name["y_good.png"].status is Status.SCORED and by_name["z_good_j2k.dcm"].status is Status.SCORED


def test_latin1_name_in_the_serial_decode_stage(tmp_path: Path) -> None:
    path = latin1_copy(tmp_path)
    [d] = decode_stream([DecodeTask(0, str(path), RECIPE)], workers=0, window=1)
    assert d.record.status is Status.SCORED and d.model_input is not None


class _Panic(BaseException):
    """Stands for pyo3's PanicException: a BaseException from native code."""


def test_examine_turns_a_native_base_exception_into_a_failed_record(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    def panic(*args: object, **kwargs: object) -> None:
        raise _Panic("index out of bounds")

    monkeypatch.setattr(decode, "assess", panic)
    d = examine(DecodeTask(0, str(tmp_path / "x.dcm"), RECIPE))
    assert d.record.status is Status.FAILED
    assert "stopped on an internal error (_Panic: index out of bounds)" in (d.record.reason or "")
    monkeypatch.setattr(decode, "assess", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        examine(DecodeTask(0, str(tmp_path / "x.dcm"), RECIPE))


def _raise_unpicklable(task: DecodeTask) -> Decoded:
    class Local(BaseException):  # a class defined in a function cannot be pickled back to the main process
        pass

    if task.path.endswith("bad"):
        raise Local("from native code")
    return Decoded(task.index, examine(task).record)


def test_a_worker_error_that_cannot_be_pickled_is_one_failed_row(tmp_path: Path) -> None:
    tasks = [DecodeTask(0, str(tmp_path / "bad"), RECIPE), DecodeTask(1, str(tmp_path / "missing.png"), RECIPE)]
    out = list(decode_stream(tasks, workers=1, window=2, fn=_raise_unpicklable))
    assert [d.record.status for d in out] == [Status.FAILED, Status.FAILED]
    assert "the decode worker could not return a result for this file" in (out[0].record.reason or "")
    assert "file not found" in (out[1].record.reason or "")  # the other file is still examined
