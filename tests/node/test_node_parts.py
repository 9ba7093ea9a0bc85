"""The parts of a node, each on its own: the spool, the study assembler, the outbox (against a real Storage SCP), and
the incremental run that commits batch by batch (what a crash between its steps leaves, and how it is repaired)."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import pydicom
import pytest
from factories import make_tiny_classifier, write_dicom
from nodekit import Destination, free_port
from pydicom.uid import generate_uid

import cxrtriage.node.spool as spool_module
from cxrtriage.errors import ConfigError
from cxrtriage.node.outbox import Outbox
from cxrtriage.node.serve import StudyAssembler
from cxrtriage.node.spool import Spool, StoreStatus, shard
from cxrtriage.pipeline.config import PredictConfig
from cxrtriage.pipeline.incremental import IncrementalRun
from cxrtriage.pipeline.journal import JOURNAL_NAME, FileIdentity
from cxrtriage.report.send import Destination as SendTo


def _bytes(path: Path) -> bytes:
    return path.read_bytes()


# --------------------------------------------------------------------------- spool


def test_the_spool_stores_durably_once_per_sop_instance_uid(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    data = _bytes(write_dicom(tmp_path / "src.dcm"))
    first = spool.store("1.2.3.4", data)
    assert first.status is StoreStatus.STORED and first.path == tmp_path / "spool" / shard("1.2.3.4.dcm") / "1.2.3.4.dcm"
    assert first.path.read_bytes() == data and (first.path.stat().st_mode & 0o777) == 0o600
    assert spool.store("1.2.3.4", data).status is StoreStatus.DUPLICATE
    hostile = spool.store("../../x", data)  # names from the network never leave the spool
    assert hostile.path is not None and hostile.path.parent.parent == tmp_path / "spool"
    assert not list((tmp_path / "spool" / ".incoming").iterdir())
    assert len([d for d in (tmp_path / "spool").iterdir() if not d.name.startswith(".")]) == 256


def test_a_spool_restarted_finds_its_instances_and_drops_unacknowledged_writes(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    data = b"DICM" * 10
    spool.store("1.1", data)
    (tmp_path / "spool" / ".incoming" / "1.2.dcm.77.part").write_bytes(data[:5])  # a write cut by a crash
    again = Spool(tmp_path)
    files = again.recover(known_names=["1.9.dcm"])  # 1.9 was scored once and its file cleaned up since
    assert [f.name for f in files] == ["1.1.dcm"]
    assert not list((tmp_path / "spool" / ".incoming").iterdir())
    assert again.store("1.1", data).status is StoreStatus.DUPLICATE
    assert again.store("1.9", data).status is StoreStatus.DUPLICATE


def test_no_space_refuses_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reserve = Spool(tmp_path, min_free_bytes=2**62)
    refused = reserve.store("1.1", b"x" * 100)
    assert refused.status is StoreStatus.NO_SPACE and "the reserve is" in refused.detail

    spool = Spool(tmp_path)

    def full(fd: int, data: bytes) -> None:
        os.write(fd, data[:3])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(spool_module, "write_all", full)
    result = spool.store("1.2", b"y" * 100)
    assert result.status is StoreStatus.NO_SPACE and result.path is None
    assert not [p for p in (tmp_path / "spool").rglob("*") if p.is_file()]
    monkeypatch.undo()
    assert spool.store("1.2", b"y" * 100).status is StoreStatus.STORED  # not taken for a duplicate later


# --------------------------------------------------------------------------- study assembler


def test_a_study_is_complete_after_the_timeout_without_a_new_instance() -> None:
    studies = StudyAssembler(timeout=0.3)
    studies.add("s1", Path("a"))
    studies.add("s2", Path("b"), complete=True)  # left by a crash: ready at once
    assert studies.take(10, wait=0) == [("s2", [Path("b")])]
    time.sleep(0.2)
    studies.add("s1", Path("c"))  # the clock starts again
    assert studies.take(10, wait=0.1) == []
    t0 = time.monotonic()
    assert studies.take(10, wait=2) == [("s1", [Path("a"), Path("c")])]
    assert time.monotonic() - t0 < 1.0
    for k in range(3):
        studies.add(f"t{k}", Path(f"x{k}"), complete=True)
        studies.add(f"t{k}", Path(f"y{k}"), complete=True)
    assert [k for k, _ in studies.take(4, wait=0)] == ["t0", "t1"]  # at most 4 instances per batch
    assert studies.waiting() == 2


# --------------------------------------------------------------------------- outbox


def _objects(tmp_path: Path, n: int) -> list[Path]:
    return [write_dicom(tmp_path / "dicom" / f"o{i}.dcm") for i in range(n)]


def test_the_outbox_retries_with_back_off_and_sends_each_object_once(tmp_path: Path) -> None:
    port = free_port()
    objects = _objects(tmp_path, 3)
    outbox = Outbox(tmp_path, SendTo("127.0.0.1", port, called_aet="DESTPACS"), retry_seconds=0.2,
                    retry_max_seconds=0.5)
    outbox.stage(1, objects)
    assert outbox.tickets() == []  # staged, not released: never sent
    outbox.release(1)
    next_at = outbox.send_due()  # the destination is down
    assert next_at is not None and [t.attempts for t in outbox.tickets()] == [1, 1, 1]
    assert "not sent" in outbox.tickets()[0].last_error
    time.sleep(0.25)
    outbox.send_due()
    waits = [t.next_at - time.time() for t in outbox.tickets()]
    assert [t.attempts for t in outbox.tickets()] == [2, 2, 2] and all(0.2 < w <= 0.5 for w in waits)  # doubled

    restarted = Outbox(tmp_path, SendTo("127.0.0.1", port, called_aet="DESTPACS"), retry_seconds=0.2)
    restarted.recover(done={1})
    destination = Destination(port).start()
    try:
        time.sleep(0.5)
        assert restarted.send_due() is None
        assert sorted(destination.received) == sorted(str(pydicom.dcmread(o).SOPInstanceUID) for o in objects)
        assert restarted.send_due() is None and len(destination.received) == 3
    finally:
        destination.stop()


def test_staged_tickets_are_released_only_for_batches_marked_done(tmp_path: Path) -> None:
    objects = _objects(tmp_path, 2)
    outbox = Outbox(tmp_path, SendTo("127.0.0.1", free_port()))
    outbox.stage(1, objects[:1])
    outbox.stage(2, objects[1:])
    again = Outbox(tmp_path, SendTo("127.0.0.1", free_port()))
    again.recover(done={1})  # batch 2 was not marked done: it is published (and staged) again
    assert [t.file for t in again.tickets()] == objects[:1]
    assert not (tmp_path / "outbox" / "staged" / "2").exists()
    objects[0].unlink()  # an object that is gone cannot be sent: its ticket is set aside, not retried forever
    assert again.send_due() is None and list((tmp_path / "outbox" / "failed").iterdir())


# --------------------------------------------------------------------------- incremental run


def _config(tmp_path: Path, model: Path, **kw: object) -> PredictConfig:
    return PredictConfig(inputs=(tmp_path / "spool",), out_dir=tmp_path / "out", model=str(model), workers=0, **kw)


def test_a_crash_between_the_commit_and_the_tables_is_repaired_at_start(tmp_path: Path) -> None:
    model = make_tiny_classifier(tmp_path / "models" / "clf")
    study = generate_uid()
    files = [str(write_dicom(tmp_path / "spool" / f"{i}.dcm", study_uid=study)) for i in range(3)]
    (tmp_path / "out").mkdir()
    run = IncrementalRun(_config(tmp_path, model), command="serve")
    batch = run.commit(run.score(files[:2]), {p: FileIdentity.of(p) for p in files[:2]})
    assert run.undone() == [batch]
    run.mark_done(batch)
    run.close()
    # a crash right after the journal line of a second batch: its rows never reached results.jsonl/.csv or the
    # worklist (put back here as they were before it), and results.csv was torn on top of that
    out = tmp_path / "out"
    before = {n: (out / n).read_bytes() for n in ("results.jsonl", "results.csv", "worklist.csv")}
    run = IncrementalRun(_config(tmp_path, model), command="serve")
    second = run.commit(run.score(files[2:]), {files[2]: FileIdentity.of(files[2])}).number
    run.close()
    for n, data in before.items():
        (out / n).write_bytes(data)
    (out / "results.csv").write_bytes(before["results.csv"][:40])
    again = IncrementalRun(_config(tmp_path, model), command="serve")
    assert [b.number for b in again.undone()] == [second]  # its reports (and outbox) are still to be written
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and (out / "results.csv").read_text().count("\n") == 4
    assert [r["n_images"] for r in _worklist(out)] == ["3"]  # one study, with every committed image
    again.close()
    with pytest.raises(ConfigError, match="journal of a `cxrtriage serve` run, not of `watch`"):
        IncrementalRun(_config(tmp_path, model), command="watch")


def _worklist(out: Path) -> list[dict[str, str]]:
    import csv
    with open(out / "worklist.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_folder_with_results_of_another_kind_is_refused(tmp_path: Path) -> None:
    model = make_tiny_classifier(tmp_path / "models" / "clf")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "results.csv").write_text("path,status\n")
    with pytest.raises(ConfigError, match="holds the results of another run"):
        IncrementalRun(_config(tmp_path, model), command="serve")
    assert not (tmp_path / "out" / JOURNAL_NAME).exists()


@pytest.mark.slow
def test_each_batch_publishes_the_dicom_results_of_its_own_images(tmp_path: Path) -> None:
    model = make_tiny_classifier(tmp_path / "models" / "clf")
    study = generate_uid()
    files = [str(write_dicom(tmp_path / "spool" / f"{i}.dcm", rows=40, cols=40, study_uid=study)) for i in range(3)]
    (tmp_path / "out").mkdir()
    run = IncrementalRun(_config(tmp_path, model, dicom=True, lungs=False, pdf=False), command="serve")
    first = run.publish(run.commit(run.score(files[:2]), {}))
    second = run.publish(run.commit(run.score(files[2:]), {}))
    run.close()
    assert not first.errors and not second.errors
    assert sorted(p.name for p in first.dicom_files) == ["report_pdf.dcm", "sc_001.dcm", "sc_002.dcm", "sr_001.dcm",
                                                         "sr_002.dcm"]
    assert sorted(p.name for p in second.dicom_files) == ["report_pdf.dcm", "sc_003.dcm", "sr_003.dcm"]
    index = (tmp_path / "out" / "report" / "index.html").read_text()
    assert index.count(".html") >= 1
