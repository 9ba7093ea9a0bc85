"""scripts/segmenter_cv.py: patient folds, the per-fold splits, a tiny end-to-end cross-validation and its report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cxrtriage.errors import ConfigError
from cxrtriage.train.data import Record, fold_records, patient_folds, segmenter_records

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "segmenter_cv.py"


def _recs(n_patients: int, per_patient: int = 2) -> list[Record]:
    return [Record(path=f"p{p}_{i}.png", source="ieee_lungs", patient=f"ieee_lungs:{p}", labels={"abnormal": p % 2})
            for p in range(n_patients) for i in range(per_patient)]


def test_patient_folds_keep_patients_whole_and_balance_strata() -> None:
    recs = _recs(10)
    folds = patient_folds(recs, 3, seed=0, strat=lambda r: r.labels["abnormal"])
    assert set(folds) == {r.patient for r in recs} and set(folds.values()) == {0, 1, 2}
    sizes = [sum(f == k for f in folds.values()) for k in range(3)]
    assert max(sizes) - min(sizes) <= 1
    for first in (0, 1):  # each stratum (5 patients) is dealt out over all folds
        assert {folds[f"ieee_lungs:{p}"] for p in range(first, 10, 2)} == {0, 1, 2}
    assert folds == patient_folds(recs, 3, seed=0, strat=lambda r: r.labels["abnormal"])
    with pytest.raises(ConfigError, match="cannot fill"):
        patient_folds(_recs(2), 3)
    with pytest.raises(ConfigError, match="at least 2"):
        patient_folds(recs, 1)


def test_fold_records_hold_out_one_fold_and_carve_validation_from_the_rest() -> None:
    recs = _recs(12)
    folds = patient_folds(recs, 3, seed=0)
    for k in range(3):
        out = fold_records(recs, folds, k, val_fraction=0.25, seed=0)
        assert [r.path for r in out] == [r.path for r in recs]  # same order: one array cache for every fold
        assert {r.patient for r in out if r.split == "test"} == {p for p, f in folds.items() if f == k}
        by_patient: dict[str, set[str]] = {}
        for r in out:
            by_patient.setdefault(r.patient, set()).add(r.split)
        assert all(len(s) == 1 for s in by_patient.values())  # no patient spans two splits
        assert sum(s == {"val"} for s in by_patient.values()) == 2  # 25% of the 8 training-fold patients
    assert all(r.split == "" for r in recs)  # the caller's records are not changed


@pytest.mark.data
@pytest.mark.slow
def test_tiny_cross_validation_runs_reports_and_never_reads_test_patients(shared_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "cv"
    env = {"CXRTRIAGE_TRAIN_CACHE": str(tmp_path / "cache"), "CXRTRIAGE_TRAIN_THREADS": "1", "OMP_NUM_THREADS": "1",
           "PATH": "/usr/bin:/bin"}
    run = [sys.executable, str(SCRIPT), "run", "--data", str(shared_data), "--out", str(out), "--tiny",
           "--recipe", "base=", "--recipe", "heavy=aug=heavy,epochs=2"]
    res = subprocess.run(run, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr
    test_paths = {r.path for r in segmenter_records(shared_data, seed=0) if r.split == "test"}
    seen: dict[str, list[str]] = {}
    for name in ("base", "heavy"):
        for k in range(3):
            oof = json.loads((out / name / f"fold{k}" / "oof.json").read_text())
            assert oof["fold"] == k and oof["images"]["test"] == len(oof["per_image"]) > 0
            assert oof["config"]["aug"] == ("heavy" if name == "heavy" else "basic")
            seen.setdefault(name, []).extend(im["path"] for im in oof["per_image"])
            assert all(0.0 <= im["lungs"] <= 1.0 for im in oof["per_image"])
    assert sorted(seen["base"]) == sorted(seen["heavy"]) and len(set(seen["base"])) == len(seen["base"])
    assert not test_paths & set(seen["base"])  # out-of-fold images are train+val only
    first = (out / "base" / "fold0" / "oof.json").stat().st_mtime_ns
    again = subprocess.run(run, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0 and (out / "base" / "fold0" / "oof.json").stat().st_mtime_ns == first  # resumes
    rep = subprocess.run([sys.executable, str(SCRIPT), "report", str(out), "--baseline", "base", "--candidate", "heavy",
                          "--boot", "200"], capture_output=True, text=True, env=env, timeout=120)
    assert rep.returncode == 0, rep.stderr
    report = json.loads((out / "report_base_vs_heavy.json").read_text())
    assert report["images"] == len(seen["base"]) and report["bootstrap"]["n_boot"] == 200
    pooled = {n: report["recipes"][n]["pooled"] for n in ("base", "heavy")}
    wins = pooled["heavy"]["mean"] >= pooled["base"]["mean"] and pooled["heavy"]["p5"] >= pooled["base"]["p5"]
    assert report["decision"] == ("heavy" if wins else "base") and "decision:" in rep.stdout
    lo, hi = report["bootstrap"]["ci95"]
    assert lo <= report["bootstrap"]["diff"] <= hi
    ens = subprocess.run([sys.executable, str(SCRIPT), "ensemble", str(out), "--data", str(shared_data),
                          "--members", "base,heavy", "--name", "both"], capture_output=True, text=True, env=env,
                         timeout=600)
    assert ens.returncode == 0, ens.stderr
    for k in range(3):
        oof = json.loads((out / "both" / f"fold{k}" / "oof.json").read_text())
        base = json.loads((out / "base" / f"fold{k}" / "oof.json").read_text())
        assert [im["path"] for im in oof["per_image"]] == [im["path"] for im in base["per_image"]]
        assert oof["config"]["members"] == ["base", "heavy"] and all(0.0 <= im["lungs"] <= 1.0 for im in oof["per_image"])
    rep = subprocess.run([sys.executable, str(SCRIPT), "report", str(out), "--baseline", "base", "--candidate", "both",
                          "--boot", "50"], capture_output=True, text=True, env=env, timeout=120)
    assert rep.returncode == 0 and "decision:" in rep.stdout, rep.stderr
    bad = subprocess.run([sys.executable, str(SCRIPT), "ensemble", str(out), "--data", str(shared_data),
                          "--members", "base,nothing", "--name", "x"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode != 0 and "no finished folds" in bad.stderr


def test_recipe_spec_is_checked() -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import segmenter_cv
    finally:
        sys.path.remove(str(SCRIPT.parent))
    name, cfg = segmenter_cv.parse_recipe("B=aug=heavy,epochs=120", tiny=False, seed=0)
    assert name == "B" and cfg.aug == "heavy" and cfg.epochs == 120 and cfg.size == 256 and cfg.seed == 0
    assert segmenter_cv.parse_recipe("1.0.0=", tiny=False, seed=0)[1].aug == "basic"
    for bad in ("B", "B=wild=1", "B=seed=3", "B=aug=wild"):
        with pytest.raises(ConfigError):
            segmenter_cv.parse_recipe(bad, tiny=False, seed=0)
