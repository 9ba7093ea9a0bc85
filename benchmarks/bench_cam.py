"""Cost of heat maps: model forward alone vs forward + CAMs for the flagged labels, interleaved in one run.

Usage:
    python benchmarks/bench_cam.py [--model models/cxr-classifier] [--images N] [--batch 16] [--rounds 9]
                                   [--threads 2] [--labels flagged|all] [--json OUT.json]

Real images: the first N NIH ChestX-ray14 test images of the model's split list (or of
../shared/data/nih14/labels.csv when the model has no split list), read and preprocessed once
up front (not timed: every mode needs that). Each round times, in a rotating order,
  fwd        Classifier.run(batch)                       logits + calibrated scores only
  fwd_feat   Classifier.run(batch, features=True)        + the last feature map
  fwd_cam_grid  fwd_feat + the Grad-CAM maps on the feature grid only (channel weights @ activations)
  fwd_cam    fwd_feat + explain_output(gradcam) for every flagged label of every image: the maps at
             model-input resolution, normalised (what `predict --heatmaps` computes before drawing)
  fwd_cam_orig  fwd_cam + each map resampled to the ORIGINAL image geometry (needed only to draw it)
  fwd_cam5   fwd_feat + the five gradient methods (gradcam, gradcampp, layercam, xgradcam, hirescam)
and, separately, the PNG + .npy writing of the fwd_cam maps (per map). Ratios are medians of the
per-round paired ratios (fwd_cam / fwd ...), which cancel most of the machine's load drift.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
GRADIENT = ("gradcam", "gradcampp", "layercam", "xgradcam", "hirescam")


def nih_test_images(model_dir: Path, n: int) -> list[Path]:
    splits = model_dir / "splits" / "splits.csv"
    if splits.is_file():
        with open(splits, newline="") as fh:
            rows = [r["path"] for r in csv.DictReader(fh) if r["source"] == "nih14" and r["split"] == "test"]
        paths = [DATA / p for p in rows]
    else:
        with open(DATA / "nih14" / "labels.csv", newline="") as fh:
            paths = [DATA / "nih14" / r["image"] for r in csv.DictReader(fh)]
    return paths[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=REPO / "models" / "cxr-classifier")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--labels", choices=("flagged", "all"), default="flagged")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()

    sys.path.insert(0, str(REPO))
    from cxrtriage.explain import METHODS, explain_output, flagged_labels, read_head
    from cxrtriage.explain.api import read_any_image
    from cxrtriage.explain.base import analytic_gradient, weighted_sum
    from cxrtriage.explain.overlay import overlay_text, save_heatmap
    from cxrtriage.model import Classifier, load_model

    clf = load_model(args.model, device="cpu", intra_op_threads=args.threads)
    assert isinstance(clf, Classifier)
    paths = nih_test_images(args.model, args.images)
    images = [read_any_image(p) for p in paths]
    inputs = [clf.preprocess(im) for im in images]
    batches = [list(range(i, min(i + args.batch, len(inputs)))) for i in range(0, len(inputs), args.batch)]
    arrays = [np.stack([inputs[i].array for i in b]) for b in batches]

    first = clf.run(np.stack([m.array for m in inputs]), features=True)
    if args.labels == "all":
        targets = [list(clf.labels) for _ in inputs]
    else:
        targets = [flagged_labels(clf, first.scores[i]) for i in range(len(inputs))]
    n_targets = sum(len(t) for t in targets)

    def fwd() -> None:
        for x in arrays:
            clf.run(x)

    def fwd_feat() -> None:
        for x in arrays:
            clf.run(x, features=True)

    def fwd_cams(methods: tuple[str, ...], original: bool = False, keep: bool = False) -> list:  # type: ignore[type-arg]
        """Forward + maps per batch; like a streaming pipeline, a batch's maps are dropped after it
        (``keep`` returns them, for the PNG timing)."""
        kept = []
        for b, x in zip(batches, arrays, strict=True):
            out = clf.run(x, features=True)
            for m in methods:
                rows = explain_output(clf, out, [inputs[i].geometry for i in b], [targets[i] for i in b], method=m)
                if original:  # materialise each map at the original geometry, then let it go
                    for row in rows:
                        for hm in row:
                            _ = hm.original
                            hm._cache.clear()
                if keep:
                    kept += rows
        return kept

    head = read_head(clf.manifest)
    gradcam_weights = METHODS["gradcam"].channel_weights
    assert gradcam_weights is not None

    def fwd_cam_grid() -> None:
        """Only the maps on the feature grid (channel weights @ activations), before resizing."""
        for b, x in zip(batches, arrays, strict=True):
            out = clf.run(x, features=True)
            assert out.features is not None
            for j, i in enumerate(b):
                idx = [clf.labels.index(lab) for lab in targets[i]]
                if idx:
                    feats = out.features[j]
                    weighted_sum(gradcam_weights(analytic_gradient(head, idx, feats.shape[1:]), feats), feats)

    modes = {"fwd": fwd, "fwd_feat": fwd_feat, "fwd_cam_grid": fwd_cam_grid, "fwd_cam": lambda: fwd_cams(("gradcam",)),
             "fwd_cam_orig": lambda: fwd_cams(("gradcam",), original=True), "fwd_cam5": lambda: fwd_cams(GRADIENT)}
    for f in modes.values():  # warm-up
        f()
    times: dict[str, list[float]] = {k: [] for k in modes}
    names = list(modes)
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for k in order:
            t = time.perf_counter()
            modes[k]()
            times[k].append(time.perf_counter() - t)

    # PNG + .npy writing, measured separately (per map); with one method the rows are in image order
    maps = [(i, hm) for i, row in enumerate(fwd_cams(("gradcam",), keep=True)) for hm in row if not hm.empty]
    png_times = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (i, hm) in enumerate(maps[:24]):
            t = time.perf_counter()
            save_heatmap(Path(tmp) / f"{k}.png", images[i], hm, overlay_text(clf.manifest, hm))
            png_times.append(time.perf_counter() - t)

    n = len(inputs)
    med = {k: statistics.median(v) for k, v in times.items()}

    def paired(a: str, b: str) -> tuple[float, float, float]:
        ratios = [x / y for x, y in zip(times[a], times[b], strict=True)]
        return statistics.median(ratios), min(ratios), max(ratios)

    res = {
        "model": f"{clf.manifest.name} {clf.manifest.version}",
        "input": clf.input_size,
        "threads": args.threads,
        "images": n,
        "batch": args.batch,
        "rounds": args.rounds,
        "labels": args.labels,
        "maps_per_round": n_targets,
        "maps_per_image": round(n_targets / n, 2),
        "ms_per_image": {k: round(1000 * v / n, 2) for k, v in med.items()},
        "ratio_fwd_feat_vs_fwd": [round(v, 3) for v in paired("fwd_feat", "fwd")],
        "ratio_fwd_cam_grid_vs_fwd": [round(v, 3) for v in paired("fwd_cam_grid", "fwd")],
        "ratio_fwd_cam_vs_fwd": [round(v, 3) for v in paired("fwd_cam", "fwd")],
        "ratio_fwd_cam_vs_fwd_feat": [round(v, 3) for v in paired("fwd_cam", "fwd_feat")],
        "ratio_fwd_cam_orig_vs_fwd": [round(v, 3) for v in paired("fwd_cam_orig", "fwd")],
        "ratio_fwd_cam5_vs_fwd": [round(v, 3) for v in paired("fwd_cam5", "fwd")],
        "cam_ms_per_map": round(1000 * max(med["fwd_cam"] - med["fwd_feat"], 0.0) / max(n_targets, 1), 3),
        "png_npy_ms_per_map_median": round(1000 * statistics.median(png_times), 1) if png_times else None,
    }
    print(json.dumps(res, indent=2))
    print(f"\nCAM overhead (gradcam, {args.labels} labels, {res['maps_per_image']} maps/image): forward+CAM / forward = "
          f"{res['ratio_fwd_cam_vs_fwd'][0]:.3f} (min {res['ratio_fwd_cam_vs_fwd'][1]:.3f}, "
          f"max {res['ratio_fwd_cam_vs_fwd'][2]:.3f}); goal < 1.10")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
