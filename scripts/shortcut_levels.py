"""Measure how much of each heat map's evidence lies outside the lung fields, on real images (the shortcut level).

Usage:
    python scripts/shortcut_levels.py [--data ../shared/data] [--kermany 150] [--method gradcam]
                                      [--json OUT.json] [--panels DIR --panel-count 12]

For every image (all of nih14, all of ieee_lungs, a seeded random sample of the Kermany test set): the default
classifier's flagged findings (score >= balanced threshold), their maps from the same forward pass (what
``predict --heatmaps`` draws), the default segmenter's lung mask, and ``cxrtriage.explain.gating.outside_share`` of
each map. Prints the distribution of the share per source, per finding and source, the share of maps and images at
or above a few levels, and the share of the image area outside the lung fields (what a uniform map would give).
``--panels`` writes side-by-side pictures (radiograph | map with the lung-fields outline) of maps picked at random
in share bands, for looking at by eye. The level in ``cxrtriage/explain/gating.py`` was chosen from this output.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxrtriage.explain.api import explain_output, flagged_labels  # noqa: E402
from cxrtriage.explain.gating import lung_fields, outside_share  # noqa: E402
from cxrtriage.explain.overlay import blend, display_grey  # noqa: E402
from cxrtriage.io import read_image  # noqa: E402
from cxrtriage.model import load_classifier, load_segmenter  # noqa: E402

LEVELS = (0.4, 0.5, 0.6, 0.7)
BANDS = ((0.0, 0.3), (0.3, 0.5), (0.5, 0.7), (0.7, 1.01))


def _images(data: Path, n_kermany: int, seed: int) -> list[tuple[str, Path]]:
    out = [("nih14", p) for p in sorted((data / "nih14" / "images").glob("*.png"))]
    out += [("ieee_lungs", p) for p in sorted((data / "ieee_lungs" / "images").iterdir()) if p.is_file()]
    kermany = sorted((data / "kermany224" / "test").glob("*/*.jpeg"))
    random.Random(seed).shuffle(kermany)
    return out + [("kermany224", p) for p in kermany[:n_kermany]]


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def _panel(path: Path, label: str, share: float, out: Path, clf, seg, method: str) -> None:  # type: ignore[no-untyped-def]
    image = read_image(path)
    mi = clf.preprocess(image)
    output = clf.run(mi.array[None], features=True)
    (hm,) = explain_output(clf, output, [mi.geometry], [[label]], method=method)[0]
    fields = lung_fields(seg.segment(image))
    grey = display_grey(image.pixels)
    right = blend(grey, hm.original)
    if fields is not None:
        contours, _ = cv2.findContours(fields.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(right, contours, -1, (255, 255, 255), max(1, image.shape[0] // 300))
    left = np.repeat(np.rint(grey * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    both = np.concatenate([left, right], axis=1)
    both = cv2.resize(both, None, fx=384 / both.shape[0], fy=384 / both.shape[0], interpolation=cv2.INTER_AREA)
    cv2.putText(both, f"{path.name} {label} {hm.score:.2f} outside {share:.2f}", (4, 16), cv2.FONT_HERSHEY_SIMPLEX,
                0.45, (255, 255, 0), 1)
    cv2.imwrite(str(out), cv2.cvtColor(both, cv2.COLOR_RGB2BGR))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--kermany", type=int, default=150, help="Kermany test images (seeded random sample)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method", default="gradcam")
    ap.add_argument("--json", type=Path, help="write every map's share here")
    ap.add_argument("--panels", type=Path, help="write example pictures per share band into this folder")
    ap.add_argument("--panel-count", type=int, default=12)
    args = ap.parse_args()

    clf = load_classifier(None, device="cpu")
    seg = load_segmenter(None, device="cpu")
    rows: list[dict[str, object]] = []
    area_outside: list[float] = []
    images_with_maps: dict[str, list[float]] = defaultdict(list)  # source -> per image, the largest share
    for source, path in _images(args.data, args.kermany, args.seed):
        image = read_image(path)
        mi = clf.preprocess(image)
        output = clf.run(mi.array[None], features=True)
        labels = flagged_labels(clf, output.scores[0])
        maps = [h for h in explain_output(clf, output, [mi.geometry], [labels], method=args.method)[0] if not h.empty]
        if not maps:
            continue
        fields = lung_fields(seg.segment(image))
        if fields is None:
            continue
        area_outside.append(1.0 - float(fields.mean()))
        shares = []
        for h in maps:
            share = outside_share(h, fields)
            if share is None:
                continue
            shares.append(share)
            rows.append({"source": source, "path": str(path), "label": h.label, "score": h.score, "share": share})
        if shares:
            images_with_maps[source].append(max(shares))

    print(f"{len(rows)} maps of {sum(len(v) for v in images_with_maps.values())} images; image area outside the lung "
          f"fields: median {statistics.median(area_outside):.3f} (what a uniform map's share would be)")
    print("\n| source | finding | maps | median | p90 | p95 | max | " + " | ".join(f">= {t:g}" for t in LEVELS) + " |")
    print("|---|---|---|---|---|---|---|" + "---|" * len(LEVELS))
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in rows:
        groups[(str(r["source"]), "(all)")].append(float(r["share"]))  # type: ignore[arg-type]
        groups[(str(r["source"]), str(r["label"]))].append(float(r["share"]))  # type: ignore[arg-type]
    for (source, label), v in sorted(groups.items()):
        over = " | ".join(f"{100 * np.mean(np.array(v) >= t):.0f}%" for t in LEVELS)
        print(f"| {source} | {label} | {len(v)} | {statistics.median(v):.2f} | {_pct(v, 90):.2f} | {_pct(v, 95):.2f} "
              f"| {max(v):.2f} | {over} |")
    print("\nimages with at least one map at or above the level:")
    for source, v in sorted(images_with_maps.items()):
        print(f"  {source}: " + ", ".join(f">= {t:g}: {100 * np.mean(np.array(v) >= t):.0f}%" for t in LEVELS)
              + f" (of {len(v)} images with a map)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.panels:
        args.panels.mkdir(parents=True, exist_ok=True)
        rng = random.Random(args.seed)
        per_band = max(1, args.panel_count // len(BANDS))
        for lo, hi in BANDS:
            pick = [r for r in rows if lo <= float(r["share"]) < hi]  # type: ignore[arg-type]
            rng.shuffle(pick)
            for n, r in enumerate(pick[:per_band]):
                out = args.panels / f"share_{lo:.1f}-{min(hi, 1.0):.1f}_{n}.png"
                _panel(Path(str(r["path"])), str(r["label"]), float(r["share"]), out, clf, seg, args.method)  # type: ignore[arg-type]
        print(f"\npanels: {args.panels}")


if __name__ == "__main__":
    main()
