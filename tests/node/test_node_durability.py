"""`cxrtriage serve` under load and after crashes: concurrent senders, kill -9 in the middle of a transfer, and a
forward destination that is down at first (coming up while the node runs, or across a restart). Real processes, real
clients, 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from factories import make_tiny_classifier, write_dicom
from nodekit import (
    Destination,
    Sent,
    dcmtk,
    free_port,
    results_rows,
    send_pynetdicom,
    start_serve,
    wait_for,
    worklist_rows,
)
from pydicom.uid import generate_uid

from cxrtriage.triage import build_worklist

pytestmark = pytest.mark.slow


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    return make_tiny_classifier(tmp_path / "models" / "clf", size=16)


def _studies(folder: Path, n_studies: int, per_study: int, prefix: str = "") -> list[Path]:
    files = []
    for s in range(n_studies):
        study = generate_uid()
        for i in range(per_study):
            files.append(write_dicom(folder / f"{prefix}s{s:02d}_{i:02d}.dcm", rows=24, cols=20, study_uid=study))
    return files


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_four_concurrent_associations_of_fifty_instances_are_all_stored_and_scored_once(
        tmp_path: Path, model: Path) -> None:
    port = free_port()
    out = tmp_path / "node"
    proc = start_serve(out, model, port, "--study-timeout", "1", "--max-associations", "4")
    try:
        senders = [_studies(tmp_path / "in" / f"a{k}", 10, 5) for k in range(4)]  # 4 x 10 studies x 5 instances
        sent: dict[int, list[Sent]] = {}

        def send(k: int) -> None:
            sent[k] = send_pynetdicom(senders[k], port, calling=f"SENDER{k}")

        threads = [threading.Thread(target=send, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        statuses = [s.status for k in range(4) for s in sent[k]]
        assert statuses == [0] * 200, Counter(statuses)
        wait_for(lambda: len(results_rows(out)) >= 200, 120, "200 rows", proc)
        time.sleep(1.5)  # nothing more may come
        rows = results_rows(out)
        uids = Counter(r["sop_instance_uid"] for r in rows)
        assert len(rows) == 200 and set(uids.values()) == {1}
        assert set(uids) == {s.sop_instance_uid for k in range(4) for s in sent[k]}
        assert {r["status"] for r in rows} == {"scored"}
        spooled = list((out / "spool").rglob("*.dcm"))
        assert len(spooled) == 200
        worklist = worklist_rows(out)
        assert len(worklist) == 40 and all(w["n_images"] == "5" for w in worklist)
        assert sum(len(w["paths"].split(";")) for w in worklist) == 200
        # complete and sorted: the worklist on disk is the one the results make
        from cxrtriage.results import read_results
        expected = build_worklist(read_results(out / "results.jsonl").records)
        assert [w["study_key"] for w in worklist] == [e.study_key for e in expected]
        log = proc.text()
        assert log.count("released: 50 instance(s) stored, 0 duplicate(s), 0 refused") == 4
    finally:
        proc.stop()


def _journaled(journal: Path) -> int:
    """Inputs committed in a journal (complete lines only: a torn last line does not count)."""
    n = 0
    for line in journal.read_text().split("\n")[1:-1]:
        try:
            n += len(json.loads(line).get("entries", []))
        except ValueError:
            pass
    return n


def _storescu_acknowledged(log: str) -> tuple[list[str], list[str]]:
    """Files storescu -v sent, split into acknowledged (success) and not, from its log."""
    acked: list[str] = []
    other: list[str] = []
    current: str | None = None
    for line in log.splitlines():
        m = re.match(r"I: Sending file: (.*)$", line.strip())
        if m:
            if current is not None:
                other.append(current)
            current = m.group(1)
        elif current is not None and "Received Store Response" in line:
            (acked if "(Success)" in line else other).append(current)
            current = None
    if current is not None:
        other.append(current)
    return acked, other


def test_kill_9_mid_transfer_loses_no_acknowledged_instance_and_scores_each_once(tmp_path: Path, model: Path) -> None:
    port = free_port()
    out = tmp_path / "node"
    files = _studies(tmp_path / "in", 6, 10)
    # Each instance takes 60 ms to store, and a study is complete after 0.5 s: while the later studies are being
    # received, the earlier ones are scored and committed, so the kill can land in any of those steps.
    proc = start_serve(out, model, port, "--study-timeout", "0.5", slow_store=0.06)
    storescu_log = tmp_path / "storescu.log"
    with open(storescu_log, "w") as f:
        sender = subprocess.Popen([dcmtk("storescu"), "-v", "-aec", "CXRTRIAGE", "127.0.0.1", str(port),
                                   *map(str, files)], stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: len(list((out / "spool").rglob("*.dcm"))) >= 25, 60, "25 instances in the spool", proc)
        proc.kill9()
        sender.wait(60)
    finally:
        if sender.poll() is None:
            sender.kill()
        proc.stop()
    acked, not_acked = _storescu_acknowledged(storescu_log.read_text())
    assert 25 <= len(acked) < 60 and not_acked, storescu_log.read_text()[-2000:]
    assert sender.returncode != 0  # storescu says the transfer did not complete
    spooled = len(list((out / "spool").rglob("*.dcm")))
    journaled = _journaled(out / "journal.jsonl")
    assert spooled >= len(acked)  # nothing acknowledged is missing (one more may be stored, unacknowledged)

    restarted = start_serve(out, model, port, "--study-timeout", "0.5", log_name="serve2.log")
    try:
        acked_uids = {_uid(Path(f)) for f in acked}
        wait_for(lambda: acked_uids <= {r["sop_instance_uid"] for r in results_rows(out)}, 120,
                 "every acknowledged instance to be scored after the restart", restarted)
        if spooled > journaled:
            assert (f"spool: {spooled - journaled} instance(s) of" in restarted.text()
                    and "received before the previous run stopped and not yet scored; they are scored first"
                    in restarted.text())
        assert not list((out / "spool" / ".incoming").iterdir())  # unacknowledged partial writes are gone
        rows = results_rows(out)
        assert set(Counter(r["sop_instance_uid"] for r in rows).values()) == {1}

        # The sender resends everything (what storescu would do for the unacknowledged ones): duplicates are
        # acknowledged and not scored again; the rest is scored; one row per instance in the end.
        res = subprocess.run([dcmtk("storescu"), "-aec", "CXRTRIAGE", "127.0.0.1", str(port), *map(str, files)],
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stdout + res.stderr
        wait_for(lambda: len(results_rows(out)) >= 60, 120, "60 rows", restarted)
        time.sleep(1.5)
        rows = results_rows(out)
        assert len(rows) == 60 and Counter(r["sop_instance_uid"] for r in rows) == Counter({_uid(f): 1 for f in files})
        assert len(worklist_rows(out)) == 6 and all(w["n_images"] == "10" for w in worklist_rows(out))
    finally:
        restarted.stop()


def test_forward_to_a_destination_down_at_first_arrives_once_across_a_restart(tmp_path: Path, model: Path) -> None:
    port, dest_port = free_port(), free_port()
    out = tmp_path / "node"
    args = ("--study-timeout", "0.5", "--dicom", "--no-lungs", "--forward", f"127.0.0.1:{dest_port}",
            "--called-aet", "DESTPACS", "--retry-seconds", "0.5", "--retry-max-seconds", "1")
    proc = start_serve(out, model, port, *args)
    files = _studies(tmp_path / "in", 1, 2)
    try:
        assert [s.status for s in send_pynetdicom(files, port)] == [0, 0]
        wait_for(lambda: len(results_rows(out)) == 2, 60, "2 rows", proc)
        wait_for(lambda: "the others are tried again later" in proc.text(), 60, "a failed forward", proc)
        tickets = list((out / "outbox" / "ready").rglob("*.json"))
        assert tickets and all('"attempts": 0' not in t.read_text() for t in tickets)
        proc.kill9()  # the outbox must survive this
    finally:
        proc.stop()
    objects = sorted((out / "dicom").rglob("*.dcm"))
    assert len(objects) == 5  # SR + SC for each image, one encapsulated PDF for the study
    expected = {_uid(p) for p in objects}

    destination = Destination(dest_port).start()
    restarted = start_serve(out, model, port, *args, log_name="serve2.log")
    try:
        wait_for(lambda: len(destination.received) >= 5 and not list((out / "outbox" / "ready").rglob("*.json")), 60,
                 "the objects to arrive", restarted)
        time.sleep(2)  # no second copy follows
        assert Counter(destination.received) == Counter(dict.fromkeys(expected, 1))
        assert "forward: 5 object(s) sent to 127.0.0.1" in restarted.text()
    finally:
        restarted.stop()
        destination.stop()


def test_forward_to_a_destination_that_comes_up_while_the_node_runs_arrives_once(tmp_path: Path, model: Path) -> None:
    port, dest_port = free_port(), free_port()
    out = tmp_path / "node"
    proc = start_serve(out, model, port, "--study-timeout", "0.5", "--dicom", "--no-lungs", "--forward",
                       f"127.0.0.1:{dest_port}", "--called-aet", "DESTPACS", "--retry-seconds", "0.5",
                       "--retry-max-seconds", "1")
    destination: Destination | None = None
    try:
        assert [s.status for s in send_pynetdicom(_studies(tmp_path / "in", 1, 2), port)] == [0, 0]
        wait_for(lambda: "the others are tried again later" in proc.text(), 60, "a failed forward", proc)
        destination = Destination(dest_port).start()  # the destination comes up; the node is not restarted
        wait_for(lambda: len(destination.received) >= 5 and not list((out / "outbox" / "ready").rglob("*.json")), 60,
                 "the objects to arrive", proc)
        time.sleep(2)  # later retries send nothing more
        expected = {_uid(p) for p in (out / "dicom").rglob("*.dcm")}
        assert len(expected) == 5 and Counter(destination.received) == Counter(dict.fromkeys(expected, 1))
    finally:
        proc.stop()
        if destination is not None:
            destination.stop()
