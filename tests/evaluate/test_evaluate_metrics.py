"""The bootstrap interval: seeded, and the same for the same cases in any order."""

from __future__ import annotations

import math

import numpy as np

from cxrtriage.evaluate.metrics import auprc, auroc, bootstrap_ci


def _cases(n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    y = (rng.uniform(size=n) < 0.3).astype(float)
    s = np.round(rng.normal(size=n) + y, 1)  # rounded: tied scores, some with different truths
    return y, s


def test_bootstrap_interval_does_not_depend_on_the_order_of_the_cases() -> None:
    y, s = _cases()
    perm = np.random.default_rng(7).permutation(y.size)
    for metric in (auroc, auprc):
        a = bootstrap_ci(metric, y, s, n_boot=300)
        b = bootstrap_ci(metric, y[perm], s[perm], n_boot=300)
        assert a == b
    # a NaN row (dropped) placed anywhere changes nothing either
    y2, s2 = np.append(y[perm], 1.0), np.append(s[perm], np.nan)
    assert bootstrap_ci(auroc, y2, s2, n_boot=300) == bootstrap_ci(auroc, y, s, n_boot=300)


def test_bootstrap_interval_is_seeded_and_brackets_the_estimate() -> None:
    y, s = _cases()
    lo, hi = bootstrap_ci(auroc, y, s, n_boot=300, seed=1)
    assert (lo, hi) == bootstrap_ci(auroc, y, s, n_boot=300, seed=1)
    assert (lo, hi) != bootstrap_ci(auroc, y, s, n_boot=300, seed=2)
    assert lo < auroc(y, s) < hi


def test_bootstrap_interval_of_no_cases_is_nan() -> None:
    lo, hi = bootstrap_ci(auroc, [], [], n_boot=50)
    assert math.isnan(lo) and math.isnan(hi)
