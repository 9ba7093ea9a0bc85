"""evaluate_results against scikit-learn and hand counts: AUROC/AUPRC, operating points, subgroups, triage, misses."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from factories import make_tiny_classifier
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

from cxrtriage.evaluate.data import match_labels, read_labels
from cxrtriage.evaluate.runner import _option_population, evaluate_results, evaluation_to_dict, label_metrics_dict
from cxrtriage.model.manifest import ModelManifest, load_manifest
from cxrtriage.results import ImageRecord, Status, from_row
from cxrtriage.triage import load_policy, triage_record

LABELS = ("abnormal", "pneumonia", "effusion")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> ModelManifest:
    return load_manifest(make_tiny_classifier(tmp_path_factory.mktemp("m"), labels=LABELS))


def synthetic(n: int = 240, seed: int = 3) -> tuple[list[dict[str, Any]], str, dict[str, np.ndarray], list[str]]:
    """Results rows (with a few excluded ones) and the LABELS.csv text; scores rise with truth, with ties."""
    rng = np.random.default_rng(seed)
    truth = {lab: (rng.random(n) < prev).astype(int) for lab, prev in zip(LABELS, (0.5, 0.25, 0.3), strict=True)}
    sex = rng.choice(["F", "M"], n).tolist()
    rows = []
    for i in range(n):
        row: dict[str, Any] = {"path": f"/scans/p{i:03d}/img.png", "status": "scored", "reason": "", "study_key": f"p{i:03d}"}
        for lab in LABELS:
            s = np.clip(rng.normal(0.3 + 0.35 * truth[lab][i], 0.18), 0, 1)
            row[f"score_{lab}"] = f"{round(float(s), 2):.6g}"  # rounded: ties, as in real results.csv
        rows.append(row)
    for i in range(0, n, 40):  # excluded images keep their labels row but have no scores
        rows[i] |= {"status": "excluded", "reason": "lateral view"} | {f"score_{lab}": "" for lab in LABELS}
    lines = ["image,abnormal,pneumonia,effusion,sex"]
    lines += [f"p{i:03d}/img.png,{truth['abnormal'][i]},{truth['pneumonia'][i]},{truth['effusion'][i]},{sex[i]}"
              for i in range(n)]
    return rows, "\n".join(lines) + "\n", truth, sex


def test_matches_scikit_learn(tmp_path: Path, manifest: ModelManifest) -> None:
    rows, labels_text, truth, sex = synthetic()
    records = [from_row(r) for r in rows]
    (tmp_path / "labels.csv").write_text(labels_text)
    table = read_labels(tmp_path / "labels.csv", manifest.labels)
    match = match_labels(records, table)
    policy = load_policy()
    ev = evaluate_results(records, table, match, manifest=manifest, policy=policy, by=("sex",), n_boot=200)
    scored = np.array([r["status"] == "scored" for r in rows])
    assert ev.n_matched == len(rows) and ev.n_matched_scored == scored.sum()
    assert len(ev.not_scored) == (~scored).sum()
    for lab in LABELS:
        y = truth[lab][scored]
        s = np.array([float(r[f"score_{lab}"]) for r in rows if r["status"] == "scored"])
        m = ev.labels[lab]
        assert (m.n, m.n_positive) == (y.size, y.sum())
        assert m.auroc == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert m.auprc == pytest.approx(average_precision_score(y, s), abs=1e-12)
        assert m.auroc_ci[0] < m.auroc < m.auroc_ci[1]
        for op in m.operating_points:
            tn, fp, fn, tp = confusion_matrix(y, s >= op.threshold).ravel()
            assert (op.stats.tp, op.stats.fp, op.stats.tn, op.stats.fn) == (tp, fp, tn, fn)
            assert op.sensitivity_ci[0] <= op.stats.sensitivity <= op.sensitivity_ci[1]
        assert [(op.kind, op.source, op.threshold) for op in m.operating_points] == [
            ("rule_out", "model", 0.2), ("balanced", "model", 0.5)]
        for v in ("F", "M"):
            sel = np.array(sex)[scored] == v
            assert ev.subgroups["sex"][v][lab].auroc == pytest.approx(roc_auc_score(y[sel], s[sel]), abs=1e-12)
        # worst misses: the lowest-scored positives really are the lowest
        low = [x.score for x in ev.misses[lab] if x.kind == "lowest-scored positive"]
        assert low == sorted(s[y == 1])[:5]
        high = [x.score for x in ev.misses[lab] if x.kind == "highest-scored negative"]
        assert high == sorted(s[y == 0], reverse=True)[:5]
        fn_total = sum(c.n_missed for c in ev.clusters[lab])
        assert fn_total == int(((s < 0.2) & (y == 1)).sum())
    # JSON is strict JSON (no NaN) and carries the same figures
    d = json.loads(json.dumps(evaluation_to_dict(ev), allow_nan=False))
    assert d["labels_metrics"]["effusion"]["auroc"] == ev.labels["effusion"].auroc
    assert d["matching"]["matched_not_scored"][0]["reason"] == "lateral view"


def test_priority_confusion_counts(tmp_path: Path, manifest: ModelManifest) -> None:
    rows, labels_text, truth, _ = synthetic(n=120, seed=5)
    policy = load_policy()
    records = [triage_record(from_row(r), manifest=manifest, policy=policy) for r in rows]
    (tmp_path / "labels.csv").write_text(labels_text)
    table = read_labels(tmp_path / "labels.csv", manifest.labels)
    ev = evaluate_results(records, table, match_labels(records, table), manifest=manifest, policy=policy, n_boot=0)
    pc = ev.priority
    assert pc is not None and pc.source.startswith("results")
    total = sum(sum(r.values()) for r in pc.counts.values())
    assert total == len(rows)
    assert sum(pc.counts["not_assessed"].values()) == 3
    # default policy: pneumonia and effusion are urgent findings; abnormal only is "other finding"
    urgent_truth = [(truth["pneumonia"][i] or truth["effusion"][i]) for i in range(len(rows))]
    assert pc.urgent_truth == sum(urgent_truth)
    called_normal = sum(1 for i, r in enumerate(records) if r.priority == "normal"
                        and (urgent_truth[i] or truth["abnormal"][i]))
    assert pc.positives_called_normal == called_normal
    # Recomputing with the policy gives the same table as the priorities the rows carry.
    ev2 = evaluate_results(records, table, match_labels(records, table), manifest=manifest, policy=policy, n_boot=0,
                           recompute_priority=True)
    assert ev2.priority is not None and ev2.priority.counts == pc.counts


def test_unknown_subgroup_column(tmp_path: Path, manifest: ModelManifest) -> None:
    from cxrtriage.errors import ConfigError

    rows, labels_text, _, _ = synthetic(n=20)
    records = [from_row(r) for r in rows]
    (tmp_path / "labels.csv").write_text(labels_text)
    table = read_labels(tmp_path / "labels.csv", manifest.labels)
    with pytest.raises(ConfigError, match=r"--by age: no such subgroup column .* \['sex'\]"):
        evaluate_results(records, table, match_labels(records, table), manifest=manifest, policy=load_policy(), by=("age",))


def test_numeric_subgroups_are_binned(tmp_path: Path, manifest: ModelManifest) -> None:
    rows, labels_text, _, _ = synthetic(n=80)
    records = [from_row(r) for r in rows]
    lines = labels_text.splitlines()
    lines = [lines[0] + ",age"] + [line + f",{20 + i}" for i, line in enumerate(lines[1:])]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    table = read_labels(tmp_path / "labels.csv", manifest.labels)
    ev = evaluate_results(records, table, match_labels(records, table), manifest=manifest, policy=load_policy(), by=("age",),
                          n_boot=0)
    groups = list(ev.subgroups["age"])
    assert groups == ["[20, 39.75)", "[39.75, 59.5)", "[59.5, 79.25)", "[79.25, 99]"]
    assert sum(ev.subgroups["age"][g]["effusion"].n for g in groups) == ev.labels["effusion"].n
    assert all(math.isnan(ev.subgroups["age"][g]["effusion"].auroc_ci[0]) for g in groups)  # n_boot=0: no CI


def test_subgroup_values_sort_numerically() -> None:
    from cxrtriage.evaluate.runner import MISSING_GROUP, _group_key

    values = ["[10, 20)", MISSING_GROUP, "[5, 10)", "PA", "[20, 30]", "AP"]
    assert sorted(values, key=_group_key) == ["[5, 10)", "[10, 20)", "[20, 30]", "AP", "PA", MISSING_GROUP]


def test_deciding_a_row_again_keeps_where_its_population_came_from() -> None:
    """evaluate re-decides priorities (with --policy/--site): a population given with --population is passed on as
    the option again; an age or an image estimate is decided again from the row's own patient_age/probability."""
    rec = ImageRecord("a.png", Status.SCORED, population="pediatric")
    assert _option_population(rec) == "pediatric"  # a row written before population_source existed
    assert _option_population(rec.replace(population_source="option")) == "pediatric"
    assert _option_population(rec.replace(population_source="image-estimate", population_probability=0.99)) is None
    assert _option_population(rec.replace(population="unknown", population_source="none")) is None
    assert _option_population(rec.replace(population="adult", population_source="dicom-age", patient_age=40.0)) is None


