"""`percentiles` gives np.percentile's numbers bit for bit, on the tails it selects and on every fallback."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from cxrtriage.preprocess.stats import MIN_SIZE, percentiles

Q = (0.5, 99.5)


def _ref(a: np.ndarray, q: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(float(v) for v in np.percentile(a, q))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16, np.int16, np.uint8, np.int32])
@pytest.mark.parametrize("shape", [(224, 211), (245, 231), (64, 65), (1000,), (97, 311)])
def test_same_as_numpy_bit_for_bit(dtype: type, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(abs(hash((np.dtype(dtype).name, shape))) % 2**32)
    for trial in range(8):
        if np.dtype(dtype).kind == "f":
            a = rng.normal(1000.0, 300.0, shape).astype(dtype)
        else:
            info = np.iinfo(dtype)
            a = rng.integers(max(info.min, -3000), min(info.max, 4096), shape, endpoint=True).astype(dtype)
        if trial % 2:  # a radiograph's shape: a background block of one value and a bright collimator edge
            a.ravel()[: a.size // 5] = a.ravel()[0]
            a.ravel()[-a.size // 7 :] = a.max()
        for q in (Q, (0.0, 100.0), (1.0, 99.0), (2.0, 98.0), (0.5,), (99.5,), (0.1, 0.2, 99.9)):
            assert percentiles(a, q) == _ref(a, q), (dtype, shape, trial, q)


def test_unlucky_samples_and_ties_still_exact() -> None:
    # every 16th pixel (the sample) is the largest value: the guessed low threshold keeps too few pixels at first
    a = np.arange(50_000, dtype=np.float32)
    a[::16] = 1e9
    assert percentiles(a, Q) == _ref(a, Q)
    b = np.zeros(50_000, np.float32)  # all ties
    assert percentiles(b, Q) == _ref(b, Q)
    c = np.where(np.arange(50_000) % 2 == 0, 3.0, 7.0).astype(np.float32)  # two values
    assert percentiles(c, Q) == _ref(c, Q)


def test_fallbacks_nan_small_and_middle_percentiles() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((300, 300)).astype(np.float32)
    a[5, 5] = np.nan
    assert np.isnan(percentiles(a, Q)).all()  # as np.percentile: NaN in, NaN out
    for lows in (0, 300, 900):  # +inf at the top; then -inf too, fewer and more than the 0.5 % tail
        inf = rng.random((300, 300)).astype(np.float32)
        inf.ravel()[:100] = np.inf
        inf.ravel()[100 : 100 + lows] = -np.inf
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = percentiles(inf, Q)
        assert not [w for w in caught if w.filename.endswith("stats.py")]  # none of ours (+inf meeting -inf in a sum)
        with np.errstate(invalid="ignore"):  # numpy's own warning for -inf - -inf
            want = _ref(inf, Q)
        np.testing.assert_array_equal(got, want)  # NaN where np.percentile gives NaN
    small = rng.random(MIN_SIZE - 1)
    assert percentiles(small, Q) == _ref(small, Q)
    big = rng.random(100_000)
    for q in ((25.0, 50.0, 75.0), (0.5, 50.0), (50.0, 99.5), (0.5, 12.0)):
        assert percentiles(big, q) == _ref(big, q), q
