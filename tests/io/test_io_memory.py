"""Memory per image, measured in a fresh process: bombs are refused cheaply, and `image_memory` bounds real peaks.

Row 4 of issue 11 (memory budgeted per image, float copies included) and the "little memory" half of rows 5-7.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from factories import make_cxr_dataset
from hostile import (
    deflated_bomb,
    good_png,
    j2k_claiming,
    jpeg_claiming,
    jpegls_claiming,
    png_claiming,
    tiff_duplicate_size,
)
from pydicom.uid import UID, JPEG2000Lossless, RLELossless

from cxrtriage.io.limits import MAX_IMAGE_MEMORY, image_memory

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc (VmHWM reset)")]


def _measure(files: list[Path], warm: list[Path]) -> dict[str, dict[str, object]]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, str(REPO / "tests" / "memprobe.py"), *(f"warm:{w}" for w in warm), *map(str, files)]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    return {Path(str(r["path"])).name: r for r in rows}


def test_hostile_files_are_refused_using_little_memory(tmp_path: Path) -> None:
    nii = tmp_path / "nifti_bomb.nii.gz"
    header = bytearray(348)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, 2, 8, 8, 1, 1, 1, 1, 1)
    struct.pack_into("<hh", header, 70, 512, 16)
    struct.pack_into("<f", header, 108, float(1 << 30))
    header[344:348] = b"n+1\x00"
    nii.write_bytes(gzip.compress(bytes(header) + b"\x01\x00\x00\x00" + struct.pack("<ii", (1 << 30) - 352, 4)))
    bombs = [j2k_claiming(tmp_path / "j2k.dcm"), jpeg_claiming(tmp_path / "jpeg.dcm"),
             jpeg_claiming(tmp_path / "jpeg_lossless.dcm", lossless=True), jpegls_claiming(tmp_path / "jls.dcm"),
             deflated_bomb(tmp_path / "deflate.dcm"), tiff_duplicate_size(tmp_path / "dup.tif"),
             png_claiming(tmp_path / "ihdr.png"), png_claiming(tmp_path / "ihdr_max.png", side=65535), nii]
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.uint16)), str(tmp_path / "warm.nii.gz"))
    warm = [good_png(tmp_path / "warm.png"), j2k_claiming(tmp_path / "warm_j2k.dcm", side=64),
            jpegls_claiming(tmp_path / "warm_jls.dcm", side=64), tmp_path / "warm.nii.gz"]
    measured = _measure(bombs, warm)
    assert set(measured) == {b.name for b in bombs}
    for name, r in measured.items():
        assert r["status"] == "failed", (name, r["reason"])
        assert int(str(r["peak"])) < 32 << 20, f"{name}: {int(str(r['peak'])) >> 20} MiB to refuse it"


def _pattern(n: int) -> np.ndarray:
    yy, xx = np.mgrid[0:n, 0:n]
    rng = np.random.default_rng(0)
    return ((np.sin(xx / 50.0) + np.cos(yy / 70.0) + 2) * 1000 + rng.integers(0, 50, (n, n))).astype(np.uint16)


def _worst_cases(folder: Path, n: int) -> dict[str, tuple[str, int, int]]:
    """Images of side ``n`` on each reader's most expensive path: name -> (reader, samples, bytes per sample)."""
    img = _pattern(n)
    cases: dict[str, tuple[str, int, int]] = {}

    def dicom(name: str, syntax: str | None) -> None:
        ds = make_cxr_dataset(n, n, pixels=img & 4095, bits_stored=12, photometric="MONOCHROME1",
                              RescaleSlope=2.5, RescaleIntercept=-100)  # float64 rescale + inversion: the worst path
        if syntax == "deflate":
            ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.1.99")
        elif syntax is not None:
            ds.compress(syntax)
        ds.save_as(folder / f"{name}_{n}.dcm", enforce_file_format=True)
        cases[f"{name}_{n}.dcm"] = ("dicom", 1, 2)

    dicom("native", None)
    dicom("rle", RLELossless)
    dicom("j2k", JPEG2000Lossless)
    dicom("deflated", "deflate")
    cv2.imwrite(str(folder / f"grey16_{n}.png"), img)
    cases[f"grey16_{n}.png"] = ("raster", 1, 2)
    cv2.imwrite(str(folder / f"grey_rgb16_{n}.png"), np.dstack([img] * 3))  # grey in RGB: channels averaged
    cases[f"grey_rgb16_{n}.png"] = ("raster", 3, 2)
    cv2.imwrite(str(folder / f"grey8_{n}.jpg"), (img >> 4).astype(np.uint8))
    cases[f"grey8_{n}.jpg"] = ("raster", 1, 1)
    cv2.imwrite(str(folder / f"grey16_{n}.tif"), img)
    cases[f"grey16_{n}.tif"] = ("raster", 1, 2)
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(img.astype(np.float64)), str(folder / f"f64_{n}.nrrd"))
    cases[f"f64_{n}.nrrd"] = ("sitk", 1, 8)
    return cases


def test_memory_estimate_bounds_the_measured_peak(tmp_path: Path) -> None:
    # 3072^2: every float32 copy (36 MiB) is above glibc's largest mmap threshold, so it shows in the resident set.
    n = 3072
    cases = _worst_cases(tmp_path, n)
    _worst_cases(tmp_path, 64)  # the warm-up twins
    measured = _measure([tmp_path / name for name in cases], [tmp_path / name.replace(f"_{n}", "_64") for name in cases])
    report = []
    for name, (reader, samples, bps) in cases.items():
        r = measured[name]
        assert r["status"] == "scored", (name, r["reason"])
        estimate = image_memory(n, n, samples=samples, bytes_per_sample=bps, reader=reader,  # type: ignore[arg-type]
                                encoded_bytes=(tmp_path / name).stat().st_size)
        peak = int(str(r["peak"]))
        report.append(f"{name}: {peak / n / n:.1f} B/px measured, {estimate / n / n:.1f} estimated")
        assert peak <= estimate, report[-1]
    print("\n".join(report))
    assert image_memory(16384, 16384, bytes_per_sample=1, reader="raster") > MAX_IMAGE_MEMORY  # the 1.3 GB PNG
