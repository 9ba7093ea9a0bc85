"""The drift statistics: PSI, its p-value, KS and its p-value, distributions from samples and from quantiles."""

from __future__ import annotations

import numpy as np
import pytest

from cxrtriage.monitor.stats import (
    ScoreDistribution,
    binned,
    categorical_psi,
    chi2_sf,
    effective_n,
    ks_pvalue,
    ks_statistic,
    proportions,
    psi,
    psi_pvalue,
    score_drift,
)


def test_psi_by_hand() -> None:
    r = np.array([0.5, 0.5])
    c = np.array([0.25, 0.75])
    assert psi(r, c) == pytest.approx(0.25 * np.log(0.5) * -1 + 0.25 * np.log(1.5))
    assert psi(r, r) == 0.0
    assert proportions(np.array([0.0, 3.0])).tolist() == pytest.approx([0.5 / 4, 3.5 / 4])


@pytest.mark.parametrize("df", [1, 2, 3, 9, 10, 30])
@pytest.mark.parametrize("x", [0.01, 0.5, 2.0, 9.0, 25.0, 80.0])
def test_chi2_sf_matches_scipy(x: float, df: int) -> None:
    stats = pytest.importorskip("scipy.stats")
    assert chi2_sf(x, df) == pytest.approx(float(stats.chi2.sf(x, df)), rel=1e-9, abs=1e-14)


@pytest.mark.parametrize("n", [20, 100, 1000])
@pytest.mark.parametrize("d", [0.05, 0.1, 0.2, 0.4])
def test_ks_pvalue_close_to_scipy_asymptotic(d: float, n: int) -> None:
    stats = pytest.importorskip("scipy.stats")
    # scipy's kstwobign is Kolmogorov's limit distribution; ours adds Stephens' small-sample correction
    lam = (np.sqrt(n) + 0.12 + 0.11 / np.sqrt(n)) * d
    assert ks_pvalue(d, n) == pytest.approx(float(stats.kstwobign.sf(lam)), abs=1e-9)


def test_ks_statistic_equals_scipy_two_sample_for_samples() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a, b = rng.beta(2, 5, 300), rng.beta(2.5, 5, 200)
    assert ks_statistic(a, ScoreDistribution.of_sample(b)) == pytest.approx(stats.ks_2samp(a, b).statistic, abs=1e-12)
    ties = np.round(a, 1)  # many equal values
    assert ks_statistic(ties, ScoreDistribution.of_sample(np.round(b, 1))) == pytest.approx(
        stats.ks_2samp(ties, np.round(b, 1)).statistic, abs=1e-12)


def test_a_distribution_from_quantiles_approximates_its_sample() -> None:
    rng = np.random.default_rng(1)
    sample = rng.beta(0.5, 4, 2000)  # skewed towards 0, like the score of a rare finding
    q = np.quantile(sample, np.linspace(0, 1, 101))
    exact, approx = ScoreDistribution.of_sample(sample), ScoreDistribution.of_quantiles(q, len(sample))
    x = np.linspace(0, 1, 501)
    assert np.max(np.abs(exact.cdf(x) - approx.cdf(x))) < 0.011
    assert np.allclose(exact.edges(), approx.edges(), atol=1e-9)
    assert approx.counts(approx.edges()).sum() == pytest.approx(2000)
    cur = rng.beta(0.5, 4, 500)
    assert abs(ks_statistic(cur, exact) - ks_statistic(cur, approx)) < 0.011
    assert abs(score_drift(cur, exact)[0] - score_drift(cur, approx)[0]) < 0.02


def test_quantiles_with_runs_of_equal_values_keep_the_jump() -> None:
    q = [0.0] * 61 + list(np.linspace(0.1, 1.0, 40))  # 60 % of the scores are exactly 0
    d = ScoreDistribution.of_quantiles(q, 500)
    assert d.cdf(np.array([0.0]))[0] == pytest.approx(0.6)
    assert d.cdf(np.array([-0.01]))[0] == 0.0


def test_no_shift_is_not_significant_and_a_shift_is() -> None:
    rng = np.random.default_rng(2)
    ref = ScoreDistribution.of_sample(rng.beta(2, 5, 600))
    same = rng.beta(2, 5, 400)
    value, bins, d, p = score_drift(same, ref)
    assert bins == 10 and value < 0.1 and p > 0.01
    shifted = rng.beta(4, 5, 400)
    value, bins, d, p = score_drift(shifted, ref)
    assert value > 0.25 and d > 0.2 and p < 1e-6


def test_categorical_psi_and_its_pvalue() -> None:
    value, bins, cats = categorical_psi({"urgent": 50, "routine": 50}, {"urgent": 50, "routine": 50, "normal": 0})
    assert cats == ["normal", "routine", "urgent"] and bins == 3 and value < 0.01
    value, bins, _ = categorical_psi({"urgent": 100, "normal": 100}, {"urgent": 180, "normal": 20})
    assert value > 0.5 and psi_pvalue(value, bins, effective_n(200, 200)) < 1e-6
    assert effective_n(100, float("inf")) == 100 and effective_n(100, 100) == 50


def test_binned_edges_are_right_closed() -> None:
    assert binned(np.array([0.1, 0.2, 0.2000001, 0.9]), np.array([0.2, 0.5])).tolist() == [2, 1, 1]
