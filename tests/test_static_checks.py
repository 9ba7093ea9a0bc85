"""The package stays ruff-clean and mypy-clean (the configurations are in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _run(args: list[str], repo_root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=repo_root, capture_output=True, text=True, timeout=600)


def test_ruff_is_clean(repo_root: Path) -> None:
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (pip install -e '.[dev]')")
    res = _run([ruff, "check", "cxrtriage", "tests", "benchmarks", "scripts"], repo_root)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.slow
def test_mypy_is_clean(repo_root: Path, tmp_path: Path) -> None:
    pytest.importorskip("mypy", reason="mypy is not installed (pip install -e '.[dev]')")
    res = _run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy")], repo_root)
    assert res.returncode == 0, res.stdout + res.stderr
