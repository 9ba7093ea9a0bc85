"""Profiles of results rows, slices (all, period, subgroups) and alert levels, on rows built in code."""

from __future__ import annotations

import numpy as np
import pytest

from cxrtriage.monitor.drift import Reference, level_of, slice_drift, slices
from cxrtriage.monitor.profile import model_scores, profile_of, quality_kind, reason_kind
from cxrtriage.results import ImageRecord, Priority, Status


def _rows(n: int, *, seed: int, mean: float, month: str = "2024-01", maker: str = "A",
          priority: Priority = Priority.ROUTINE) -> list[ImageRecord]:
    rng = np.random.default_rng(seed)
    return [ImageRecord(f"{maker}{seed}-{i}.dcm", Status.SCORED, scores={"x": float(np.clip(rng.normal(mean, 0.1), 0, 1))},
                        priority=priority, quality="ok", study_month=month, manufacturer=maker, input_kind="dicom",
                        model_sha256="s" * 64)
            for i in range(n)]


def test_reason_and_quality_kinds() -> None:
    assert reason_kind("Modality 'MR' not accepted (accepted: CR, DX)") == "Modality 'MR' not accepted"
    assert reason_kind("/data/a b/x.dcm: pixel data truncated: the element ...", "/data/a b/x.dcm") == \
        "pixel data truncated"
    assert reason_kind("/data/x.dcm: the decoder crashed its worker process") == "the decoder crashed its worker process"
    assert reason_kind(None) == "no reason recorded"
    assert quality_kind("image too small: short side 100 px < 224 px; almost no dynamic range: ...") == "image too small"
    assert quality_kind("ok") == "ok"


def test_site_scores_are_not_what_is_compared() -> None:
    r = ImageRecord("a", Status.SCORED, scores={"x": 0.9}, model_scores={"x": 0.2})
    assert model_scores(r) == {"x": 0.2}
    assert model_scores(r.replace(model_scores={})) == {"x": 0.9}


def test_profile_counts_every_metric() -> None:
    rows = _rows(3, seed=0, mean=0.5) + [
        ImageRecord("e.dcm", Status.EXCLUDED, reason="Modality 'CT' not accepted (accepted: CR, DX)"),
        ImageRecord("f.png", Status.FAILED, reason="f.png: not a recognised image file"),
        ImageRecord("q.dcm", Status.SCORED, scores={"x": 0.1}, priority=Priority.NOT_ASSESSED,
                    quality="image too small: short side 90 px < 224 px", age_band="40-59"),
    ]
    p = profile_of(rows, ["x"], name="t")
    assert (p.rows, p.scored, p.scores["x"].n) == (6, 4, 4)
    assert p.categories("status") == {"scored": 4, "excluded": 1, "failed": 1}
    assert p.categories("excluded") == {"excluded: Modality 'CT' not accepted": 1,
                                        "failed: not a recognised image file": 1}
    assert p.categories("priority") == {"routine": 3, "not_assessed": 1}
    assert p.categories("quality") == {"ok": 3, "image too small": 1}
    assert p.categories("age_band") == {"40-59": 1} and p.categories("manufacturer") == {"A": 3}


def test_levels() -> None:
    assert level_of(0.3, 0.01) == "alert" and level_of(0.3, 0.02) == "warn" and level_of(0.3, 0.06) == "ok"
    assert level_of(0.12, 1e-9) == "warn" and level_of(0.05, 1e-9) == "ok"


def test_slices_by_period_and_subgroup_and_what_they_flag() -> None:
    reference = profile_of(_rows(300, seed=1, mean=0.3), ["x"], name="ref", kind="results")
    current = (_rows(100, seed=2, mean=0.3, month="2024-01") + _rows(100, seed=3, mean=0.3, month="2024-02")
               + _rows(100, seed=4, mean=0.6, month="2024-03", maker="B", priority=Priority.URGENT)
               + _rows(10, seed=5, mean=0.9, month="2024-04", maker="C"))
    parts = slices(current)
    names = [(d, v) for d, v, _, _ in parts]
    assert names[0] == ("all", "all")
    assert [v for d, v in names if d == "month"] == ["2024-01", "2024-02", "2024-03", "2024-04"]
    assert [v for d, v in names if d == "manufacturer"] == ["A", "B", "C"]
    assert "input_kind" not in {d for d, _ in names}  # one value covering every row: adds nothing to 'all'
    drift = {(d, v): slice_drift(d, v, rows, ["x"], reference, composition=comp) for d, v, rows, comp in parts}
    assert drift[("month", "2024-01")].level == "ok" and drift[("manufacturer", "A")].level == "ok"
    shifted = drift[("month", "2024-03")]
    assert shifted.level == "alert" and shifted.metric("score:x").level == "alert"
    assert shifted.metric("priority").level == "alert"  # all urgent against all routine
    assert drift[("manufacturer", "B")].level == "alert"
    few = drift[("manufacturer", "C")]
    assert few.metric("score:x").level == "too few" and few.level == "too few"  # 10 rows: never judged
    assert drift[("all", "all")].metric("score:x").level in ("warn", "alert")
    # the reference knows no ages: no reference for age_band; a results reference knows manufacturers
    assert drift[("all", "all")].metric("manufacturer").level == "alert"


