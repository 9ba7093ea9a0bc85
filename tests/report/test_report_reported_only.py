"""A finding that is not validated for the patient's population is reported, never asserted: the SR gives its
probability without "Present", the SC and the HTML/PDF say "reported only", and the SR carries the priority that was
decided and why."""

from __future__ import annotations

import dataclasses
import json
from html import unescape
from pathlib import Path
from typing import Any

import highdicom as hd
import pytest
from factories import make_tiny_classifier
from report_fixtures import dciodvfy, make_results

from cxrtriage.model.manifest import load_manifest
from cxrtriage.report.batch import ReportSummary, build_reports
from cxrtriage.report.capture import GREY, RED, legend_lines
from cxrtriage.report.study import Finding, deciding_labels, load_results, resolve_findings
from cxrtriage.report.view import STUDY_MODE_NOTE, finding_role
from cxrtriage.results import ImageRecord, ModelRef, RunRecord, Status

STUDY_A = "1.2.826.0.1.3680043.8.498.1001"
DECIDING = {"adult": ["pneumothorax", "effusion"], "unknown": ["pneumothorax", "effusion", "strange_new_finding"]}


def _as_adults_in_study_mode(results: Path) -> Path:
    """The fixture's run as a study-mode run of a model with populations, every scored image an adult's."""
    run = json.loads((results / "run.json").read_text())
    run["study_operating_points"] = {"mode": "study", "deciding_labels": DECIDING}
    (results / "run.json").write_text(json.dumps(run))
    rows = [json.loads(line) for line in (results / "results.jsonl").read_text().splitlines()]
    for r in rows:
        if r["status"] == "scored":
            r["population"] = "adult"
    (results / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return results


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> ReportSummary:
    results = _as_adults_in_study_mode(make_results(tmp_path_factory.mktemp("only")))
    return build_reports(results, pdf=True, dicom=True)


def _sr(built: ReportSummary) -> hd.sr.ComprehensiveSR:
    study = next(s for s in built.studies if s.key.endswith(STUDY_A))
    return hd.sr.srread(next(p for p in study.dicom if p.stem == "sr_001"))


def _texts(items: Any, code: str) -> set[str]:
    out: set[str] = set()
    for it in items:
        if it.ValueType == "TEXT" and it.ConceptNameCodeSequence[0].CodeValue == code:
            out.add(str(it.TextValue))
        out |= _texts(it.get("ContentSequence", []), code)
    return out


def test_sr_gives_a_reported_only_finding_no_present_and_carries_the_priority(built: ReportSummary) -> None:
    sr = _sr(built)
    verdicts: dict[str, list[str]] = {}
    for g in sr.content.get_image_measurement_groups():
        if g.finding_type.value == "39607008":  # the lung-area group
            continue
        evals = [q.value.meaning for q in g.get_qualitative_evaluations() if q.name == g.finding_type]
        verdicts[g.finding_type.meaning] = evals
        probability = [m.value for m in g.get_measurements() if m.name.value == "122157"]
        assert len(probability) == 1  # every finding keeps its score
        if g.finding_type.meaning == "strange_new_finding":
            assert "reported only: not validated for adult" in g.tracking_identifier
    assert verdicts["Pneumothorax"] == ["Present"] and verdicts["Pleural effusion"] == ["Absent"]
    assert verdicts["strange_new_finding"] == []  # 0.55 is above its threshold, but it decides nothing for adults
    params = _texts(sr.ContentSequence, "111002")
    assert {"priority=urgent", "priority_reason=pneumothorax 0.81 >= 0.50",
            "reported_only=strange_new_finding"} <= params
    errors, _ = dciodvfy(next(p for s in built.studies for p in s.dicom if p.stem == "sr_001"))
    assert errors == []


def test_html_marks_the_finding_and_explains_the_thresholds(built: ReportSummary) -> None:
    study = next(s for s in built.studies if s.key.endswith(STUDY_A))
    assert study.html is not None
    html = unescape(study.html.read_text())
    assert ('<td>strange_new_finding</td><td>0.550</td><td>0.500</td><td>balanced (Youden)</td>'
            '<td class="muted">above</td><td class="muted">reported only: not validated for the adult population</td>'
            in html)
    assert '<td class="above">above</td><td>decides</td>' in html  # pneumothorax, which decided
    assert STUDY_MODE_NOTE in html


def _record(population: str | None) -> ImageRecord:
    return ImageRecord(path="x.dcm", status=Status.SCORED, scores={"a": 0.3, "b": 0.9}, population=population)


def test_deciding_labels_come_from_the_run_for_the_records_population() -> None:
    run = RunRecord(tool_version="0", model=ModelRef("m", "1", "", "", ""),
                    sections={"study_operating_points": {"mode": "study", "deciding_labels": {"adult": ["a"]}}})
    assert deciding_labels(run, "adult") == frozenset({"a"})
    assert deciding_labels(run, "pediatric") is None and deciding_labels(run, None) is None
    assert deciding_labels(RunRecord(tool_version="0", model=ModelRef("m", "1", "", "", "")), "adult") is None
    a, b = resolve_findings(_record("adult"), ("a", "b"), None, run, "balanced")
    assert (a.decides, b.decides) == (True, False) and b.reported_only and b.population == "adult"
    assert finding_role(b) == "reported only: not validated for the adult population" and finding_role(a) == "decides"
    (unknown, _) = resolve_findings(_record(None), ("a", "b"), None, run, "balanced")
    assert unknown.decides is None and finding_role(unknown) == ""


def test_the_kind_the_run_recorded_wins_when_two_operating_points_share_a_value(tmp_path: Path) -> None:
    manifest = load_manifest(make_tiny_classifier(tmp_path / "m", labels=("a", "b")))
    lt = manifest.thresholds["a"]
    value = lt.balanced.threshold
    # the rule-out point of "a" at the balanced one's value (as cardiomegaly's in the shipped model): matching the run's
    # threshold against the manifest's values cannot tell them apart, and rule-out came first
    twin = dataclasses.replace(lt, rule_out=dataclasses.replace(lt.rule_out, threshold=value))
    manifest = dataclasses.replace(manifest, thresholds={**manifest.thresholds, "a": twin})
    run = RunRecord(tool_version="0", model=ModelRef("m", "1", "", "", ""),
                    thresholds={"a": {"rule_out": value, "balanced": value, "threshold": value, "kind": "balanced"}})
    (f, _) = resolve_findings(_record(None), ("a", "b"), manifest, run, "balanced")
    assert f.threshold_kind == "balanced"
    unrecorded = RunRecord(tool_version="0", model=ModelRef("m", "1", "", "", ""),
                           thresholds={"a": {"threshold": value}})
    (g, _) = resolve_findings(_record(None), ("a", "b"), manifest, unrecorded, "balanced")
    assert g.threshold_kind == "rule_out"  # without the kind, the first match: the test can tell the two apart


def test_the_secondary_captures_legend_greys_a_reported_only_finding(built: ReportSummary) -> None:
    bundle = load_results(built.results_dir)
    img = next(i for i in bundle.images if i.record.path.endswith("pa.dcm"))
    lines = legend_lines(img, bundle, None, drawn_map=False, mask_values=[], mask_names=())
    colours = {text.split(":")[0]: colour for text, colour in lines if ":" in text}
    assert colours["pneumothorax"] == RED and colours["strange_new_finding"] == GREY
    texts = [t for t, _ in lines]
    assert "strange_new_finding: 0.55 >= 0.50  above, reported only" in texts
    assert "reported only: not validated for the adult" in texts


def test_the_findings_table_gives_the_populations_own_auroc_beside_the_pooled_figures() -> None:
    from cxrtriage.model.manifest import LabelValidation
    from cxrtriage.report.view import finding_row

    adult = LabelValidation(validated=True, auroc=0.8914, ci95=(0.8121, 0.9559), n_pos=41, n_neg=188)
    f = Finding(label="pneumonia", score=0.92, threshold=0.6, threshold_kind="balanced", sensitivity=0.965,
                specificity=0.97, decides=True, population="adult", population_validation=adult)
    row = finding_row(f)
    assert row.population_auroc == "0.891 (0.812-0.956; 41 pos / 188 neg, adult)"
    assert row.population_auroc_short == "0.891 (0.81-0.96)" and row.sensitivity == "96.5 %"
    unmeasured = LabelValidation(validated=False, note="not labelled in this population's data")
    row = finding_row(Finding(label="nodule", score=0.2, threshold=0.1, threshold_kind="balanced", decides=False,
                              population="pediatric", population_validation=unmeasured))
    assert row.population_auroc == "not measured for pediatric (not labelled in this population's data)"
    assert finding_row(Finding(label="x", score=0.2, threshold=0.1, threshold_kind="balanced")).population_auroc == ""
