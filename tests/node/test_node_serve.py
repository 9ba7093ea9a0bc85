"""`cxrtriage serve` as a sender sees it: real processes on 127.0.0.1, real clients (DCMTK, pynetdicom).

What a hospital's modality or PACS would notice: C-ECHO answered, chest radiographs stored and scored once per
study, everything else refused with a proper status, the calling AE allow-list and the association limit
enforced, a full disk refused instead of acknowledged, and a log that names UIDs and counts, never the patient.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from factories import make_tiny_classifier, write_dicom
from nodekit import (
    Proc,
    dcmtk,
    echo,
    free_port,
    jsonl_rows,
    results_rows,
    send_pynetdicom,
    start_serve,
    wait_for,
    worklist_rows,
)
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from cxrtriage.node.scp import OUT_OF_RESOURCES, REFUSED_SOP_CLASS

pytestmark = pytest.mark.slow

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    return make_tiny_classifier(tmp_path / "models" / "clf", size=16)


@pytest.fixture()
def node(tmp_path: Path, model: Path) -> Iterator[tuple[Proc, int, Path]]:
    port = free_port()
    out = tmp_path / "node"
    proc = start_serve(out, model, port, "--study-timeout", "1", "--allow-aet", "PYNETDICOM", "--allow-aet", "STORESCU",
                       "--allow-aet", "TESTSCU", "--allow-aet", "ECHOSCU")
    yield proc, port, out
    proc.stop()


def _studies(folder: Path, n_studies: int, per_study: int, **kw: object) -> list[Path]:
    files = []
    for s in range(n_studies):
        study = generate_uid()
        for i in range(per_study):
            files.append(write_dicom(folder / f"s{s}_{i}.dcm", rows=24, cols=20, study_uid=study, **kw))
    return files


def test_a_sender_sees_echo_storage_refusals_and_one_scored_row_per_instance(
        node: tuple[Proc, int, Path], tmp_path: Path) -> None:
    proc, port, out = node
    assert subprocess.run([dcmtk("echoscu"), "-aet", "ECHOSCU", "-aec", "CXRTRIAGE", "127.0.0.1", str(port)],
                          capture_output=True, timeout=30).returncode == 0
    files = _studies(tmp_path / "in", 2, 3)
    ct = write_dicom(tmp_path / "in" / "ct.dcm", rows=16, cols=16)
    ds = pydicom.dcmread(ct)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CT_STORAGE
    ds.Modality = "CT"
    ds.save_as(ct, enforce_file_format=True)
    sent = send_pynetdicom([*files, ct], port)
    assert [s.status for s in sent] == [0] * 6 + [REFUSED_SOP_CLASS]
    # results.csv is rewritten before worklist.csv (each atomically): wait until both show the second study
    wait_for(lambda: len(results_rows(out)) == 6 and len(worklist_rows(out)) == 2, 60, "6 rows, 2 studies", proc)
    rows = results_rows(out)
    assert sorted(r["sop_instance_uid"] for r in rows) == sorted(s.sop_instance_uid for s in sent[:6])
    assert {r["status"] for r in rows} == {"scored"}
    assert all(r["path"].startswith(str(out / "spool")) for r in rows)  # the durable copy is the source
    assert len(worklist_rows(out)) == 2 and [r["n_images"] for r in worklist_rows(out)] == ["3", "3"]
    assert jsonl_rows(out) and len(jsonl_rows(out)) == 6

    # the same instances again: acknowledged, never scored twice; the worklist is unchanged
    again = send_pynetdicom(files[:3], port)
    assert [s.status for s in again] == [0, 0, 0]
    assert echo(port, calling="TESTSCU")  # still alive; scoring happens after the study timeout
    time.sleep(2.5)
    assert len(results_rows(out)) == 6 and len(worklist_rows(out)) == 2

    log = proc.text()
    assert "Test^Factory" not in log and "FACTORY-1" not in log  # the factory's patient name and ID
    study = str(pydicom.dcmread(files[0]).StudyInstanceUID)
    assert f"study {study}: 3 instance(s) in batch" in log
    assert "a duplicate (already received)" in log and "refused (0x0122): CT Image Storage" in log
    assert "Traceback" not in log


def test_calling_aets_outside_the_allow_list_are_rejected(node: tuple[Proc, int, Path]) -> None:
    proc, port, _ = node
    res = subprocess.run([dcmtk("echoscu"), "-aet", "INTRUDER", "-aec", "CXRTRIAGE", "127.0.0.1", str(port)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode != 0 and "Rejected" in res.stdout + res.stderr
    assert not echo(port, calling="OTHER")
    assert echo(port, calling="TESTSCU")
    assert "association from 'INTRUDER' (127.0.0.1) rejected" in proc.text()


def test_more_associations_than_allowed_are_rejected_until_one_ends(tmp_path: Path, model: Path) -> None:
    port = free_port()
    proc = start_serve(tmp_path / "node", model, port, "--max-associations", "1")
    try:
        ae = AE(ae_title="HOLDER")
        ae.add_requested_context(Verification)
        first = ae.associate("127.0.0.1", port, ae_title="CXRTRIAGE")
        assert first.is_established
        try:
            assert not echo(port)  # a second association is over the limit
        finally:
            first.release()
        wait_for(lambda: echo(port), 30, "an association once the first one ended", proc)
    finally:
        proc.stop()


def test_a_full_disk_is_refused_out_of_resources_never_acknowledged(tmp_path: Path, model: Path) -> None:
    port = free_port()
    out = tmp_path / "node"
    proc = start_serve(out, model, port, "--study-timeout", "1", "--min-free-mb", str(2**40))  # no disk has that
    try:
        files = _studies(tmp_path / "in", 1, 2)
        sent = send_pynetdicom(files, port)
        assert [s.status for s in sent] == [OUT_OF_RESOURCES] * 2
        assert not [p for p in (out / "spool").rglob("*") if p.is_file()]
        assert "refused (0xA700, out of resources)" in proc.text()
        assert echo(port)
    finally:
        proc.stop()
    assert results_rows(out) == []