def test_findings_the_model_has_no_label_for_count_in_the_triage_truth(tmp_path: Path, manifest: ModelManifest) -> None:
    """A pneumothorax column counts as critical truth, edema as urgent, emphysema as "other finding", for a model
    with none of these labels; no_finding (ignored by the policy) counts as nothing. Before: 0 of 0 critical, and the
    edema-only and emphysema-only images were negatives."""
    policy = load_policy()
    rows = [  # image, pneumonia, effusion, Pneumothorax, edema, emphysema, no_finding
        ("p0.png", 0, 0, 1, 0, 0, 0),  # critical
        ("p1.png", 1, 0, 1, 0, 0, 0),  # critical (and urgent)
        ("p2.png", 0, 0, 0, 1, 0, 0),  # urgent: edema only
        ("p3.png", 0, 0, 0, 0, 1, 0),  # other finding: emphysema only
        ("p4.png", 0, 1, 0, 0, 0, 0),  # urgent: effusion, a model label
        ("p5.png", 0, 0, 0, 0, 0, 1),  # negative
        ("p6.png", 0, 0, "", 0, 0, 1),  # negative (pneumothorax unknown, all else 0)
        ("p7.png", 0, 0, 0, 0, 0, 1),  # negative
    ]
    lines = ["image,pneumonia,effusion,Pneumothorax,edema,emphysema,no_finding"]
    lines += [",".join(str(v) for v in r) for r in rows]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    # every score low: every image is called normal by the tiny model's thresholds
    records = [triage_record(from_row({"path": f"/scans/{r[0]}", "status": "scored", "study_key": r[0],
                                       **{f"score_{lab}": "0.01" for lab in LABELS}}), manifest=manifest, policy=policy)
               for r in rows]
    assert {r.priority for r in records} == {"normal"}
    table = read_labels(tmp_path / "labels.csv", manifest.labels)
    assert table.finding_names(policy) == ["pneumonia", "effusion", "Pneumothorax", "edema", "emphysema"]
    ev = evaluate_results(records, table, match_labels(records, table), manifest=manifest, policy=policy, n_boot=0)
    pc = ev.priority
    assert pc is not None
    assert pc.counts["normal"] == {"critical finding": 2, "urgent finding": 2, "other finding": 1, "negative": 3,
                                   "unlabelled": 0}
    assert (pc.critical_truth, pc.critical_truth_flagged_critical) == (2, 0)
    assert (pc.urgent_truth, pc.positives_called_normal, pc.positives_assessed) == (2, 5, 5)
    assert (pc.normal_total, pc.normal_negative) == (8, 3)
    tiers = {t.tier: t for t in ev.study_tiers}
    assert (tiers["critical"].n_pos, tiers["critical"].n_neg, tiers["critical"].true_pos) == (2, 6, 0)
    assert (tiers["urgent"].n_pos, tiers["urgent"].n_neg) == (4, 4)  # critical findings count as urgent too
    assert (tiers["normal"].n_pos, tiers["normal"].n_neg, tiers["normal"].sensitivity) == (5, 3, 0.0)
    (note,) = [w for w in ev.warnings if w.startswith("0/1 columns")]
    assert "['Pneumothorax', 'edema', 'emphysema']" in note and "no_finding" not in note
    assert "Pneumothorax: critical finding; edema: urgent finding; emphysema: other finding" in note
    assert set(ev.labels) == {"pneumonia", "effusion"}  # no metrics for the columns the model has no label for


