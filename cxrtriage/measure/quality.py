"""Image quality checks before triage: damaged pixel data, too small, almost no contrast, implausible or one-sided
lung masks.

Pure functions over ``Image2D`` and ``LungMask``. A failed check means "the model's scores for this
image cannot be trusted for triage": ``predict`` still writes the scores but sets the priority to
``not_assessed`` (read unaided). The limits are deliberately conservative, so that real chest
radiographs pass; each constant below says why it has its value and what it was checked on
(NIH ChestX-ray14 subset: 486 images; ieee covid lungs: 101; Kermany pediatric: 100 of the test set;
the NEMA RG1 chest in sample_data/ at four sizes).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cxrtriage.io.native import damage_notes
from cxrtriage.preprocess.stats import percentiles
from cxrtriage.types import Image2D

if TYPE_CHECKING:  # only for hints: the image checks run in decode workers, which need no model code
    from cxrtriage.model.segmenter import LungMask

# Short side below this is a thumbnail, not a radiograph: it is smaller than any image the default
# classifier was validated on (Kermany 224 x 224, which must pass) and every model input would be an
# upsampled blur. Clinical radiographs are > 1500 px; the NIH copies here are 512 px.
MIN_SHORT_SIDE_PX = 224

# (p99.5 - p0.5) / (nominal value range) below this = "almost no dynamic range" (a blank, uniform or
# saturated image). Real chest radiographs span 0.27-1.0 of their range here (lowest: an ieee JPEG
# at 0.28; NIH lowest 0.44; RG1 0.66). 1 % leaves room for 10-bit data stored in a 16-bit range
# (about 1.5 %), and for 8-bit images it means fewer than 3 grey levels between the percentiles.
MIN_DYNAMIC_RANGE_FRACTION = 0.01
DYNAMIC_RANGE_PERCENTILES = (0.5, 99.5)  # the same percentiles the default preprocessing clips to

# Lung pixels / image pixels below this = the segmenter found (almost) no lungs: not a chest
# radiograph, a badly cropped or inverted one. Adult CXRs here: 0.14-0.45; the lowest real images
# are young children in a large field (NIH, 0.054 and 0.057), so the limit sits well below ~5 %.
# The one NIH image below it (0.002) is an inverted, over-exposed portable film.
MIN_LUNG_FRACTION = 0.03

# The smaller lung's area / the larger one's below this = "only one lung found". Real images: lowest
# 0.23 (NIH), 0.46 (ieee), 0.38 (Kermany); segmenter failures give 0.00. A pneumonectomy or a complete
# white-out of one hemithorax also fails this check: the scores are then not used for triage and the
# image must be read unaided (priority not_assessed), which is the safe direction.
MIN_LUNG_BALANCE = 0.10

# Percentiles are estimated on a regular subsample of at most this many pixels: 0.4 ms per image
# instead of 3 ms for all of a 512 x 512 image (this check runs in the inference process); the
# estimate of p0.5/p99.5 moves by well under 1 % of the range.
MAX_STATS_PIXELS = 256 * 256

OK = "ok"  # the ``quality`` column of an image that passed every check


@dataclass(frozen=True, slots=True)
class QualityCheck:
    """One check: its name, whether it passed, the measured value, the limit, and a sentence for readers."""

    name: str
    passed: bool
    value: float | None
    limit: float
    message: str


@dataclass(frozen=True, slots=True)
class QualityReport:
    """All checks of one image; ``ok`` when every one passed."""

    checks: tuple[QualityCheck, ...]

    @property
    def ok(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failed(self) -> tuple[QualityCheck, ...]:
        return tuple(c for c in self.checks if not c.passed)

    def summary(self) -> str:
        """``ok``, or the failed checks' messages joined with '; ' (the results column ``quality``)."""
        return OK if self.ok else "; ".join(c.message for c in self.failed)


def check_decoding(image: Image2D) -> QualityCheck:
    """Fails when a decoder reported lost pixel data while it read the image (`cxrtriage.io.native.damage_notes`).

    The value is the number of such reports, the limit 0. The image was still decoded, with the rows after the damage
    grey or shifted, so its scores are written but not used for triage."""
    damage = damage_notes(image.notes)
    said = damage[0] if damage else ""
    return QualityCheck(
        "decoding", not damage, float(len(damage)), 0.0,
        f"damaged pixel data: {said} (part of the image may be missing or wrong: read the original and have it "
        "re-sent)" if damage else "no decoder reported damaged pixel data",
    )


