"""The committed sample_data/ files: expected decisions, sizes, and pixels faithful to their source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxrtriage.io import assess, discover, load_rules, read_image

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data"

EXPECTED = {
    "cxr_pa_rg1_j2k_lossless.dcm": ("scored", "CR CHEST PA"),
    "cxr_pa_rg1_half_rle.dcm": ("scored", "CR CHEST PA"),
    "cxr_pa_rg1_half_explicit.dcm": ("scored", "CR CHEST PA"),
    "cxr_pa_rg1_quarter.png": ("scored", "PNG image"),
    "cxr_retagged_lateral_rg1_quarter.dcm": ("excluded", "lateral view: ViewPosition 'LL'"),
    "report_basic_text_sr.dcm": ("excluded", "non-image object: Basic Text SR Storage"),
    "make_sample_data.py": ("excluded", "text file"),
    "README.md": ("excluded", "text file"),
    "site_rules.example.toml": ("excluded", "text file"),
}


def test_sample_files_decisions_and_sizes() -> None:
    found = {p.name: p for p in discover([SAMPLE])}
    assert sorted(found) == sorted(EXPECTED)
    for name, (status, reason) in EXPECTED.items():
        a = assess(found[name], read=False)
        assert (a.selection.status, reason in a.selection.reason) == (status, True), (name, a.selection)
    sizes = [p.stat().st_size for p in found.values()]
    assert max(sizes) < 5 * 2**20 and sum(sizes) < 12 * 2**20


def test_example_site_rules_load() -> None:
    rules = load_rules(SAMPLE / "site_rules.example.toml")
    assert rules.body_parts == ("CHEST", "THORAX", "")


def _half(arr: np.ndarray) -> np.ndarray:
    r, c = arr.shape[0] // 2 * 2, arr.shape[1] // 2 * 2
    blocks = arr[:r, :c].astype(np.int64).reshape(r // 2, 2, c // 2, 2).sum(axis=(1, 3))
    return ((blocks + 2) // 4).astype(np.float32)


def test_sample_pixels_match_their_source() -> None:
    full = read_image(SAMPLE / "cxr_pa_rg1_j2k_lossless.dcm")
    rle = read_image(SAMPLE / "cxr_pa_rg1_half_rle.dcm")
    explicit = read_image(SAMPLE / "cxr_pa_rg1_half_explicit.dcm")
    np.testing.assert_array_equal(rle.pixels, explicit.pixels)
    stored = 32767 - full.pixels  # back to the stored MONOCHROME1 values
    np.testing.assert_array_equal(32767 - rle.pixels, _half(stored))
    try:
        from pydicom.data import get_testdata_file

        source = get_testdata_file("RG1_UNCR.dcm")
    except Exception:  # pydicom-data not installed
        source = None
    if source is None:
        pytest.skip("pydicom-data not installed: cannot compare with RG1_UNCR.dcm")
    np.testing.assert_array_equal(read_image(source).pixels, full.pixels)