def test_no_bootstrap_interval_from_too_few_positives_or_negatives() -> None:
    from cxrtriage.evaluate.metrics import MIN_PER_CLASS_FOR_INTERVAL
    from cxrtriage.evaluate.runner import label_metrics

    assert MIN_PER_CLASS_FOR_INTERVAL == 20
    rng = np.random.default_rng(0)
    s = rng.uniform(size=40)
    one = np.zeros(40)
    one[7] = 1
    m = label_metrics("pneumonia", one, s, [], n_boot=200)
    assert math.isfinite(m.auroc) and m.ci_note == "too few positives (n=1)"
    assert all(math.isnan(v) for v in (*m.auroc_ci, *m.auprc_ci))
    d = label_metrics_dict(m)
    assert d["auroc_ci95"] == [None, None] and d["ci95_note"] == "too few positives (n=1)"
    y = (np.arange(40) < 21).astype(float)  # 21 positives, 19 negatives
    assert label_metrics("x", y, s, [], n_boot=200).ci_note == "too few negatives (n=19)"
    y = (np.arange(40) < 20).astype(float)  # 20 and 20: the interval is given
    m = label_metrics("x", y, s + 0.5 * y, [], n_boot=200)
    assert m.ci_note == "" and m.auroc_ci[0] < m.auroc < m.auroc_ci[1]
    assert label_metrics_dict(m)["ci95_note"] is None
    assert label_metrics("x", one, s, [], n_boot=0).ci_note == ""  # no bootstrap asked for: nothing withheld
