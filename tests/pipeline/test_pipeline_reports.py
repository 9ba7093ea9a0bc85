"""The reports step of an incremental run (serve, watch): a node restarted with another --deidentify setting on its
folder (the journal does not record it: it changes no results row) leaves no page of the other kind in report/."""

from __future__ import annotations

from pathlib import Path

import pytest
from factories import make_tiny_classifier, write_dicom
from pydicom.uid import generate_uid

from cxrtriage.pipeline.config import PredictConfig
from cxrtriage.pipeline.incremental import IncrementalRun
from cxrtriage.report.folder import RECORD_NAME
from cxrtriage.report.pseudonym import ENV_PSEUDONYM_KEY


def _publish(tmp_path: Path, model: Path, files: list[str], **options: object) -> tuple[str, ...]:
    """One node run on ``tmp_path/out`` that scores and publishes ``files`` as one batch; returns its errors."""
    config = PredictConfig(inputs=(tmp_path / "spool",), out_dir=tmp_path / "out", model=str(model), workers=0,
                           report=True, pdf=False, **options)  # type: ignore[arg-type]
    run = IncrementalRun(config, command="serve")
    try:
        batch = run.commit(run.score(files), {})
        published = run.publish(batch)
        run.mark_done(batch)
    finally:
        run.close()
    return published.errors


@pytest.mark.parametrize("deidentified_first", [False, True])
def test_a_node_restarted_with_another_deidentify_setting_leaves_no_page_of_the_other_kind(
        deidentified_first: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_PSEUDONYM_KEY, "a-site-secret-of-sixteen+")
    model = make_tiny_classifier(tmp_path / "models" / "clf")
    uids = [generate_uid() for _ in range(2)]
    files = [str(write_dicom(tmp_path / "spool" / f"{n}.dcm", rows=40, cols=40, study_uid=uid, PatientName=f"Doe^{n}",
                             PatientID=f"PID-{n}")) for n, uid in enumerate(uids)]
    (tmp_path / "out").mkdir()
    report = tmp_path / "out" / "report"
    assert _publish(tmp_path, model, files[:1], deidentify=deidentified_first) == ()
    first = {p.name for p in report.iterdir()} - {"index.html", RECORD_NAME}
    assert first and all(n.startswith("study-") == deidentified_first for n in first)
    assert _publish(tmp_path, model, files[1:], deidentify=not deidentified_first) == ()
    now = {p.name for p in report.iterdir()} - {"index.html", RECORD_NAME}
    assert not first & now
    assert all(n.startswith("study-") != deidentified_first for n in now)
    pages = [n for n in now if n.endswith(".html")]
    assert len(pages) == 2  # the first study's page is written again, with the node's new setting
    index = (report / "index.html").read_text(encoding="utf-8")
    assert all(f'href="{p}"' in index for p in pages) and "written again" in index
    if deidentified_first:
        assert all(uid in index for uid in uids)
    else:
        assert not [t for t in (*uids, "Doe", "PID-") if t in index]
