"""Shared fixtures: where ../shared/data is, and whether its absence skips or fails a test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CXRTRIAGE_SHARED_DATA", REPO.parent / "shared" / "data"))


def _require_data() -> bool:
    return os.environ.get("CXRTRIAGE_REQUIRE_DATA", "") == "1"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to ../shared/data; skips (or fails under CXRTRIAGE_REQUIRE_DATA=1) when it is absent."""
    if not (SHARED_DATA / "README.md").is_file():
        msg = f"real data not found at {SHARED_DATA} (a fresh clone has none; CI provides it)"
        if _require_data():
            pytest.fail(msg + " and CXRTRIAGE_REQUIRE_DATA=1 is set")
        pytest.skip(msg)
    return SHARED_DATA


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
