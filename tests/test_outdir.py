"""The output folder: one writer at a time (the lock), and recognising the folders cxrtriage writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from cxrtriage.errors import ConfigError, OutputError
from cxrtriage.explain.batch import CSV_FIELDS, CSV_NAME
from cxrtriage.outdir import LOCK_NAME, TABLE_HEADERS, check_out_is_not_an_input, lock_output, output_marker
from cxrtriage.pipeline.segment import SEGMENT_CSV
from cxrtriage.results import RESULTS_CSV, result_columns, segment_columns

pytestmark = pytest.mark.skipif(os.name != "posix", reason="output folders are locked with fcntl.flock (POSIX)")


def test_a_second_lock_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with lock_output(out, "predict"):
        info = json.loads((out / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid() and info["command"] == "predict" and info["started_at"]
        with pytest.raises(OutputError) as refused, lock_output(out, "segment"):
            pass
        message = str(refused.value)
        assert str(out) in message and f"pid {os.getpid()}" in message and "since" in message
        assert "\n" not in message
    with lock_output(out, "segment"):  # released on leaving the block
        pass


def test_a_finished_run_removes_the_lock_file_an_unfinished_one_leaves_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with lock_output(out, "predict"):
        (out / "results.csv").write_text("path,status\n")
    assert sorted(p.name for p in out.iterdir()) == ["results.csv"]
    with pytest.raises(KeyboardInterrupt), lock_output(out, "predict"):
        raise KeyboardInterrupt
    assert (out / LOCK_NAME).is_file()  # the mark of a run that did not finish; unlocked:
    with lock_output(out, "predict"):
        pass


def test_an_error_before_anything_is_written_leaves_no_folder(tmp_path: Path) -> None:
    out = tmp_path / "new" / "out"
    with pytest.raises(ValueError), lock_output(out, "predict"):
        raise ValueError("model not found")
    assert not out.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    with pytest.raises(ValueError), lock_output(existing, "predict"):
        raise ValueError("model not found")
    assert existing.is_dir() and not list(existing.iterdir())


def test_a_link_planted_as_the_lock_file_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (out / LOCK_NAME).symlink_to(target)
    with pytest.raises(OutputError, match="it is a link"), lock_output(out, "predict"):
        pass
    assert target.read_text() == "keep me"


def test_report_does_not_create_a_missing_folder(tmp_path: Path) -> None:
    with lock_output(tmp_path / "missing", "report", create=False) as lock:
        assert not lock.held
    assert not (tmp_path / "missing").exists()


def test_the_tables_recognised_are_the_ones_cxrtriage_writes() -> None:
    assert set(TABLE_HEADERS) == {RESULTS_CSV, SEGMENT_CSV, CSV_NAME}
    written = {RESULTS_CSV: result_columns(["a"], []), SEGMENT_CSV: segment_columns(["lung"]), CSV_NAME: CSV_FIELDS}
    for name, columns in written.items():
        assert ",".join(columns).startswith(TABLE_HEADERS[name]), name


def test_output_marker(tmp_path: Path) -> None:
    def marker(**files: str) -> str | None:
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        for name, text in files.items():
            (folder / name).write_text(text)
        return output_marker(folder, [p.name for p in folder.iterdir()])

    assert marker(**{"results.csv": "path,status,reason\nx,scored,\n"})
    assert marker(**{"explain.csv": ",".join(CSV_FIELDS) + "\n"})
    assert marker(**{"run.json": json.dumps({"tool_version": "1", "model": {}})})
    assert marker(**{LOCK_NAME: ""})
    assert marker(**{"results.csv": "image,label\n"}) is None  # someone else's results.csv: an input like any other
    assert marker(**{"run.json": "{}", "scan.png": ""}) is None
    fifo_folder = tmp_path / "fifo"
    fifo_folder.mkdir()
    os.mkfifo(fifo_folder / "results.csv")  # never opened (it would block)
    assert output_marker(fifo_folder, ["results.csv"]) is None


def test_out_may_not_be_an_input_folder(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(ConfigError, match="also an INPUT folder"):
        check_out_is_not_an_input(tmp_path / "d" / ".", [tmp_path / "d"])
    check_out_is_not_an_input(tmp_path / "d" / "out", [tmp_path / "d"])  # inside is fine: discovery skips it
    check_out_is_not_an_input(tmp_path / "out", [tmp_path / "d", tmp_path / "missing"])
