"""Reading a results directory: grouping, order, thresholds, provenance and de-identification."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from factories import edit_manifest
from report_fixtures import LABELS, make_results

from cxrtriage.errors import ConfigError, InputError
from cxrtriage.report.header import UNKNOWN, PatientHeader, deidentify, study_slug
from cxrtriage.report.pseudonym import ENV_PSEUDONYM_KEY, pseudonym, pseudonym_key
from cxrtriage.report.sources import StudySources
from cxrtriage.report.study import load_results


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_results(tmp_path_factory.mktemp("study"))


def test_groups_rows_into_studies_in_worklist_order(results: Path) -> None:
    b = load_results(results)
    assert [len(s.images) for s in b.studies] == [2, 1, 1, 1]
    assert [s.priority for s in b.studies] == ["urgent", "urgent", "routine", "not_assessed"]
    assert b.studies[0].priority_reason.endswith("1 of 2 images not assessed")  # worklist.csv's study-level reason
    assert b.studies[3].priority_reason.startswith("failed: not a readable")
    first = b.studies[0]
    assert [i.status for i in first.images] == ["scored", "excluded"]
    header = StudySources(first).header()
    assert header.patient_id == "PID-123" and header.birth_date == "1960-01-02"
    assert header.patient_name == "Doe Jane"
    assert b.labels == LABELS
    assert b.run is not None and b.run.model.name == "tiny-classifier" and b.run.started_at.startswith("2025-03-12")
    assert b.model.name == "tiny-classifier"


def test_thresholds_and_validation_figures_come_from_the_manifest(results: Path) -> None:
    b = load_results(results)
    f = {x.label: x for x in b.studies[0].images[0].findings}
    assert b.operating_point == "balanced" and b.operating_point_source == "run.json"
    assert f["pneumothorax"].threshold == 0.5 and f["pneumothorax"].threshold_kind == "balanced"
    assert f["pneumothorax"].sensitivity == 0.8 and f["pneumothorax"].positive is True
    assert f["effusion"].positive is False
    rule_out = load_results(results, operating_point="rule_out")
    g = {x.label: x for x in rule_out.studies[0].images[0].findings}
    assert g["effusion"].threshold == 0.2 and g["effusion"].sensitivity == 0.95 and g["effusion"].positive is False


def test_run_json_thresholds_win_and_unknown_ones_are_marked(results: Path, tmp_path: Path) -> None:
    run = json.loads((results / "run.json").read_text())
    run["thresholds"] = {"pneumothorax": {"threshold": 0.2}, "effusion": {"threshold": 0.1}}
    alt = tmp_path / "alt"
    alt.mkdir()
    for name in ("results.jsonl", "worklist.csv"):
        (alt / name).write_text((results / name).read_text())
    (alt / "run.json").write_text(json.dumps(run))
    b = load_results(alt)
    f = {x.label: x for x in b.studies[0].images[0].findings}
    assert f["pneumothorax"].threshold_kind == "rule_out" and f["pneumothorax"].sensitivity == 0.95
    assert f["effusion"].threshold == 0.1 and f["effusion"].threshold_kind == "run"
    assert f["effusion"].sensitivity is None and f["effusion"].positive is True  # 0.12 >= 0.10


def test_without_worklist_studies_are_ordered_by_priority_level(results: Path, tmp_path: Path) -> None:
    d = tmp_path / "nowl"
    d.mkdir()
    (d / "results.jsonl").write_text((results / "results.jsonl").read_text())
    run = json.loads((results / "run.json").read_text())
    run["priority_levels"] = ["routine", "urgent"]  # a site that reads routine first (odd, but it decides)
    (d / "run.json").write_text(json.dumps(run))
    b = load_results(d)
    assert [s.priority for s in b.studies][:3] == ["routine", "urgent", "urgent"]
    assert b.studies[0].priority_reason == "no finding above threshold"  # the image's own reason


def test_without_run_json_or_manifest_everything_unknown_is_said(results: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    rows = [json.loads(line) for line in (results / "results.jsonl").read_text().splitlines()]
    for r in rows:
        r["model_name"] = "no-such-model"
    (bare / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    b = load_results(bare)
    assert b.manifest is None and b.run is None and b.model.name == "no-such-model"
    assert any("run.json not found" in n for n in b.notes)
    assert any("manifest not found" in n and "no-such-model" in n for n in b.notes)
    f = b.studies[0].images[0].findings
    assert all(x.threshold is None and x.threshold_kind == UNKNOWN and x.positive is None for x in f)
    assert [x.label for x in f] == list(LABELS)  # labels recovered from the score columns


def test_manifest_with_another_sha_is_refused(results: Path, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (results / "results.jsonl").read_text().splitlines()]
    for r in rows:
        r["model_sha256"] = "0" * 64
    d = tmp_path / "sha"
    d.mkdir()
    (d / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (d / "run.json").write_text((results / "run.json").read_text())
    b = load_results(d)
    assert b.manifest is None
    assert any("000000000000" in n for n in b.notes)


def test_manifest_resealed_since_the_results_is_refused(tmp_path: Path) -> None:
    """The same ONNX file, but its manifest was edited and re-sealed after the run: its thresholds may not be the
    ones that decided, so the report does not take them (nor its integrity) from it."""
    results = make_results(tmp_path)  # its own model folder: the manifest is edited below
    rows = [json.loads(line) for line in (results / "results.jsonl").read_text().splitlines()]
    recorded = rows[0]["model_integrity"]
    assert recorded and all(r["model_integrity"] == recorded for r in rows if r["status"] == "scored")
    man = Path(json.loads((results / "run.json").read_text())["model"]["manifest"])
    data = json.loads(man.read_text())
    data["thresholds"]["effusion"]["balanced"]["threshold"] = 0.9
    edit_manifest(man, data)
    b = load_results(results)
    assert b.manifest is None and b.model.integrity == recorded
    assert any(f"the results record {recorded[:12]}" in n and "re-sealed" in n for n in b.notes)


def test_csv_fallback_reads_semicolon_lists(results: Path, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (results / "results.jsonl").read_text().splitlines()]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    d = tmp_path / "csv"
    shutil.copytree(results / "overlays", d / "overlays")
    with open(d / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys)
        for r in rows:
            w.writerow([";".join(v) if isinstance(v, list) and all(isinstance(x, str) for x in v)
                        else ("" if v is None else v) for v in (r.get(k) for k in keys)])
    b = load_results(d, model=str(results.parent / "models" / "tiny"))
    study = next(s for s in b.studies if s.key.endswith(".1001"))
    img = study.images[0]
    assert [h.label for h in img.heatmaps] == ["pneumothorax", "effusion"]
    assert all(h.path.is_file() for h in img.heatmaps)
    assert img.findings[0].score == pytest.approx(0.81)


def test_missing_folder_and_bad_operating_point_are_clear_errors(results: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="results folder not found"):
        load_results(tmp_path / "nope")
    with pytest.raises(InputError, match="results.jsonl"):
        load_results(tmp_path)
    with pytest.raises(ConfigError, match="rule_out, balanced"):
        load_results(results, operating_point="youden")


def test_deidentified_header_has_no_identifiers_and_stable_pseudonyms(results: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_PSEUDONYM_KEY, "a-site-secret-of-sixteen+")
    b = load_results(results, deidentified=True)
    h = deidentify(StudySources(b.studies[0]).header(), b.studies[0].key)
    text = " ".join(str(v) for v in (h.patient_name, h.patient_id, h.birth_date, h.study_date, h.accession, h.study_uid,
                                     h.description))
    for ident in ("Doe", "Jane", "PID-123", "1960", "2025", "ACC-9", "1.2.826.0.1.3680043.8.498.1001", "XR CHEST PA"):
        assert ident not in text
    assert h.patient_name.startswith("ANON-") and h.study_uid.startswith("2.25.") and h.deidentified
    again = load_results(results, deidentified=True).studies[0]
    assert deidentify(StudySources(again).header(), again.key) == h  # stable
    assert b.studies[0].slug.startswith("study-") and "1001" not in b.studies[0].slug
    monkeypatch.setenv(ENV_PSEUDONYM_KEY, "another-site-secret-16")
    assert deidentify(StudySources(b.studies[0]).header(), b.studies[0].key).patient_id != h.patient_id  # keyed


@pytest.mark.parametrize("key", [None, "", "short", "cxrtriage-pseudonym-v1"])
def test_deidentify_refuses_a_missing_short_or_published_key(key: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Row 10: the key that used to be built in is public; its pseudonyms of a 6-digit patient ID are reversed by
    trying the 10^6 candidates. Without a key of the site's own, de-identification is refused, saying how to set one."""
    if key is None:
        monkeypatch.delenv(ENV_PSEUDONYM_KEY, raising=False)
    else:
        monkeypatch.setenv(ENV_PSEUDONYM_KEY, key)
    with pytest.raises(ConfigError, match="CXRTRIAGE_PSEUDONYM_KEY.*openssl rand"):
        pseudonym_key()
    with pytest.raises(ConfigError, match="CXRTRIAGE_PSEUDONYM_KEY"):
        deidentify(PatientHeader(patient_id="004711"), "1.2.3")


