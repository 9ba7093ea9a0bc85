"""The README's Python API example runs as written, as a script, with decode workers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _api_example() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Python API", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_the_readme_python_api_example_runs(tmp_path: Path) -> None:
    code = _api_example()
    assert 'if __name__ == "__main__":' in code and "cxrtriage.predict(" in code
    shutil.copytree(ROOT / "sample_data", tmp_path / "sample_data")
    script = tmp_path / "example.py"
    script.write_text(code + "    print('scored', summary.scored, sorted(scores)[:1], heatmap.values.shape)\n",
                      encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "scored 4 " in res.stdout  # the four frontal images of sample_data
    assert (tmp_path / "results" / "results.csv").is_file()
