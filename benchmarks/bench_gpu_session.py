"""What a GPU session costs before it is fast: session start, the first batch and steady batches of the classifier.

onnxruntime's CUDA provider searches cuDNN's convolution algorithms the first time it meets an input shape
(``cudnn_conv_algo_search``: EXHAUSTIVE by default, HEURISTIC or DEFAULT skip most of the search). A ``predict``
run meets two shapes (full batches and the last, partial one), so the search is paid inside every short run. This
script measures, for each search setting, in a fresh process each: session start, the first call at each batch size
and the median of the following calls, and the largest score difference from the CPU provider on the same input.

Usage (not a test; needs onnxruntime-gpu and a GPU):

    python benchmarks/bench_gpu_session.py [--model models/cxr-classifier/model.onnx] [--batches 32,5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r'''
import json, sys, time
import numpy as np
import onnxruntime as ort
model, search, batches = sys.argv[1], sys.argv[2], [int(b) for b in sys.argv[3].split(",")]
if search == "cpu":
    providers = ["CPUExecutionProvider"]
else:
    providers = [("CUDAExecutionProvider", {"cudnn_conv_algo_search": search}), "CPUExecutionProvider"]
t0 = time.perf_counter()
sess = ort.InferenceSession(model, providers=providers)
start = time.perf_counter() - t0
inp = sess.get_inputs()[0]
shape = [d if isinstance(d, int) else 1 for d in inp.shape]
rng = np.random.default_rng(0)
out = {"providers": sess.get_providers(), "start_s": start, "batches": {}}
for b in batches:
    x = rng.uniform(-1, 1, size=[b] + shape[1:]).astype(np.float32)
    t = time.perf_counter(); y = sess.run(None, {inp.name: x})[0]; first = time.perf_counter() - t
    times = []
    for _ in range(20):
        t = time.perf_counter(); sess.run(None, {inp.name: x}); times.append(time.perf_counter() - t)
    out["batches"][str(b)] = {"first_ms": 1000 * first, "steady_ms": 1000 * sorted(times)[len(times) // 2],
                              "scores": np.asarray(y, dtype=np.float64).ravel()[:64].tolist()}
print(json.dumps(out))
'''


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=REPO / "models" / "cxr-classifier" / "model.onnx")
    ap.add_argument("--batches", default="32,5", help="batch sizes, in the order a run meets them")
    ap.add_argument("--rounds", type=int, default=2, help="fresh processes per setting")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    results: dict[str, list[dict]] = {}
    for _ in range(args.rounds):
        for search in ("cpu", "EXHAUSTIVE", "HEURISTIC", "DEFAULT"):
            res = subprocess.run([sys.executable, "-c", CHILD, str(args.model), search, args.batches],
                                 capture_output=True, text=True, check=False)
            if res.returncode != 0:
                print(f"{search}: failed\n{res.stderr[-2000:]}", file=sys.stderr)
                return 1
            results.setdefault(search, []).append(json.loads(res.stdout.strip().splitlines()[-1]))
    cpu = results["cpu"][0]["batches"]
    print(f"{args.model.name}, {args.rounds} fresh processes per setting; ms are wall ms (medians over the processes)")
    print(f"{'setting':11s} {'start s':>8s} " + " ".join(f"{'first b' + b:>10s} {'steady b' + b:>10s}"
                                                       for b in args.batches.split(",")) + f" {'max |d| vs cpu':>15s}")
    for search, runs in results.items():
        cols = []
        diff = 0.0
        for b in args.batches.split(","):
            cols.append(f"{statistics.median(r['batches'][b]['first_ms'] for r in runs):10.1f} "
                        f"{statistics.median(r['batches'][b]['steady_ms'] for r in runs):10.2f}")
            for r in runs:
                diff = max(diff, max(abs(a - c) for a, c in zip(r["batches"][b]["scores"], cpu[b]["scores"],
                                                                 strict=True)))
        print(f"{search:11s} {statistics.median(r['start_s'] for r in runs):8.2f} " + " ".join(cols)
              + f" {diff:15.2e}   {runs[0]['providers'][0]}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
