"""Cost of the population estimate from the image in ``predict``, side by side: estimate on vs off.

Usage:
    python benchmarks/bench_population_estimate.py [--input DIR] [--limit 160] [--rounds 6] [--workers 1]
        [--threads 1] [--json OUT.json]

Both modes run the whole ``predict`` pipeline (``run_predict``) on the same images with the same model session:
  on    the default: the classifier's feature maps are fetched with the logits and the triage hook computes the
        estimate (global average pooling, one dot product per image)
  off   ``--population unknown``: no feature maps fetched, no estimate
Rounds alternate the order of the two modes; the ratio is the median of the per-round paired ratios (on / off), which
cancels most of the load drift of a shared machine. Target: ~1.0 (the estimate costs nothing measurable).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxrtriage.model import load_classifier  # noqa: E402
from cxrtriage.pipeline.config import PredictConfig  # noqa: E402
from cxrtriage.pipeline.predict import run_predict  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", type=Path, default=REPO.parent / "shared" / "data" / "kermany224" / "test" / "NORMAL")
    ap.add_argument("--limit", type=int, default=160)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    files = sorted(p for p in args.input.iterdir() if p.is_file())[: args.limit]
    model = load_classifier(REPO / "models" / "cxr-classifier", device="cpu", intra_op_threads=args.threads)
    seconds: dict[str, list[float]] = {"on": [], "off": []}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "in"
        inputs.mkdir()
        for p in files:
            (inputs / p.name).symlink_to(p.resolve())
        for r in range(args.rounds):
            modes = [("on", None), ("off", "unknown")]
            for name, population in modes if r % 2 == 0 else modes[::-1]:
                t0 = time.perf_counter()
                run_predict(PredictConfig(inputs=(inputs,), out_dir=Path(tmp) / f"{name}{r}", workers=args.workers,
                                          population=population), model=model)
                seconds[name].append(time.perf_counter() - t0)
    ratio = statistics.median(a / b for a, b in zip(seconds["on"], seconds["off"], strict=True))
    for name, s in seconds.items():
        print(f"{name:>4}: median {statistics.median(s):.2f} s for {len(files)} files "
              f"({len(files) / statistics.median(s):.1f} img/s); rounds {', '.join(f'{x:.2f}' for x in s)}")
    print(f"time on / off: {ratio:.3f} (median of per-round ratios)")
    if args.json:
        args.json.write_text(json.dumps({"files": len(files), "seconds": seconds, "ratio_on_off": ratio}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
