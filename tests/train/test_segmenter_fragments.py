"""scripts/segmenter_fragments.py: what counts as a stray piece and as a missing lung."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _judge():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(SCRIPTS))
    try:
        import segmenter_fragments
    finally:
        sys.path.remove(str(SCRIPTS))
    return segmenter_fragments.judge


def test_two_clean_lungs_are_neither_fragmented_nor_missing() -> None:
    labels = np.zeros((100, 100), np.uint8)
    labels[20:80, 10:40], labels[20:80, 60:90] = 1, 2
    assert _judge()(labels) == (False, False)


def test_a_stray_piece_counts_only_above_two_percent_of_its_lung() -> None:
    judge = _judge()
    labels = np.zeros((100, 100), np.uint8)
    labels[20:80, 10:40], labels[20:80, 60:90] = 1, 2  # 1800 pixels each
    labels[95:98, 0:5] = 1  # 15 pixels: under 2% of 1800
    assert judge(labels) == (False, False)
    labels[90:98, 0:8] = 1  # 64 pixels: over 2%
    assert judge(labels) == (True, False)


def test_a_lung_label_that_is_absent_is_missing() -> None:
    labels = np.zeros((50, 50), np.uint8)
    labels[10:40, 5:20] = 1
    assert _judge()(labels) == (False, True)
