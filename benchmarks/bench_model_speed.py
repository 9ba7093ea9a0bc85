"""Model-only ONNX Runtime speed (CPU EP): images/s at a given batch size and intra-op thread count.

Usage: python benchmarks/bench_model_speed.py models/cxr-classifier/model.onnx --batch 16 --threads 2 [--json]
(a model folder works too). Random inputs of the model's declared shape; warm-up runs are not timed;
the figure reported is the median over timed runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def measure(onnx_path: Path, *, batch: int = 16, threads: int = 2, warmup: int = 3, runs: int = 15,
            outputs: list[str] | None = None) -> dict[str, object]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    shape = [batch if not isinstance(d, int) else d for d in inp.shape]
    shape[0] = batch
    x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    for _ in range(warmup):
        sess.run(outputs, {inp.name: x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(outputs, {inp.name: x})
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {
        "model": str(onnx_path),
        "runtime": f"onnxruntime {ort.__version__} CPUExecutionProvider",
        "threads": threads,
        "batch": batch,
        "input_shape": shape,
        "images_per_s": round(batch / med, 1),
        "batch_ms_median": round(med * 1000, 1),
        "batch_ms_min": round(min(times) * 1000, 1),
        "onnx_mb": round(onnx_path.stat().st_size / 1e6, 2),
        "runs": runs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path, help="model.onnx or a model folder")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    args = ap.parse_args()
    path = args.model / "model.onnx" if args.model.is_dir() else args.model
    res = measure(path, batch=args.batch, threads=args.threads, runs=args.runs)
    if args.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k:>16}: {v}")


if __name__ == "__main__":
    main()
