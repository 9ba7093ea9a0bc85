"""Cost of measuring the evidence outside the lungs in ``predict --heatmaps`` (without ``--lungs``), side by side.

Usage:
    python benchmarks/bench_shortcut.py [--images 32] [--batch 16] [--rounds 5] [--threads 2] [--json OUT.json]

Real images: the first N NIH ChestX-ray14 test images of the model's split list, read and preprocessed once up front
(every mode needs that). Each round runs, in alternating order, what ``predict --heatmaps`` does per batch after
decoding: the classifier with features, then the heat-map hook's ``on_batch`` (maps, overlay PNG + .npy per map):
  maps       the hook without a lung mask (no share measured: what ``--heatmaps`` cost before)
  share      the hook as ``predict --heatmaps`` runs it without ``--lungs``: the images that have a map are segmented
             (one segmenter pass per batch), then the lung fields and each map's share outside them
Ratios are medians of the per-round paired ratios (share / maps), which cancel most of the machine's load drift.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=REPO / "models" / "cxr-classifier")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    from bench_cam import nih_test_images

    from cxrtriage.explain.api import read_any_image
    from cxrtriage.model import Classifier, load_model, load_segmenter
    from cxrtriage.pipeline.config import PredictConfig
    from cxrtriage.pipeline.hooks.base import BatchItem, RunContext, ScoredBatch
    from cxrtriage.pipeline.hooks.heatmaps import HeatmapsHook
    from cxrtriage.results import ImageRecord, Status

    clf = load_model(args.model, device="cpu", intra_op_threads=args.threads)
    assert isinstance(clf, Classifier)
    seg = load_segmenter(None, device="cpu", intra_op_threads=args.threads)
    paths = nih_test_images(args.model, args.images)
    images = [read_any_image(p) for p in paths]
    inputs = [clf.preprocess(im) for im in images]
    batches = [list(range(i, min(i + args.batch, len(inputs)))) for i in range(0, len(inputs), args.batch)]
    arrays = [np.stack([inputs[i].array for i in b]) for b in batches]
    hooks = {"maps": HeatmapsHook(clf), "share": HeatmapsHook(clf, segmenter=seg)}
    counts = {"maps": 0, "shares": 0, "segmented": 0}

    def run(name: str, out_dir: Path) -> None:
        hook = hooks[name]
        for b, x in zip(batches, arrays, strict=True):
            ctx = RunContext(config=PredictConfig(inputs=(Path("."),), out_dir=out_dir), model=clf, out_dir=out_dir)
            output = clf.run(x, features=True)
            items = tuple(BatchItem(i, inputs[i], ImageRecord(str(paths[i]), Status.SCORED), images[i]) for i in b)
            records = hook.on_batch(ScoredBatch(items, output), ctx)
            if name == "share":
                counts["maps"] += sum(len(r.heatmaps or ()) for r in records)
                counts["shares"] += sum(len(r.outside_lungs) for r in records)

    times: dict[str, list[float]] = {k: [] for k in hooks}
    with tempfile.TemporaryDirectory() as tmp:
        for name in hooks:  # warm-up
            run(name, Path(tmp) / "warm")
        names = list(hooks)
        for r in range(args.rounds):
            for name in (names if r % 2 == 0 else names[::-1]):
                t = time.perf_counter()
                run(name, Path(tmp) / f"{name}{r}")
                times[name].append(time.perf_counter() - t)
        # the segmentation alone, for the breakdown
        seg_times = []
        for _ in range(args.rounds):
            t = time.perf_counter()
            for b in batches:
                seg.segment_inputs([seg.preprocess(images[i]) for i in b], [images[i].source for i in b],
                                   [images[i].pixel_spacing_mm for i in b])
            seg_times.append(time.perf_counter() - t)

    n = len(inputs)
    ratios = [s / m for s, m in zip(times["share"], times["maps"], strict=True)]
    runs = (args.rounds + 1)  # the warm-up run counts too
    res = {
        "model": f"{clf.manifest.name} {clf.manifest.version}", "segmenter": f"{seg.manifest.name} {seg.manifest.version}",
        "threads": args.threads, "images": n, "batch": args.batch, "rounds": args.rounds,
        "maps_per_image": round(counts["maps"] / runs / n, 2), "shares_per_image": round(counts["shares"] / runs / n, 2),
        "ms_per_image": {k: round(1000 * statistics.median(v) / n, 1) for k, v in times.items()},
        "segmenter_ms_per_image": round(1000 * statistics.median(seg_times) / n, 1),
        "ratio_share_vs_maps": [round(statistics.median(ratios), 3), round(min(ratios), 3), round(max(ratios), 3)],
    }
    print(json.dumps(res, indent=2))
    print(f"\npredict --heatmaps per batch (forward + maps + overlays): with the share outside the lungs / without = "
          f"{res['ratio_share_vs_maps'][0]:.3f} (min {res['ratio_share_vs_maps'][1]:.3f}, "
          f"max {res['ratio_share_vs_maps'][2]:.3f})")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