def check_size(image: Image2D, *, min_side: int = MIN_SHORT_SIDE_PX) -> QualityCheck:
    short = min(image.shape)
    return QualityCheck(
        "size", short >= min_side, float(short), float(min_side),
        f"image too small: short side {short} px < {min_side} px",
    )


def subsample(pixels: np.ndarray, max_pixels: int = MAX_STATS_PIXELS) -> np.ndarray:
    """Every k-th row and column so that at most about ``max_pixels`` remain (a view, no copy)."""
    step = max(1, math.ceil(math.sqrt(pixels.size / max_pixels)))
    return pixels[::step, ::step]


def dynamic_range_fraction(image: Image2D) -> float | None:
    """(p99.5 - p0.5) of the pixels over the nominal value range; None when the range is unknown/empty."""
    lo, hi = (float(v) for v in image.value_range)
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return None
    sample = subsample(image.pixels)
    finite = np.isfinite(sample)
    if not finite.all():
        sample = sample[finite]
    if sample.size == 0:
        return 0.0
    p_lo, p_hi = percentiles(sample, DYNAMIC_RANGE_PERCENTILES)
    return float(p_hi - p_lo) / (hi - lo)


def check_dynamic_range(image: Image2D, *, min_fraction: float = MIN_DYNAMIC_RANGE_FRACTION) -> QualityCheck:
    frac = dynamic_range_fraction(image)
    if frac is None:  # no nominal range to compare with: this check cannot say anything
        return QualityCheck("dynamic_range", True, None, min_fraction, "dynamic range not checked (no value range)")
    return QualityCheck(
        "dynamic_range", frac >= min_fraction, frac, min_fraction,
        f"almost no dynamic range: p0.5-p99.5 spans {100 * frac:.2f}% of the value range (< {100 * min_fraction:g}%)",
    )


def lung_fraction(mask: LungMask) -> float:
    """Share of the image's pixels that the mask labels as lung."""
    return float(np.count_nonzero(mask.labels)) / max(1, mask.labels.size)


def lung_balance(mask: LungMask) -> float | None:
    """Smallest over largest area among the mask's lung labels; None for a mask with one lung label."""
    if len(mask.label_names) < 3:
        return None
    counts = np.bincount(mask.labels.ravel(), minlength=len(mask.label_names))[1:]
    largest = int(counts.max())
    return float(counts.min()) / largest if largest > 0 else 0.0


def check_lung_fraction(mask: LungMask, *, min_fraction: float = MIN_LUNG_FRACTION) -> QualityCheck:
    frac = lung_fraction(mask)
    return QualityCheck(
        "lung_area", frac >= min_fraction, frac, min_fraction,
        f"lungs cover {100 * frac:.1f}% of the image (< {100 * min_fraction:g}%): not a chest radiograph, "
        "badly cropped or inverted?",
    )


def check_lung_balance(mask: LungMask, *, min_balance: float = MIN_LUNG_BALANCE) -> QualityCheck | None:
    """None when the mask has a single lung label (nothing to compare)."""
    bal = lung_balance(mask)
    if bal is None:
        return None
    return QualityCheck(
        "lung_balance", bal >= min_balance, bal, min_balance,
        f"only one lung found (the smaller is {100 * bal:.0f}% of the larger, < {100 * min_balance:g}%)",
    )


def image_checks(image: Image2D) -> tuple[QualityCheck, ...]:
    """The checks that need only the image."""
    return (check_decoding(image), check_size(image), check_dynamic_range(image))


def lung_checks(mask: LungMask) -> tuple[QualityCheck, ...]:
    """The checks that need the lung mask (the balance check only for masks with two or more lung labels)."""
    checks: list[QualityCheck] = [check_lung_fraction(mask)]
    balance = check_lung_balance(mask)
    if balance is not None:
        checks.append(balance)
    return tuple(checks)


def assess_quality(image: Image2D | tuple[QualityCheck, ...], mask: LungMask | None = None) -> QualityReport:
    """Every check that applies: the image checks (or their results, computed earlier), plus the lung checks
    when a mask is given."""
    first = image if isinstance(image, tuple) else image_checks(image)
    checks: Iterable[QualityCheck] = first + (lung_checks(mask) if mask is not None else ())
    return QualityReport(tuple(checks))
