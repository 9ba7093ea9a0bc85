"""Shared fixtures: where ../shared/data is, and whether its absence skips or fails a test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CXRTRIAGE_SHARED_DATA", REPO.parent / "shared" / "data"))


def _require_data() -> bool:
    return os.environ.get("CXRTRIAGE_REQUIRE_DATA", "") == "1"


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects anything: `-m "not data"` must not hide an unmarked test
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Refuse to run when a test uses ``shared_data`` (directly or through another fixture) without ``@pytest.mark.data``.

    An error rather than adding the marker here: the marker stays visible where the test is written, and selection
    with ``-m`` never depends on the order in which collection hooks run.
    """
    unmarked = [item.nodeid for item in items
                if "shared_data" in getattr(item, "fixturenames", ()) and item.get_closest_marker("data") is None]
    if unmarked:
        raise pytest.UsageError("these tests use the shared_data fixture (../shared/data) but lack @pytest.mark.data; "
                                "add the marker (or pytestmark = pytest.mark.data in the module):\n  "
                                + "\n  ".join(unmarked))


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
