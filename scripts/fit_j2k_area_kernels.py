"""Fit the filters that turn a JPEG 2000 resolution level into the area average of the full image (not a test).

A JPEG 2000 resolution level is the wavelet low-pass band: sharper than an s x s area average, and each of its
samples is centred on full pixel ``s*k`` where the area average of full pixels ``[s*k, s*(k+1))`` is centred on
``s*k + (s-1)/2``. `cxrtriage.io.reduced` corrects both with one small 2-D filter per wavelet (reversible 5/3 for
lossless, irreversible 9/7 for lossy) and reduction (1/2, 1/4, 1/8). This script derives those filters by least
squares from real radiographs that are not used to evaluate them: the ieee lung images in ``../shared/data``
(read by path, never copied), encoded here to JPEG 2000 (OpenJPEG through pydicom, in a temporary folder),
decoded at each reduction by the same code as ``predict``, and matched to the area average of the full decode.

Usage:

    python scripts/fit_j2k_area_kernels.py [--images ../shared/data/ieee_lungs/images] [--limit 60]

It prints, per (wavelet, reduction), the RMS difference to the area average before and after the filter on the
images it was fitted on and on a held-out fifth, then the filters as the literal in `cxrtriage/io/reduced.py`.
The evaluation on other images (NIH, scores and AUROC) is ``benchmarks/agreement.py``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.uid import JPEG2000, JPEG2000Lossless

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from encode_sets import _dicom8  # noqa: E402  (the benchmark's 8-bit DICOM maker; the script runs from a checkout)

from cxrtriage.io.dicom import read_dicom  # noqa: E402
from cxrtriage.io.reduced import AREA_KERNEL_TAPS, decode_j2k_reduced  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
SAMPLES_PER_IMAGE = 3000


def _area(full: np.ndarray, s: int) -> np.ndarray:
    """The s x s area average of ``full`` over the blocks that lie wholly inside it."""
    h, w = (full.shape[0] // s) * s, (full.shape[1] // s) * s
    return full[:h, :w].reshape(h // s, s, w // s, s).mean(axis=(1, 3))


def _raw_reduced(path: Path, s: int) -> np.ndarray:
    """The resolution level 1/s as the decoder returns it (before any correction), as float."""
    ds = pydicom.dcmread(path)
    frame = next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))
    red = decode_j2k_reduced(frame, rows=ds.Rows, columns=ds.Columns, max_scale=float(s), correct=False)
    assert red is not None and red.scale == s, (path, s)
    return red.samples.astype(np.float64)


def _pairs(raw: np.ndarray, target: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Rows of 4x4 raw neighbourhoods (offsets -1..+2) and the area averages they should give."""
    t = AREA_KERNEL_TAPS
    h, w = target.shape
    ys = rng.integers(1, h - t, SAMPLES_PER_IMAGE)
    xs = rng.integers(1, w - t, SAMPLES_PER_IMAGE)
    windows = np.lib.stride_tricks.sliding_window_view(raw, (t, t))
    return windows[ys - 1, xs - 1].reshape(len(ys), t * t), target[ys, xs]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=Path, default=SHARED / "ieee_lungs" / "images")
    ap.add_argument("--limit", type=int, default=60)
    ap.add_argument("--ratio", type=float, default=10.0, help="compression ratio of the lossy (9/7) encoding")
    args = ap.parse_args(argv)
    files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[: args.limit]
    if not files:
        print(f"no images under {args.images}", file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    kernels: dict[tuple[bool, int], np.ndarray] = {}
    with tempfile.TemporaryDirectory() as tmp:
        encoded: dict[bool, list[Path]] = {True: [], False: []}
        for n, f in enumerate(files):
            img = cv2.imdecode(np.fromfile(f, np.uint8), cv2.IMREAD_GRAYSCALE)
            if img is None or min(img.shape) < 512:
                continue
            for reversible in (True, False):
                ds = _dicom8(img)
                if reversible:
                    ds.compress(JPEG2000Lossless)
                else:
                    ds.compress(JPEG2000, j2k_cr=[args.ratio])
                out = Path(tmp) / f"{n}_{int(reversible)}.dcm"
                ds.save_as(out, enforce_file_format=True)
                encoded[reversible].append(out)
        for reversible in (True, False):
            paths = encoded[reversible]
            held_out = set(paths[::5])
            for s in (2, 4, 8):
                fit_a, fit_b, test = [], [], []
                for path in paths:
                    full = read_dicom(path).pixels.astype(np.float64)
                    raw, target = _raw_reduced(path, s), _area(full, s)
                    a, b = _pairs(raw, target, rng)
                    (test if path in held_out else fit_a).append((a, b) if path in held_out else a)
                    if path not in held_out:
                        fit_b.append(b)
                a, b = np.concatenate(fit_a), np.concatenate(fit_b)
                k, *_ = np.linalg.lstsq(a, b, rcond=None)
                k /= k.sum()  # a flat image stays flat: the filter keeps the mean exactly
                kernels[(reversible, s)] = k.reshape(AREA_KERNEL_TAPS, AREA_KERNEL_TAPS)
                centre = AREA_KERNEL_TAPS + 1  # the raw sample itself: row 1, column 1 of the 4x4 window
                ta, tb = np.concatenate([t[0] for t in test]), np.concatenate([t[1] for t in test])
                print(f"{'5/3 lossless' if reversible else '9/7 lossy   '} 1/{s}: RMS to the area average "
                      f"fit {np.sqrt(np.mean((a[:, centre] - b) ** 2)):.3f} -> {np.sqrt(np.mean((a @ k - b) ** 2)):.3f}"
                      f", held out {np.sqrt(np.mean((ta[:, centre] - tb) ** 2)):.3f} -> "
                      f"{np.sqrt(np.mean((ta @ k - tb) ** 2)):.3f} (grey levels of 255; {len(paths)} images)")
    print("\n_AREA_KERNELS = {")
    for (reversible, s), k in sorted(kernels.items(), key=lambda kv: (not kv[0][0], kv[0][1])):
        rows = ",\n        ".join("(" + ", ".join(f"{v:+.5f}" for v in row) + ")" for row in k)
        print(f"    ({reversible}, {s}): (\n        {rows}),")
    print("}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
