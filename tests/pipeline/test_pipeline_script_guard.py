"""The Python API from a plain script: works under the ``__main__`` guard, and says so clearly without it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from factories import write_textured_png

ROOT = Path(__file__).resolve().parents[2]


def _run_script(tmp_path: Path, guarded: bool) -> subprocess.CompletedProcess[str]:
    inputs = tmp_path / "in"
    write_textured_png(inputs / "a.png", 64, 64, 0)
    call = f"cxrtriage.predict([{str(inputs)!r}], out_dir={str(tmp_path / 'out')!r}, workers=1).scored"
    body = f"if __name__ == '__main__':\n    print('scored', {call})\n" if guarded else f"print('scored', {call})\n"
    script = tmp_path / "script.py"
    script.write_text("import cxrtriage\n" + body)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env,
                          cwd=tmp_path)


@pytest.mark.slow
def test_script_without_guard_gets_an_error_naming_the_guard(tmp_path: Path) -> None:
    res = _run_script(tmp_path, guarded=False)
    assert res.returncode != 0
    assert 'if __name__ == "__main__":' in res.stderr and "workers=0" in res.stderr


@pytest.mark.slow
def test_script_with_guard_runs(tmp_path: Path) -> None:
    res = _run_script(tmp_path, guarded=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "scored 1" in res.stdout
