"""Benchmark: whole ``cxrtriage predict`` commands, as a user or a batch pipeline runs them (a fresh Python each time).

``bench_decode.py`` and ``bench_predict.py`` time ``run_predict`` with the model already loaded. A command also pays
Python's start, its imports, the model's loading and the decode workers' start: on a few files, most of its time.
This script runs the same command with this checkout and, optionally, another one (``--baseline``), alternated round
by round because the machine is shared, and prints the median wall time of each and their ratio. It also says which
of the heavy modules (pydicom, SciPy, the report writers) the command's main process imported.

Usage (not a test; runnable by anyone):

    python benchmarks/bench_command.py --input sample_data [--baseline ../older-checkout] [--rounds 5] \\
        [-- --heatmaps --report]

Everything after ``--`` is passed to ``predict`` (``--out`` is set here, in a temporary folder).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("pydicom", "scipy", "fpdf", "highdicom", "jinja2", "onnx", "onnxruntime", "cv2")

# Runs in a fresh interpreter: python -c RUNNER <checkout> predict ARGS...; the command's own exit code.
RUNNER = r"""
import atexit, sys
checkout = sys.argv[1]
sys.path.insert(0, checkout)
import cxrtriage
if not cxrtriage.__file__.startswith(checkout):
    raise SystemExit(f"imported cxrtriage from {cxrtriage.__file__}, not from {checkout}")
atexit.register(lambda: print("MAIN-MODULES", *[m for m in HEAVY if m in sys.modules], file=sys.stderr))
from cxrtriage.cli.app import main
sys.argv = ["cxrtriage", *sys.argv[2:]]
sys.exit(main())
"""


def run_once(checkout: Path, args: list[str], out: Path) -> tuple[float, list[str]]:
    code = f"HEAVY = {HEAVY!r}\n" + RUNNER
    t0 = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", code, str(checkout), "predict", *args, "--out", str(out)],
                         capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t0
    if run.returncode != 0:
        raise SystemExit(f"{checkout}: predict exited {run.returncode}:\n{run.stderr[-3000:]}")
    line = next((x for x in run.stderr.splitlines() if x.startswith("MAIN-MODULES")), "MAIN-MODULES")
    return wall, line.split()[1:]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", required=True, action="append", help="file or folder to score (repeatable)")
    ap.add_argument("--baseline", type=Path, help="another checkout of cxrtriage to compare with")
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args(argv)
    sides = {"this": REPO}
    if a.baseline is not None:
        sides["baseline"] = a.baseline.resolve()
    walls: dict[str, list[float]] = {k: [] for k in sides}
    modules: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, checkout in sides.items():  # once untimed: the page cache, Python's bytecode caches
            run_once(checkout, [*a.input, *extra], Path(tmp) / f"warm-{name}")
        for r in range(a.rounds):
            for name, checkout in sides.items():
                wall, modules[name] = run_once(checkout, [*a.input, *extra], Path(tmp) / f"{name}-{r}")
                walls[name].append(wall)
                print(f"round {r + 1} {name:8s} {wall:6.2f} s", flush=True)
    print(f"predict {' '.join([*a.input, *extra])}: median of {a.rounds} whole commands")
    for name in sides:
        print(f"  {name:8s} {statistics.median(walls[name]):6.2f} s   main process imported: "
              f"{', '.join(modules[name]) or 'none of ' + ', '.join(HEAVY)}")
    if "baseline" in sides:
        print(f"  baseline / this: {statistics.median(walls['baseline']) / statistics.median(walls['this']):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
