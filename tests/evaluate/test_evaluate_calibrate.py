"""Site calibration fitting: Platt and isotonic maps, thresholds that reach the target, and small-sample warnings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from cxrtriage.evaluate.calibrate import fit_isotonic, fit_label, fit_platt, fit_site
from cxrtriage.evaluate.metrics import stats_at
from cxrtriage.triage import apply_site, load_site, write_site


def scores_and_truth(n: int, prevalence: float, seed: int, shift: float = 1.2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(float)
    z = rng.normal(-1.0 + shift * y, 1.0)
    return np.round(1 / (1 + np.exp(-z)), 4), y


def test_isotonic_matches_scikit_learn() -> None:
    p, y = scores_and_truth(400, 0.3, 0)
    xs, ys = fit_isotonic(p, y)
    ref = IsotonicRegression(out_of_bounds="clip").fit(p, y)
    grid = np.linspace(-0.1, 1.1, 601)
    np.testing.assert_allclose(np.interp(grid, xs, ys), ref.predict(grid), atol=1e-12)


def test_platt_is_the_smoothed_logistic_fit() -> None:
    p, y = scores_and_truth(2000, 0.3, 1)
    a, b = fit_platt(p, y)
    z = np.log(p / (1 - p))
    # Gradient of the log-loss against Platt's smoothed targets is zero at the solution...
    n_pos, n_neg = y.sum(), y.size - y.sum()
    t = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    s = 1 / (1 + np.exp(-(a * z + b)))
    assert np.abs([np.sum((s - t) * z), np.sum(s - t)]).max() < 1e-6
    # ...which is an unpenalised logistic regression up to the smoothing (tiny on 2000 cases).
    ref = LogisticRegression(C=1e12, max_iter=1000).fit(z[:, None], y)
    assert a == pytest.approx(ref.coef_[0, 0], rel=0.02)
    assert b == pytest.approx(ref.intercept_[0], abs=0.03)


def test_platt_stays_finite_on_separable_data() -> None:
    a, b = fit_platt([0.1, 0.2, 0.3, 0.7, 0.8, 0.9], [0, 0, 0, 1, 1, 1])
    assert np.isfinite([a, b]).all() and a > 0


@pytest.mark.parametrize("method", ["platt", "isotonic"])
@pytest.mark.parametrize("target", [0.9, 0.95, 0.99])
def test_calibrated_thresholds_reach_target_sensitivity(tmp_path: Path, method: str, target: float) -> None:
    p1, y1 = scores_and_truth(600, 0.3, 2)
    p2, y2 = scores_and_truth(600, 0.15, 3, shift=2.0)
    site, fits = fit_site({"effusion": p1, "pneumonia": p2}, {"effusion": y1, "pneumonia": y2},
                          model_name="m", model_version="1", model_sha256="AB" * 32, method=method, target_sensitivity=target)
    assert set(site.labels) == {"effusion", "pneumonia"} and site.model_sha256 == "ab" * 32
    back = load_site(write_site(tmp_path / "site.toml", site))  # through the file, as predict --site would
    for lab, p, y in (("effusion", p1, y1), ("pneumonia", p2, y2)):
        cal = back.labels[lab]
        site_scores = np.array([apply_site({lab: float(v)}, back)[lab] for v in p])
        ro = stats_at(y, site_scores, cal.rule_out)
        assert ro.sensitivity >= target
        assert ro.sensitivity == pytest.approx(cal.stats["rule_out_sensitivity"])
        # rule_out is the most specific threshold that reaches the target (the next site score up misses it), unless
        # that lies above balanced: then it is balanced. It sits between two cases' scores, so rounding a score
        # cannot move that case across it.
        assert not np.any(site_scores == cal.rule_out)
        ba = stats_at(y, site_scores, cal.balanced)
        assert cal.rule_out <= cal.balanced and ro.sensitivity >= ba.sensitivity
        boundary = site_scores[site_scores >= cal.rule_out].min()
        higher = np.unique(site_scores[site_scores > boundary])
        if higher.size and cal.rule_out < cal.balanced:
            assert stats_at(y, site_scores, higher[0]).sensitivity < target
        j = ba.sensitivity + ba.specificity
        others = (stats_at(y, site_scores, t) for t in np.unique(site_scores))
        assert all(j >= st.sensitivity + st.specificity - 1e-12 for st in others)
        assert np.all(np.diff(cal.apply(np.linspace(0, 1, 201))) >= 0)


def test_rule_out_is_never_above_balanced_when_balanced_already_reaches_the_target() -> None:
    """The shipped pneumonia case: Youden's point reaches 95 % sensitivity, and the highest threshold that still does
    lies above it. Rule-out must then be the balanced point, not that higher, less sensitive threshold."""
    # 20 positives: 19 well above the negatives, one below them; Youden's point keeps all 20 (sensitivity 1.0, at the
    # cost of 3 of 80 negatives), the highest threshold with >= 95 % keeps 19 (0.95) and loses the low positive.
    pos = np.r_[np.linspace(0.80, 0.98, 19), 0.30]
    neg = np.r_[np.linspace(0.02, 0.25, 77), np.linspace(0.31, 0.39, 3)]
    p, y = np.r_[pos, neg], np.r_[np.ones(20), np.zeros(80)]
    from cxrtriage.evaluate.metrics import rule_out_threshold, threshold_for_sensitivity, youden_threshold

    youden = youden_threshold(y, p)
    assert threshold_for_sensitivity(y, p, 0.95) > youden  # the old rule: rule-out above balanced
    assert rule_out_threshold(y, p, 0.95, balanced=youden) == youden
    assert rule_out_threshold(y, p, 0.999, balanced=youden) == youden  # 1.0 needs the low positive: Youden has it
    assert rule_out_threshold(y, p, 0.95, balanced=0.9) == threshold_for_sensitivity(y, p, 0.95)  # no cap needed
    for method in ("platt", "isotonic"):
        cal = fit_label("pneumonia", p, y, method=method, target_sensitivity=0.95).calibration
        assert cal is not None
        site_scores = cal.apply(p)
        ro, ba = stats_at(y, site_scores, cal.rule_out), stats_at(y, site_scores, cal.balanced)
        assert cal.rule_out <= cal.balanced, method
        assert ro.sensitivity >= ba.sensitivity and ro.sensitivity >= 0.95, method
        assert cal.stats["rule_out_sensitivity"] == pytest.approx(ro.sensitivity)


def test_small_local_set_warns_with_reasons() -> None:
    p, y = scores_and_truth(200, 0.06, 4, shift=2.0)
    fit = fit_label("pneumothorax", p, y, target_sensitivity=0.95)
    assert fit.calibration is not None
    text = " ".join(fit.warnings)
    n_pos = int(y.sum())
    assert n_pos < 20
    assert f"only {n_pos} positives" in text and "cannot be checked" in text
    assert "95% CI on sensitivity" in text and "positives are needed for ±0.10" in text


def test_large_local_set_does_not_warn() -> None:
    p, y = scores_and_truth(3000, 0.3, 5, shift=2.5)
    assert fit_label("effusion", p, y, target_sensitivity=0.9).warnings == ()


def test_labels_that_cannot_be_calibrated_are_skipped_with_a_reason() -> None:
    p, y = scores_and_truth(300, 0.3, 6)
    inverted = fit_label("nodule", 1 - p, y)
    assert inverted.calibration is None and "do not rise with the local labels" in inverted.warnings[0]
    one_class = fit_label("hernia", p, np.zeros_like(y))
    assert one_class.calibration is None and "0 positives" in one_class.warnings[0]
    with pytest.raises(ValueError, match="method must be one of"):
        fit_label("x", p, y, method="beta")


def test_wilson_interval_and_sample_size() -> None:
    from cxrtriage.evaluate.metrics import positives_for_precision, wilson_interval

    lo, hi = wilson_interval(19, 20)  # textbook value: 0.764-0.991
    assert (round(lo, 3), round(hi, 3)) == (0.764, 0.991)
    assert wilson_interval(0, 0) != wilson_interval(0, 0)  # NaN pair
    n = positives_for_precision(0.95, 0.1)
    lo, hi = wilson_interval(round(0.95 * n), n)
    assert (hi - lo) / 2 <= 0.1
    lo, hi = wilson_interval(round(0.95 * (n - 1)), n - 1)
    assert (hi - lo) / 2 > 0.1
