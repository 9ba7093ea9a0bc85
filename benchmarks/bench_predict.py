"""Benchmark: end-to-end `predict` pipeline images/s versus the model alone in onnxruntime.

Both sides use the same model session (same intra-op threads), the same batch size and the
same images; the model-only side runs on inputs preprocessed beforehand, so the ratio shows how
much of the model's own speed the pipeline keeps (decode, selection, preprocessing, results
writing overlapped with inference). Runs are interleaved round by round (model-only, then each
pipeline setting) and the ratio is the median of per-round ratios, because the machine is shared;
rounds in which other processes used more than ``--max-others`` of the CPUs are dropped when at
least three clean rounds remain (the CPU of others is metered from /proc on Linux).

Usage (not a test; runnable by anyone):

    python benchmarks/bench_predict.py --input ../shared/data/nih14/images --limit 160 \
        [--model cxr-classifier] [--batch-size 16] [--workers 1,2] [--threads 2] [--rounds 3] [--json out.json]

End-to-end time is reported two ways: wall clock of ``run_predict`` (includes starting the
decode processes) and steady state (first results row to last).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


class CpuMeter:
    """CPU used by OTHER processes during a measurement (Linux /proc), as a fraction of the machine.

    Our own CPU is this process plus the forkserver, which reaps the decode workers (so their
    CPU lands in its cutime/cstime). Rounds where others used much CPU are not trusted.
    """

    def __init__(self) -> None:
        self.ok = Path("/proc/stat").is_file()
        self.hz = os.sysconf("SC_CLK_TCK") if self.ok else 100

    @staticmethod
    def _busy() -> int:
        vals = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(vals) - vals[3] - vals[4]  # minus idle and iowait

    @staticmethod
    def _proc(pid: int, children: bool) -> int:
        try:
            f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0
        return int(f[11]) + int(f[12]) + ((int(f[13]) + int(f[14])) if children else 0)

    def _ours(self) -> int:
        from multiprocessing import forkserver

        fs_pid = getattr(forkserver._forkserver, "_forkserver_pid", None)  # noqa: SLF001
        return self._proc(os.getpid(), True) + (self._proc(fs_pid, True) if fs_pid else 0)

    def start(self) -> None:
        if self.ok:
            self._t, self._busy0, self._ours0 = time.perf_counter(), self._busy(), self._ours()

    def others(self) -> float:
        """Fraction (0..1) of all CPUs used by other processes since ``start``."""
        if not self.ok:
            return float("nan")
        wall = time.perf_counter() - self._t
        others = (self._busy() - self._busy0) - (self._ours() - self._ours0)
        return max(0.0, others / self.hz / (wall * (os.cpu_count() or 1)))


def model_only(model: Any, x: np.ndarray, batch_size: int) -> float:
    """images/s of the bare onnxruntime session over the preprocessed array ``x``."""
    m = model.manifest
    sess, in_name, out_name = model.session, m.input_name, m.outputs["logits"]
    t0 = time.perf_counter()
    for i in range(0, x.shape[0], batch_size):
        sess.run([out_name], {in_name: x[i : i + batch_size]})
    return x.shape[0] / (time.perf_counter() - t0)


def end_to_end(files: list[Path], model: Any, batch_size: int, workers: int, n_scored: int) -> tuple[float, float]:
    """(wall-clock images/s of run_predict, steady-state images/s from the end of the first batch)."""
    from cxrtriage.pipeline.config import PredictConfig
    from cxrtriage.pipeline.engine import ProgressUpdate
    from cxrtriage.pipeline.predict import run_predict

    stamps: list[tuple[float, int]] = []

    def on_progress(u: ProgressUpdate) -> None:
        stamps.append((time.perf_counter(), u.scored))

    with tempfile.TemporaryDirectory() as out:
        cfg = PredictConfig(inputs=tuple(files), out_dir=Path(out), batch_size=batch_size, workers=workers)
        t0 = time.perf_counter()
        s = run_predict(cfg, model=model, on_progress=on_progress)
        wall = time.perf_counter() - t0
    assert s.scored == n_scored, (s.scored, n_scored)
    first = next(i for i, (_, k) in enumerate(stamps) if k > 0)
    t_a, k_a = stamps[min(first + batch_size - 1, len(stamps) - 1)]
    t_b, k_b = stamps[-1]
    steady = (k_b - k_a) / (t_b - t_a) if t_b > t_a else float("nan")
    return n_scored / wall, steady


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", required=True, type=Path, help="folder (or file) of images to score")
    ap.add_argument("--limit", type=int, default=160, help="use the first N files found (default 160)")
    ap.add_argument("--model", default=None, help="model name or path (default: cxr-classifier)")
    ap.add_argument("--batch-size", type=int, default=32, help="images per inference batch (predict's default: 32)")
    ap.add_argument("--workers", type=_int_list, default=[1, 2], help="decode process counts to try, e.g. 1,2")
    ap.add_argument("--threads", type=_int_list, default=[0],
                    help="onnxruntime intra-op thread counts to try (0 = onnxruntime default), e.g. 1,2")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--max-others", type=float, default=0.10,
                    help="drop rounds where other processes used more than this fraction of the CPUs (default 0.10)")
    ap.add_argument("--json", type=Path, default=None, help="write the raw figures here")
    args = ap.parse_args(argv)

    from cxrtriage.io import discover
    from cxrtriage.model import load_classifier
    from cxrtriage.pipeline.decode import DecodeTask, examine

    files = []
    for p in discover([args.input]):
        files.append(p)
        if len(files) >= args.limit:
            break
    if not files:
        print(f"no files under {args.input}", file=sys.stderr)
        return 2

    results: dict[str, Any] = {"input": str(args.input), "n_files": len(files), "batch_size": args.batch_size,
                               "cpu_count": os.cpu_count(), "configs": {}}
    for threads in args.threads:
        # model-only and serial decode use onnxruntime's defaults (idle threads spin); with decode
        # processes the pipeline turns spinning off (as run_predict does), so it gets its own session.
        model = load_classifier(args.model, device="cpu", intra_op_threads=threads or None)
        model_nospin = load_classifier(args.model, device="cpu", intra_op_threads=threads or None, spinning=False)
        m = model.manifest
        results["model"] = {"name": m.name, "version": m.version, "size": m.preprocessing.size,
                            "onnx_mb": round(m.onnx_file.stat().st_size / 2**20, 2)}
        # Same preprocessed inputs for the model-only side (decoded once, serially, not timed).
        decoded = [examine(DecodeTask(i, str(p), m.preprocessing)) for i, p in enumerate(files)]
        arrays = [d.model_input.array for d in decoded if d.ok and d.model_input is not None]
        x = np.stack(arrays)
        n_scored = len(arrays)
        model_only(model, x[: args.batch_size], args.batch_size)  # warm-up

        key = f"threads={threads or 'default'}"
        runs: dict[str, list[float]] = {"model_only": []}
        for w in args.workers:
            runs[f"e2e_w{w}_wall"] = []
            runs[f"e2e_w{w}_steady"] = []
        others: list[float] = []
        meter = CpuMeter()
        for r in range(args.rounds):
            meter.start()
            mo = model_only(model, x, args.batch_size)
            runs["model_only"].append(mo)
            line = [f"round {r + 1} {key}: model-only {mo:6.1f} img/s"]
            for w in args.workers:
                wall, steady = end_to_end(files, model if w == 0 else model_nospin, args.batch_size, w, n_scored)
                runs[f"e2e_w{w}_wall"].append(wall)
                runs[f"e2e_w{w}_steady"].append(steady)
                line.append(f"e2e w={w} {wall:6.1f} (steady {steady:6.1f})")
            others.append(meter.others())
            line.append(f"others {100 * others[-1]:.0f}% CPU")
            print(" | ".join(line), flush=True)
        clean = [i for i, o in enumerate(others) if not o > args.max_others]
        if len(clean) < 3:
            print(f"warning: only {len(clean)} round(s) with other processes under {100 * args.max_others:.0f}% CPU; "
                  "using all rounds", file=sys.stderr)
            clean = list(range(len(others)))
        summary: dict[str, Any] = {"n_scored": n_scored, "runs": runs, "others_cpu": others, "clean_rounds": clean,
                                   "median_img_s": {}, "ratio_vs_model_only": {}}
        for name, vals in runs.items():
            summary["median_img_s"][name] = statistics.median(vals[i] for i in clean)
            if name != "model_only":
                ratios = [vals[i] / runs["model_only"][i] for i in clean]
                summary["ratio_vs_model_only"][name] = {"median": statistics.median(ratios), "min": min(ratios),
                                                        "max": max(ratios)}
        results["configs"][key] = summary

    print(f"\nmodel {results['model']['name']} {results['model']['version']} ({results['model']['size']} px, "
          f"{results['model']['onnx_mb']} MB), {results['n_files']} files, batch {args.batch_size}, "
          f"{os.cpu_count()} CPUs")
    print(f"{'config':<22}{'setting':<18}{'median img/s':>14}{'ratio median [min-max]':>28}")
    for key, s in results["configs"].items():
        print(f"{key}: {len(s['clean_rounds'])} of {len(s['others_cpu'])} rounds used "
              f"(others' CPU per round: {', '.join(f'{100 * o:.0f}%' for o in s['others_cpu'])})")
        for name, v in s["median_img_s"].items():
            rr = s["ratio_vs_model_only"].get(name)
            ratio = f"{rr['median']:.2f} [{rr['min']:.2f}-{rr['max']:.2f}]" if rr else "1.00"
            print(f"{key:<22}{name:<18}{v:>14.1f}{ratio:>28}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
