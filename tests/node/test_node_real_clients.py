"""Real senders, real files: DCMTK's storescu and a pynetdicom SCU send ../shared/data/dicom and sample_data/ to a node.

Every chest radiograph must be scored (with the scores `predict` gives the same file: one pipeline), every other file
refused by the node or excluded with a reason, and the node must still answer afterwards.
"""

from __future__ import annotations

import math
import re
import subprocess
import time
from collections import defaultdict
from pathlib import Path

import pydicom
import pytest
from factories import make_tiny_classifier
from nodekit import REPO, dcmtk, echo, free_port, jsonl_rows, results_rows, send_pynetdicom, start_serve, wait_for

from cxrtriage.node.scp import ACCEPTED_SOP_CLASSES, REFUSED_SOP_CLASS
from cxrtriage.pipeline.predict import predict

pytestmark = [pytest.mark.data, pytest.mark.slow]

# storescu proposes uncompressed transfer syntaxes unless told which compressed one to propose (it cannot
# decompress JPEG 2000, RLE or JPEG-LS itself): the option a modality sending that syntax would use.
STORESCU_PROPOSE = {
    "1.2.840.10008.1.2.5": "-xr", "1.2.840.10008.1.2.4.90": "-xv", "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.4.70": "-xs", "1.2.840.10008.1.2.4.50": "-xy", "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.80": "-xt", "1.2.840.10008.1.2.4.81": "-xu", "1.2.840.10008.1.2.1.99": "-xd",
}


def _header(path: Path) -> tuple[str, str, str] | None:
    """(SOP class, SOP instance, transfer syntax) of a DICOM file with file meta, else None."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.file_meta.TransferSyntaxUID)
    except Exception:
        return None


def _sop_uid(path: Path) -> str:
    """The SOP Instance UID of a file storescu sent (it reads files without file meta, too)."""
    return str(pydicom.dcmread(path, stop_before_pixels=True, force=True).SOPInstanceUID)


def _acknowledged(log: str) -> list[str]:
    acked, current = [], None
    for line in log.splitlines():
        m = re.match(r"I: Sending file: (.*)$", line.strip())
        if m:
            current = m.group(1)
        elif current is not None and "Received Store Response (Success)" in line:
            acked.append(current)
            current = None
    return acked


def test_storescu_and_pynetdicom_send_the_real_files_every_chest_image_is_scored(
        shared_data: Path, tmp_path: Path) -> None:
    files = sorted(p for root in (shared_data / "dicom", REPO / "sample_data") for p in root.rglob("*") if p.is_file())
    model = make_tiny_classifier(tmp_path / "models" / "clf", size=16)
    reference = predict(files, tmp_path / "predict", model=str(model), workers=0)
    from cxrtriage.results import read_results
    by_path = {r.path: r for r in read_results(reference.results_jsonl).records}
    chest_uids = {r.sop_instance_uid for r in by_path.values() if r.status.value == "scored" and r.sop_instance_uid}
    assert len(chest_uids) >= 3  # the NEMA chest (one SOP Instance UID in three encodings) and the sample chests

    port = free_port()
    out = tmp_path / "node"
    proc = start_serve(out, model, port, "--study-timeout", "1")
    try:
        # DCMTK storescu, one run per transfer syntax family, the rest (non-DICOM files too) with the defaults
        groups: dict[str, list[Path]] = defaultdict(list)
        for f in files:
            h = _header(f)
            groups[STORESCU_PROPOSE.get(h[2], "") if h else ""].append(f)
        acked: list[str] = []
        for flag, group in groups.items():
            res = subprocess.run([dcmtk("storescu"), "-v", "-nh", *([flag] if flag else []), "-aec", "CXRTRIAGE",
                                  "127.0.0.1", str(port), *map(str, group)], capture_output=True, text=True, timeout=300)
            acked += _acknowledged(res.stdout + res.stderr)
        # pynetdicom: every file pydicom reads, each in its own transfer syntax (duplicates of the above included)
        sent = send_pynetdicom(files, port)
        ok_uids = {s.sop_instance_uid for s in sent if s.status == 0} | {_sop_uid(Path(f)) for f in acked}
        refused = [s for s in sent if s.status == REFUSED_SOP_CLASS]
        assert refused and all((_header(s.path) or ("", "", ""))[0] not in ACCEPTED_SOP_CLASSES for s in refused)
        for s in sent:  # nothing acceptable was refused, and nothing refused was acceptable
            h = _header(s.path)
            if h is not None and s.status is not None:
                assert (s.status == 0) == (h[0] in ACCEPTED_SOP_CLASSES), (s.path, hex(s.status))
        assert chest_uids <= ok_uids

        wait_for(lambda: {r["sop_instance_uid"] for r in results_rows(out)} >= ok_uids, 180,
                 "a row for every stored instance", proc)
        time.sleep(2)
        rows = jsonl_rows(out)
        uids = [r["sop_instance_uid"] for r in rows]
        assert len(uids) == len(set(uids)) == len(ok_uids)  # every instance once, duplicates never scored again
        for row in rows:
            same = [r for r in by_path.values() if r.sop_instance_uid == row["sop_instance_uid"]]
            assert same, row["path"]
            if row["status"] == "scored":
                # the same pipeline as predict: the scores of (one of) the files sent with this UID
                assert any(all(math.isclose(row[f"score_{lab}"], r.scores[lab], rel_tol=1e-5, abs_tol=1e-6)
                               for lab in r.scores) for r in same if r.status.value == "scored"), row["path"]
            else:
                assert row["reason"] and {r.status.value for r in same} & {row["status"]}, row
        assert {r["sop_instance_uid"] for r in rows if r["status"] == "scored"} == chest_uids
        assert echo(port)
        log = proc.text()
        assert "Traceback" not in log and "internal error" not in log
    finally:
        proc.stop()