def test_quarters_and_years() -> None:
    rows = _rows(5, seed=0, mean=0.5, month="2024-02") + _rows(5, seed=1, mean=0.5, month="2024-11")
    assert [v for d, v, _, _ in slices(rows, period="quarter") if d == "quarter"] == ["2024-Q1", "2024-Q4"]
    assert [v for d, v, _, _ in slices(rows, period="year") if d == "year"] == ["2024"]
    undated = [r.replace(study_month=None) for r in rows]
    assert all(d != "month" for d, _, _, _ in slices(undated))


@pytest.mark.parametrize("seed", range(5))
def test_no_alert_between_two_samples_of_one_distribution(seed: int) -> None:
    reference = profile_of(_rows(200, seed=100 + seed, mean=0.4), ["x"], name="ref", kind="results")
    drift = slice_drift("all", "all", _rows(200, seed=200 + seed, mean=0.4), ["x"], reference, composition=True)
    assert drift.level in ("ok", "warn") and drift.metric("score:x").level != "alert"


def test_quality_failures_and_exclusion_reasons_that_change_are_flagged() -> None:
    def site(n_small: int, n_ct: int, n_broken: int, seed: int) -> list[ImageRecord]:
        rows = _rows(200 - n_small, seed=seed, mean=0.4)
        rows += [r.replace(quality="image too small: short side 120 px < 224 px", priority=Priority.NOT_ASSESSED)
                 for r in _rows(n_small, seed=seed + 1, mean=0.4)]
        rows += [ImageRecord(f"ct{seed}-{i}.dcm", Status.EXCLUDED, reason="Modality 'CT' not accepted (accepted: CR, DX)")
                 for i in range(n_ct)]
        rows += [ImageRecord(f"b{seed}-{i}.dcm", Status.FAILED, reason=f"b{seed}-{i}.dcm: pixel data truncated: ...")
                 for i in range(n_broken)]
        return rows

    reference = profile_of(site(4, 40, 2, seed=1), ["x"], name="ref", kind="results")
    same = slice_drift("all", "all", site(5, 38, 3, seed=3), ["x"], reference, composition=True)
    assert {m.name: m.level for m in same.metrics if m.name in ("quality", "excluded", "status")} == \
        {"quality": "ok", "excluded": "ok", "status": "ok"}
    # a new detector sends small images, and the CT exclusions give way to truncated files
    changed = slice_drift("all", "all", site(60, 5, 40, seed=5), ["x"], reference, composition=True)
    assert changed.metric("quality").level == "alert"  # type: ignore[union-attr]
    assert changed.metric("priority").level == "alert"  # type: ignore[union-attr]  # not_assessed
    excluded = changed.metric("excluded")
    assert excluded is not None and excluded.level == "alert"
    assert excluded.current is not None and excluded.current["failed: pixel data truncated"] > 0.8


def test_population_slices_are_compared_with_their_own_validation_population() -> None:
    # a model reference: the whole validation split mixes adults (low scores) and children (high scores)
    adults = profile_of(_rows(300, seed=10, mean=0.2), ["x"], name="adult", kind="model")
    children = profile_of(_rows(300, seed=11, mean=0.7), ["x"], name="pediatric", kind="model")
    whole = profile_of(_rows(300, seed=10, mean=0.2) + _rows(300, seed=11, mean=0.7), ["x"], name="all", kind="model")
    reference = Reference(whole, populations={"adult": adults, "pediatric": children})
    current = ([r.replace(population="adult") for r in _rows(100, seed=12, mean=0.2)]
               + [r.replace(population="pediatric") for r in _rows(100, seed=13, mean=0.7)]
               + [r.replace(population="unknown") for r in _rows(100, seed=14, mean=0.45)])
    parts = {(d, v): rows for d, v, rows, _ in slices(current)}
    assert {v for d, v in parts if d == "population"} == {"adult", "pediatric", "unknown"}
    kids = slice_drift("population", "pediatric", parts[("population", "pediatric")], ["x"], reference,
                       composition=False)
    assert "pediatric population" in kids.against and kids.metric("score:x").level == "ok"
    grown = slice_drift("population", "adult", [r.replace(scores={"x": min(1.0, r.scores["x"] + 0.3)})
                                                for r in parts[("population", "adult")]], ["x"], reference,
                        composition=False)
    assert "adult population" in grown.against and grown.metric("score:x").level == "alert"
    unknown = slice_drift("population", "unknown", parts[("population", "unknown")], ["x"], reference,
                          composition=False)
    assert unknown.against == "the whole reference"
