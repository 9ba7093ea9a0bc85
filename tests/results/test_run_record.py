"""run.json read back: the model manifest a run recorded, for the commands that read its results later."""

from __future__ import annotations

from pathlib import Path

from cxrtriage.results import ModelRef, RunRecord, recorded_manifest, write_run_json


def test_the_recorded_manifest_is_found_from_the_folder_or_a_results_file_in_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    manifest = tmp_path / "models" / "m" / "manifest.json"
    manifest.parent.mkdir(parents=True)
    manifest.write_text("{}")
    write_run_json(out, RunRecord(tool_version="0", model=ModelRef("m", "1", "", manifest=str(manifest))))
    assert recorded_manifest(out) == manifest
    assert recorded_manifest(out / "results.csv") == manifest
    manifest.unlink()  # moved or deleted since: the caller looks the model up by name instead
    assert recorded_manifest(out) is None
    (out / "run.json").write_text("not json")
    assert recorded_manifest(out) is None
    assert recorded_manifest(tmp_path / "nothing-here") is None
