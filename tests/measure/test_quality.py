"""Quality checks: each limit on both sides, the report summary, and real radiographs passing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxrtriage.measure import quality as q
from cxrtriage.model.segmenter import LungMask
from cxrtriage.types import Image2D, InputKind, SourceRef

SRC = SourceRef("x.png", InputKind.RASTER)


def _image(pixels: np.ndarray, value_range: tuple[float, float] = (0.0, 255.0)) -> Image2D:
    return Image2D(pixels.astype(np.float32), value_range, SRC)


def _mask(labels: np.ndarray, names: tuple[str, ...] = ("background", "right_lung", "left_lung")) -> LungMask:
    return LungMask(labels.astype(np.uint8), names, SRC)


def _ramp(h: int, w: int, lo: float = 0.0, hi: float = 255.0) -> np.ndarray:
    return np.tile(np.linspace(lo, hi, w, dtype=np.float32), (h, 1))


def test_size_limit_is_on_the_short_side() -> None:
    ok = q.check_size(_image(_ramp(q.MIN_SHORT_SIDE_PX, 2000)))
    small = q.check_size(_image(_ramp(2000, q.MIN_SHORT_SIDE_PX - 1)))
    assert ok.passed and ok.value == q.MIN_SHORT_SIDE_PX
    assert not small.passed and f"{q.MIN_SHORT_SIDE_PX - 1} px" in small.message


def test_dynamic_range() -> None:
    full = q.check_dynamic_range(_image(_ramp(300, 300)))
    assert full.passed and full.value == pytest.approx(0.99, abs=0.01)
    flat = q.check_dynamic_range(_image(np.full((300, 300), 100.0)))
    assert not flat.passed and flat.value == 0.0 and "dynamic range" in flat.message
    # 2 grey levels of a 8-bit range fail; 16-bit data spanning 1000 of 65535 (1.5 %) pass
    assert not q.check_dynamic_range(_image(_ramp(300, 300, 100, 102))).passed
    assert q.check_dynamic_range(_image(_ramp(300, 300, 2000, 3000), (0.0, 65535.0))).passed
    # a few outliers do not hide a flat image (percentiles, not min/max)
    px = np.full((300, 300), 50.0)
    px[:2, :2] = 255.0
    assert not q.check_dynamic_range(_image(px)).passed
    # no usable nominal range: not checked, never a failure
    none = q.check_dynamic_range(_image(np.full((300, 300), 1.0), (0.0, 0.0)))
    assert none.passed and none.value is None


def test_subsample_bounds_the_pixels_used() -> None:
    big = np.zeros((3000, 2500), np.float32)
    assert q.subsample(big).size <= q.MAX_STATS_PIXELS
    assert q.subsample(np.zeros((100, 100), np.float32)).shape == (100, 100)


def test_lung_checks() -> None:
    labels = np.zeros((100, 100), np.uint8)
    labels[20:80, 10:45] = 1
    labels[20:80, 55:90] = 2
    checks = q.lung_checks(_mask(labels))
    assert [c.name for c in checks] == ["lung_area", "lung_balance"] and all(c.passed for c in checks)
    assert checks[0].value == pytest.approx(0.42) and checks[1].value == pytest.approx(1.0)

    one = labels.copy()
    one[one == 2] = 0
    fails = {c.name: c for c in q.lung_checks(_mask(one))}
    assert fails["lung_area"].passed and not fails["lung_balance"].passed
    assert "only one lung" in fails["lung_balance"].message

    tiny = np.zeros((100, 100), np.uint8)
    tiny[50:52, 40:45] = 1
    tiny[50:52, 55:60] = 2
    fails = {c.name: c for c in q.lung_checks(_mask(tiny))}
    assert not fails["lung_area"].passed and fails["lung_balance"].passed
    assert "0.2% of the image" in fails["lung_area"].message

    empty = {c.name: c for c in q.lung_checks(_mask(np.zeros((50, 50))))}
    assert not empty["lung_area"].passed and not empty["lung_balance"].passed
    # a segmenter with a single "lung" label has nothing to balance
    single = q.lung_checks(_mask(labels.clip(0, 1), ("background", "lung")))
    assert [c.name for c in single] == ["lung_area"]


def test_decoding_check_fails_only_on_a_decoders_report_of_lost_data() -> None:
    from cxrtriage.io.native import decoder_notes

    def notes(*said: tuple[str, str]) -> tuple[str, ...]:
        return tuple(n for msg, dec in said for n in decoder_notes((msg,), dec))

    clean = q.check_decoding(_image(_ramp(300, 300)))
    assert clean.passed and clean.value == 0.0 and clean.limit == 0.0
    for msg in ("Corrupt JPEG data: premature end of data segment", "Corrupt JPEG data: bad Huffman code",
                "Corrupt JPEG data: 267 extraneous bytes before marker 0xd9", "Premature end of JPEG file"):
        img = Image2D(_ramp(300, 300), (0.0, 255.0), SRC, notes=notes((msg, "libjpeg")))
        check = q.check_decoding(img)
        assert not check.passed and check.value == 1.0, msg
        assert check.message.startswith(f"damaged pixel data: libjpeg reported while decoding: {msg} (")
        assert q.assess_quality(img).summary() == check.message
    harmless = notes(("iCCP: known incorrect sRGB profile", "libpng"), ("Stream does not end with EOC", "OpenJPEG"))
    # a note that quotes the words without a decoder having said them (e.g. a header's text) is no report
    assert q.check_decoding(Image2D(_ramp(300, 300), (0.0, 255.0), SRC,
                                    notes=(*harmless, "ImageComments: Corrupt JPEG data"))).passed


def test_report_summary() -> None:
    img = _image(_ramp(300, 300))
    assert q.assess_quality(img).summary() == "ok" and len(q.assess_quality(img).checks) == 3
    labels = np.zeros((300, 300), np.uint8)
    labels[50:250, 20:140] = 1
    rep = q.assess_quality(img, _mask(labels))
    assert not rep.ok and [c.name for c in rep.failed] == ["lung_balance"]
    # image checks computed earlier (in a decode worker) give the same report
    assert q.assess_quality(q.image_checks(img), _mask(labels)) == rep
    small = q.assess_quality(_image(np.full((100, 120), 7.0)), _mask(np.zeros((100, 120))))
    assert [c.name for c in small.failed] == ["size", "dynamic_range", "lung_area", "lung_balance"]
    assert [c.name for c in q.image_checks(img)] == ["decoding", "size", "dynamic_range"]
    assert small.summary().count("; ") == 3


@pytest.mark.data
def test_real_radiographs_pass(shared_data: Path) -> None:
    """RG1 from sample_data and 30 NIH images (no lungs needed: image checks only here; see the pipeline
    tests for the lung checks with the real segmenter)."""
    from cxrtriage.io import read_image

    repo = Path(__file__).resolve().parents[2]
    paths = [repo / "sample_data" / "cxr_pa_rg1_half_explicit.dcm", repo / "sample_data" / "cxr_pa_rg1_quarter.png"]
    paths += sorted((shared_data / "nih14" / "images").glob("*.png"))[:30]
    for p in paths:
        rep = q.assess_quality(read_image(p))
        assert rep.ok, f"{p.name}: {rep.summary()}"