def test_pseudonym_and_slug_helpers() -> None:
    assert pseudonym("x", key=b"k") == pseudonym("x", key=b"k") != pseudonym("y", key=b"k")
    assert study_slug("1.2.3", deidentified=False) == "1.2.3"
    s = study_slug("/data/Doe John/case 1", deidentified=False)
    assert "/" not in s and " " not in s and s.startswith("case_1-")


def test_relative_paths_resolve_against_run_cwd_and_scored_reasons_become_notes(results: Path, tmp_path: Path) -> None:
    rows = [json.loads(line) for line in (results / "results.jsonl").read_text().splitlines()]
    base = results.parent
    for r in rows:
        r["path"] = str(Path(r["path"]).relative_to(base))
    rows[0]["reason"] = "CR CHEST PA; PixelSpacing '0.000\\\\0.000' treated as unknown"
    d = tmp_path / "rel"
    d.mkdir()
    (d / "results.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    run = json.loads((results / "run.json").read_text())
    run["cwd"] = str(base)
    (d / "run.json").write_text(json.dumps(run))
    img = next(s for s in load_results(d).studies if s.key.endswith(".1001")).images[0]
    assert img.path == base / "inputs" / "a" / "pa.dcm" and img.path.is_file()
    assert img.reason == "" and img.notes[:2] == ("CR CHEST PA", "PixelSpacing '0.000\\\\0.000' treated as unknown")
    run["cwd"] = str(tmp_path / "elsewhere")
    (d / "run.json").write_text(json.dumps(run))
    again = next(s for s in load_results(d).studies if s.key.endswith(".1001")).images[0]
    assert not again.path.is_file()  # honest: not found, never guessed
