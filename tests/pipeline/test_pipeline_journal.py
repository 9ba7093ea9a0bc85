"""The journal (``OUT/journal.jsonl``): what a crash can leave in it, what is refused, and resuming in input order."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import cxrtriage.pipeline.journal as journal_module
from cxrtriage.errors import ConfigError, OutputError
from cxrtriage.pipeline.decode import Decoded
from cxrtriage.pipeline.engine import Finished
from cxrtriage.pipeline.journal import JOURNAL_NAME, FileIdentity, Journal, JournalEntry, ResumeStream
from cxrtriage.results import ImageRecord, Status

FP = {"model": "m 1 (sha256 abc)", "--heatmaps": "off"}


def _entry(path: str, n: int = 1) -> JournalEntry:
    return JournalEntry(path, FileIdentity(n, n), {"path": path, "status": "scored"}, stem=Path(path).stem)


def test_batches_and_done_marks_are_read_back(tmp_path: Path) -> None:
    j = Journal.create(tmp_path, "serve", FP)
    b1 = j.commit([_entry("a"), _entry("b")])
    j.mark_done(b1)
    b2 = j.commit([_entry("c")])
    j.close()
    again = Journal.open(tmp_path, "serve", FP, resume_hint="hint")
    assert (b1, b2) == (1, 2) and again.done == {1} and again.undone() == [2]
    assert [e.path for e in again.entries()] == ["a", "b", "c"]
    assert again.finished("a", FileIdentity(1, 1)) is not None
    assert again.finished("a", FileIdentity(2, 1)) is None  # changed since: not finished
    assert again.entry("c") is not None and again.entry("c").stem == "c"  # type: ignore[union-attr]
    assert again.next_batch == 3
    again.close()


@pytest.mark.parametrize("torn", [b'{"batch": 3, "entries": [{"pa', b'{"batch": 3}\n'[:-1], b'{"done": 1'])
def test_a_torn_last_line_is_cut_off_and_its_batch_scored_again(tmp_path: Path, torn: bytes) -> None:
    j = Journal.create(tmp_path, "predict", FP)
    j.commit([_entry("a")])
    j.commit([_entry("b")])
    j.close()
    path = tmp_path / JOURNAL_NAME
    good = path.read_bytes()
    path.write_bytes(good + torn)  # a crash in the middle of a write (no newline at the end)
    again = Journal.open(tmp_path, "predict", FP, resume_hint="hint")
    assert [e.path for e in again.entries()] == ["a", "b"]
    assert path.read_bytes() == good  # cut off, so that the next line does not follow a torn one
    again.commit([_entry("c")])
    again.close()
    assert [e.path for e in Journal.open(tmp_path, "predict", FP, resume_hint="h").entries()] == ["a", "b", "c"]


def test_a_torn_last_line_that_ends_in_a_newline_is_cut_off_too(tmp_path: Path) -> None:
    j = Journal.create(tmp_path, "predict", FP)
    j.commit([_entry("a")])
    j.close()
    path = tmp_path / JOURNAL_NAME
    good = path.read_bytes()
    path.write_bytes(good + b'{"batch": 2, "ent\n')
    assert [e.path for e in Journal.open(tmp_path, "predict", FP, resume_hint="h").entries()] == ["a"]
    assert path.read_bytes() == good


def test_damage_before_the_last_line_is_an_error_naming_the_line(tmp_path: Path) -> None:
    j = Journal.create(tmp_path, "predict", FP)
    j.commit([_entry("a")])
    j.commit([_entry("b")])
    j.close()
    path = tmp_path / JOURNAL_NAME
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = "garbage\n"
    path.write_text("".join(lines))
    with pytest.raises(OutputError, match=r"journal.jsonl:2: the journal is damaged .*move it away"):
        Journal.open(tmp_path, "predict", FP, resume_hint="h")


def test_another_command_or_other_settings_are_refused_naming_the_difference(tmp_path: Path) -> None:
    Journal.create(tmp_path, "serve", FP).close()
    with pytest.raises(ConfigError, match=r"journal of a `cxrtriage serve` run, not of `watch`; do this"):
        Journal.open(tmp_path, "watch", FP, resume_hint="do this")
    with pytest.raises(ConfigError, match=r"other settings \(--heatmaps differ\); do that"):
        Journal.open(tmp_path, "serve", {**FP, "--heatmaps": "gradcam"}, resume_hint="do that")
    (tmp_path / JOURNAL_NAME).write_text(json.dumps({"something": "else"}) + "\n")
    with pytest.raises(OutputError, match="not a cxrtriage journal"):
        Journal.open(tmp_path, "serve", FP, resume_hint="h")


def test_a_failed_append_leaves_no_torn_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    j = Journal.create(tmp_path, "predict", FP)
    j.commit([_entry("a")])
    size = (tmp_path / JOURNAL_NAME).stat().st_size
    def half_then_full(fd: int, data: bytes) -> None:
        os.write(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(journal_module, "write_all", half_then_full)
    with pytest.raises(OutputError, match="the disk is full"):
        j.commit([_entry("b")])
    j.close()
    assert (tmp_path / JOURNAL_NAME).stat().st_size == size


def test_resume_stream_puts_finished_inputs_back_in_input_order(tmp_path: Path) -> None:
    files = []
    for name in "abcdef":
        p = tmp_path / f"{name}.png"
        p.write_bytes(name.encode())
        files.append(str(p))
    (tmp_path / "out").mkdir()
    j = Journal.create(tmp_path / "out", "predict", FP)
    done = [files[0], files[2], files[3], files[5]]
    j.commit([JournalEntry(p, FileIdentity.of(p), {"path": p, "status": "scored"}) for p in done])
    stream = ResumeStream(iter(files), j)

    def decode(items: Iterator[tuple[int, str]]) -> Iterator[Decoded]:
        for _, path in items:
            yield Decoded(0, ImageRecord(path=path, status=Status.EXCLUDED))

    out = list(stream.merge(decode(stream.paths_to_decode())))
    assert [o.path for o in out] == files
    assert [type(o).__name__ for o in out] == ["Finished", "Decoded", "Finished", "Finished", "Decoded", "Finished"]
    assert stream.resumed == 4 and set(stream.identities) == {files[1], files[4]}
    assert isinstance(out[0], Finished) and out[0].status is Status.SCORED
    j.close()
