"""How clean are a lung segmenter's masks on images with no masks (issue 15): stray pieces and missing lungs.

Usage:
    python scripts/segmenter_fragments.py MODEL [MODEL ...] [--data ../shared/data] [--per-source 150] [--seed 0]

MODEL is a model folder or name (as `cxrtriage segment --model` takes). The same random images are read for every
model: ``--per-source`` NIH ChestX-ray14 adults and as many pediatric (kermany224) images, none of which has a lung
mask. For each image and each lung label, the connected components of the predicted mask are counted: an image is
"fragmented" when a lung has a stray piece larger than 2% of its main component, and "a lung missing" when a lung
label is absent. Neither figure says whether the main outlines are right; they count the failures a reader sees at
once (blobs over an arm or an image corner, a lung cut in pieces).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxrtriage.io.raster import read_raster  # noqa: E402
from cxrtriage.model import load_segmenter  # noqa: E402

STRAY_SHARE = 0.02  # a piece larger than this share of its lung's main component counts as a fragment


def lung_pieces(labels: np.ndarray, label: int) -> list[int]:
    """Pixel counts of the connected components (8-connected) of one label, largest first."""
    n, _, stats, _ = cv2.connectedComponentsWithStats((labels == label).astype(np.uint8), connectivity=8)
    return sorted((int(a) for a in stats[1:n, cv2.CC_STAT_AREA]), reverse=True)


def judge(labels: np.ndarray, lung_labels: tuple[int, ...] = (1, 2)) -> tuple[bool, bool]:
    """(fragmented, a lung missing) for one label map."""
    fragmented = missing = False
    for lab in lung_labels:
        pieces = lung_pieces(labels, lab)
        if not pieces:
            missing = True
        elif any(p > STRAY_SHARE * pieces[0] for p in pieces[1:]):
            fragmented = True
    return fragmented, missing


def sample(data: Path, per_source: int, seed: int) -> dict[str, list[Path]]:
    rng = np.random.default_rng(seed)
    nih = sorted((data / "nih14" / "images").glob("*.png"))
    kids = sorted((data / "kermany224").glob("*/*/*.jpeg"))
    return {src: [files[i] for i in sorted(rng.choice(len(files), size=min(per_source, len(files)), replace=False))]
            for src, files in (("NIH", nih), ("pediatric", kids))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--per-source", type=int, default=150)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    images = sample(a.data, a.per_source, a.seed)
    print("| model | " + " | ".join(f"{s} fragmented" for s in images) + " | a lung missing |")
    print("|---|" + "---|" * (len(images) + 1))
    for name in a.models:
        seg = load_segmenter(name)
        cells, missing, total = [], 0, 0
        for files in images.values():
            frag = 0
            for f in files:
                fragmented, gone = judge(seg.segment(read_raster(f)).labels)
                frag += fragmented
                missing += gone
            total += len(files)
            cells.append(f"{frag} / {len(files)} ({100 * frag / len(files):.1f}%)")
        label = f"{seg.manifest.name} {seg.manifest.version} ({name})"
        print(f"| {label} | " + " | ".join(cells) + f" | {missing} of {total} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
