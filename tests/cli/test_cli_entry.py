"""How a command starts: the decode workers skip re-running the console script, a plain ``predict`` imports only what
its main process uses, and a ``predict`` with workers starts their forkserver before the command line is parsed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from factories import write_textured_png

from cxrtriage.cli.app import predict_with_workers

REPO = Path(__file__).resolve().parents[2]
# what pip writes for [project.scripts] cxrtriage = "cxrtriage.cli.app:main"
CONSOLE_SCRIPT = "import sys\nfrom cxrtriage.cli.app import main\nif __name__ == '__main__':\n    sys.exit(main())\n"


def cli_imports(script: Path, tmp_path: Path) -> tuple[int, str]:
    """Run ``predict --workers 2`` on two PNGs through ``script``; the number of processes that imported the CLI."""
    for i in range(2):
        write_textured_png(tmp_path / "in" / f"{i}.png", 300, 260, seed=i)
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1", "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, str(script), "predict", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                          "--workers", "2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    imports = [line for line in run.stderr.splitlines() if line.startswith("import time:")]
    assert any(line.endswith("| cxrtriage.pipeline.decode") for line in imports), "no decode worker ran"
    return sum(line.endswith("| cxrtriage.cli.app") for line in imports), run.stderr


def test_console_script_workers_do_not_import_the_cli_again(tmp_path: Path) -> None:
    script = tmp_path / "bin" / "cxrtriage"
    script.parent.mkdir()
    script.write_text(CONSOLE_SCRIPT)
    n, _ = cli_imports(script, tmp_path)
    assert n == 1  # the main process only; without the fix each worker imports it too (3 with two workers)


def test_other_main_scripts_keep_multiprocessing_semantics(tmp_path: Path) -> None:
    # someone's own script (another name) may set things up at its top level for the workers: it is re-run as before
    script = tmp_path / "my_pipeline.py"
    script.write_text(CONSOLE_SCRIPT)
    n, _ = cli_imports(script, tmp_path)
    assert n >= 2


HEAVY = ("pydicom", "scipy", "fpdf", "highdicom", "jinja2")
REPORTING_SCRIPT = ("import atexit, sys\nfrom cxrtriage.cli.app import main\nif __name__ == '__main__':\n"
                    f"    atexit.register(lambda: print('MAIN-MODULES', *[m for m in {HEAVY!r} if m in sys.modules], "
                    "file=sys.stderr))\n    sys.exit(main())\n")


def main_process_imports(tmp_path: Path, *options: str) -> set[str]:
    """Which of ``HEAVY`` the main process of ``cxrtriage predict`` (two PNGs, two decode workers) imported."""
    script = tmp_path / "bin" / "cxrtriage"  # the console script's name: the workers do not run it again
    script.parent.mkdir(exist_ok=True)
    script.write_text(REPORTING_SCRIPT)
    for i in range(2):
        write_textured_png(tmp_path / "in" / f"{i}.png", 300, 260, seed=i)
    out = tmp_path / ("out" + "".join(options))
    run = subprocess.run([sys.executable, str(script), "predict", str(tmp_path / "in"), "--out", str(out),
                          "--workers", "2", *options], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    line = next(x for x in run.stderr.splitlines() if x.startswith("MAIN-MODULES"))
    return set(line.split()[1:])


def test_a_plain_predict_does_not_import_what_only_reports_and_workers_need(tmp_path: Path) -> None:
    # pydicom, SciPy and the report writers cost ~0.8 s of imports: more than scoring a few files takes
    assert main_process_imports(tmp_path) == set()
    # the check sees them when they are imported: a run that writes reports brings the writers in
    assert {"fpdf", "highdicom", "pydicom", "jinja2"} <= main_process_imports(tmp_path, "--report", "--no-pdf")


@pytest.mark.parametrize(("args", "early"), [
    (["predict", "scans", "--out", "o"], True),
    (["predict", "scans", "-w", "2", "--out", "o"], True),
    (["predict", "--help"], False),
    (["predict", "scans", "-h"], False),
    (["predict", "scans", "--ray", "local"], False),
    (["predict", "scans", "--ray=local"], False),
    (["predict", "scans", "--workers", "0"], False),
    (["predict", "scans", "-w", "0"], False),
    (["predict", "scans", "--workers=0"], False),
    (["serve", "--out", "o"], False),
    (["--verbose", "predict", "scans"], False),  # options before the command: the workers start at the usual time
    ([], False),
])
def test_the_forkserver_starts_before_parsing_only_for_a_predict_with_workers(args: list[str], early: bool) -> None:
    assert predict_with_workers(args) is early
