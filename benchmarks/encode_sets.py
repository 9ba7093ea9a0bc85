"""Encode test sets for the decode benchmark and the reduced-decoding agreement check (outputs go to /tmp, never the repo).

Two sets:

- ``rg1``: the NEMA RG1 chest (1955 x 1841, 15-bit CR) in six encodings, ``--copies`` files each (new UIDs per
  copy, so every copy is a study of its own): ``png8`` (8-bit PNG, windowed 0.5-99.5 %), ``dicom16``
  (uncompressed, the NEMA UNCR pixels), ``j2k_lossless`` / ``j2k_lossy`` (the NEMA J2KR / J2KI codestreams as
  published), ``jpeg_baseline`` (8-bit DICOM, OpenCV JPEG quality 90), ``jpeg_lossless`` (process 14 SV1,
  GDCM), and ``htj2k_lossless`` / ``htj2k_lossy`` (High-Throughput JPEG 2000 of the UNCR pixels, OpenJPH through
  imagecodecs: reversible, and irreversible at about 9:1).
- ``nih``: the 486 labelled NIH ChestX-ray14 PNGs as 8-bit DICOM (DX, CHEST, ViewPosition from the labels) in
  ``j2k_lossless``, ``j2k_lossy`` (OpenJPEG, compression ratio ``--ratio``) and ``jpeg_baseline`` (quality 90);
  with ``--kinds`` also ``png8``, ``dicom8`` (uncompressed), ``dicom16`` (uncompressed, the 8-bit values x 257:
  the files that are decoded in full and then block averaged) and ``htj2k_lossless`` / ``htj2k_lossy`` (as for
  rg1); all named like the PNGs so that ``labels.csv`` joins them; ``--size 1024`` upsamples them (bicubic) to the published
  originals' size first, so that reduced decoding (which keeps twice the model's pixels) has something to reduce.

Usage (not a test):

    python benchmarks/encode_sets.py rg1 --out /tmp/cxr-enc/rg1 [--copies 24]
    python benchmarks/encode_sets.py rg1 --from /tmp/seeds --out /tmp/cxr-enc/rg1 --copies 96   # no shared data
    python benchmarks/encode_sets.py nih --out /tmp/cxr-enc/nih [--limit 486] [--ratio 10]
"""

from __future__ import annotations

import argparse
import copy
import csv
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    JPEG2000,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    SecondaryCaptureImageStorage,
    generate_uid,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RG1 = "dicom/cxr_real/nema_wg04_RG1_{}.dcm"
DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
RG1_KINDS = ("png8", "dicom16", "j2k_lossless", "j2k_lossy", "jpeg_baseline", "jpeg_lossless", "htj2k_lossless",
             "htj2k_lossy")


def _new_uids(ds: Dataset) -> None:
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
    if getattr(ds, "file_meta", None) is not None:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID


def _window8(pixels: np.ndarray, monochrome1: bool) -> np.ndarray:
    """8-bit MONOCHROME2 picture of the stored values, windowed to their 0.5-99.5 percentiles."""
    x = pixels.astype(np.float32)
    lo, hi = np.percentile(x, (0.5, 99.5))
    u8 = np.clip((x - lo) * (255.0 / max(hi - lo, 1.0)), 0, 255).astype(np.uint8)
    return (255 - u8) if monochrome1 else u8


def _dicom8(pixels: np.ndarray, *, view: str = "PA", patient: str = "ANON") -> Dataset:
    """An 8-bit MONOCHROME2 DX frontal chest, uncompressed."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = DX_STORAGE
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = DX_STORAGE
    _new_uids(ds)
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", view
    ds.PatientID, ds.PatientName = patient, patient
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    return ds


def _jpeg_baseline(ds: Dataset, quality: int = 90) -> Dataset:
    """``ds`` (8-bit grey, uncompressed) as JPEG baseline, one component, encoded by OpenCV (libjpeg)."""
    arr = np.frombuffer(ds.PixelData, np.uint8)[: ds.Rows * ds.Columns].reshape(ds.Rows, ds.Columns)  # odd: padded
    ok, buf = cv2.imencode(".jpg", arr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return _with_stream(ds, buf.tobytes(), JPEGBaseline8Bit, lossy_method="ISO_10918_1", raw_bytes=arr.nbytes)


def _with_stream(ds: Dataset, stream: bytes, syntax: str, *, lossy_method: str = "", raw_bytes: int = 0) -> Dataset:
    """``ds`` with ``stream`` as its one fragment of encapsulated pixel data under ``syntax``; a lossy stream
    (``lossy_method``) also gets the Lossy Image Compression attributes, its ratio to ``raw_bytes``."""
    ds.PixelData = encapsulate([stream])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = pydicom.uid.UID(syntax)
    if lossy_method:
        ds.LossyImageCompression, ds.LossyImageCompressionMethod = "01", lossy_method
        ds.LossyImageCompressionRatio = f"{raw_bytes / len(stream):.2f}"
    return ds


def _gdcm_jpeg_lossless(src: Path, dst: Path) -> None:
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    if not reader.Read():
        raise RuntimeError(f"GDCM cannot read {src}")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError("GDCM could not encode JPEG lossless")
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    if not writer.Write():
        raise RuntimeError(f"GDCM could not write {dst}")


# OpenJPH's quantisation step for the lossy sets (it has no rate control): about 9:1 on the RG1 chest (15-bit), and
# 9.6:1 on the NIH images at 1024 px (8-bit; the first five), as the JPEG 2000 lossy sets' ratio of 10
HTJ2K_LOSSY_STEP = {"rg1": 0.002, "nih": 0.005}


def _htj2k(uncr: Dataset, *, lossy: bool, step: float = HTJ2K_LOSSY_STEP["rg1"]) -> Dataset:
    """The uncompressed data set with its pixels as High-Throughput JPEG 2000 (pydicom cannot encode it)."""
    import imagecodecs

    pixels = uncr.pixel_array
    if lossy:
        return _with_stream(copy.deepcopy(uncr), imagecodecs.htj2k_encode(pixels, level=step, reversible=False),
                            pydicom.uid.HTJ2K, lossy_method="ISO_15444_15", raw_bytes=pixels.nbytes)
    return _with_stream(copy.deepcopy(uncr), imagecodecs.htj2k_encode(pixels), pydicom.uid.HTJ2KLossless)


def make_rg1(out: Path, copies: int) -> None:
    uncr = pydicom.dcmread(SHARED / RG1.format("UNCR"))
    mono1 = uncr.PhotometricInterpretation == "MONOCHROME1"
    u8 = _window8(uncr.pixel_array, mono1)
    base8 = _dicom8(u8)
    base8.SOPClassUID = SecondaryCaptureImageStorage  # any single-frame image class; CR/DX rules key on Modality
    base8.file_meta.MediaStorageSOPClassUID = base8.SOPClassUID
    folders = {k: out / k for k in RG1_KINDS}
    for f in folders.values():
        f.mkdir(parents=True, exist_ok=True)
    jll_master = out / "jpeg_lossless_master.dcm"
    _gdcm_jpeg_lossless(SHARED / RG1.format("UNCR"), jll_master)
    htj2k = {"htj2k_lossless": _htj2k(uncr, lossy=False), "htj2k_lossy": _htj2k(uncr, lossy=True)}
    for i in range(copies):
        name = f"rg1_{i:03d}"
        ok, png = cv2.imencode(".png", u8)
        assert ok
        (folders["png8"] / f"{name}.png").write_bytes(png.tobytes())
        for key, src in (("dicom16", RG1.format("UNCR")), ("j2k_lossless", RG1.format("J2KR")),
                         ("j2k_lossy", RG1.format("J2KI"))):
            ds = pydicom.dcmread(SHARED / src)
            _new_uids(ds)
            ds.save_as(folders[key] / f"{name}.dcm", enforce_file_format=True)
        ds = pydicom.dcmread(jll_master)
        _new_uids(ds)
        ds.save_as(folders["jpeg_lossless"] / f"{name}.dcm", enforce_file_format=True)
        for key, master in htj2k.items():
            ds = copy.deepcopy(master)
            _new_uids(ds)
            ds.save_as(folders[key] / f"{name}.dcm", enforce_file_format=True)
        jb = _jpeg_baseline(pydicom.dcmread(_save_tmp(base8, out)))
        _new_uids(jb)
        jb.save_as(folders["jpeg_baseline"] / f"{name}.dcm", enforce_file_format=True)
    jll_master.unlink()
    (out / "_base8.dcm").unlink(missing_ok=True)
    print(f"{copies} copies of RG1 in {', '.join(folders)} under {out}")


def copy_rg1(src: Path, out: Path, copies: int) -> None:
    """``copies`` files per encoding from the first file of each encoding in ``src`` (an rg1 set made here), new
    UIDs per DICOM copy: the set on a machine that has the project but not the shared data (e.g. a lent GPU)."""
    done = []
    for key in RG1_KINDS:
        seeds = sorted((src / key).glob("*.*")) if (src / key).is_dir() else []
        if not seeds:
            continue
        (out / key).mkdir(parents=True, exist_ok=True)
        for i in range(copies):
            dst = out / key / f"rg1_{i:03d}{seeds[0].suffix}"
            if seeds[0].suffix != ".dcm":
                shutil.copyfile(seeds[0], dst)  # a copy of its own (not a link: discovery counts a file once)
                continue
            ds = pydicom.dcmread(seeds[0])
            _new_uids(ds)
            ds.save_as(dst, enforce_file_format=True)
        done.append(key)
    if not done:
        raise SystemExit(f"no encoding folders (png8, dicom16, ...) with files under {src}")
    print(f"{copies} copies of {src}'s first file in {', '.join(done)} under {out}")


def _save_tmp(ds: Dataset, out: Path) -> Path:
    path = out / "_base8.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


NIH_KINDS = ("j2k_lossless", "j2k_lossy", "jpeg_baseline", "png8", "dicom8", "dicom16", "htj2k_lossless", "htj2k_lossy")


def make_nih(out: Path, limit: int, ratio: float, size: int = 0,
             kinds: tuple[str, ...] = ("j2k_lossless", "j2k_lossy", "jpeg_baseline")) -> None:
    src = SHARED / "nih14"
    rows = list(csv.DictReader(open(src / "labels.csv", newline="", encoding="utf-8")))[:limit]
    for k in kinds:
        (out / k).mkdir(parents=True, exist_ok=True)
    for n, r in enumerate(rows):
        img = cv2.imdecode(np.fromfile(src / r["image"], np.uint8), cv2.IMREAD_GRAYSCALE)
        if size and size != img.shape[0]:  # the published originals are 1024 px; only 512 px copies are shared
            img = cv2.resize(img, (size * img.shape[1] // img.shape[0], size), interpolation=cv2.INTER_CUBIC)
        stem = Path(r["image"]).stem
        view = r["view"] if r["view"] in ("PA", "AP") else "PA"
        for kind in kinds:
            if kind == "png8":
                cv2.imwrite(str(out / kind / f"{stem}.png"), img)
                continue
            ds = _dicom8(img, view=view, patient=f"NIH{r['patient_id']}")
            if kind == "dicom8":
                pass
            elif kind == "dicom16":  # the same picture in 16 bits (x 257: 0..255 -> 0..65535)
                ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
                ds.PixelData = (img.astype(np.uint16) * 257).tobytes()
            elif kind == "jpeg_baseline":
                ds = _jpeg_baseline(ds)
            elif kind in ("htj2k_lossless", "htj2k_lossy"):
                ds = _htj2k(ds, lossy=kind == "htj2k_lossy", step=HTJ2K_LOSSY_STEP["nih"])
            elif kind == "j2k_lossless":
                ds.compress(JPEG2000Lossless)
            else:
                ds.compress(JPEG2000, j2k_cr=[ratio])
                ds.LossyImageCompression, ds.LossyImageCompressionMethod = "01", "ISO_15444_1"
                ds.LossyImageCompressionRatio = f"{ratio:g}"
            ds.save_as(out / kind / f"{stem}.dcm", enforce_file_format=True)
        if (n + 1) % 100 == 0:
            print(f"{n + 1}/{len(rows)}", file=sys.stderr)
    shutil.copy(src / "labels.csv", out / "labels.csv")
    print(f"{len(rows)} NIH images in {', '.join(kinds)} under {out}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("set", choices=("rg1", "nih"))
    ap.add_argument("--out", type=Path, required=True, help="output folder (outside the repository, e.g. /tmp/...)")
    ap.add_argument("--copies", type=int, default=24, help="rg1: files per encoding")
    ap.add_argument("--from", dest="from_set", type=Path, default=None,
                    help="rg1: copy the first file of each encoding of this rg1 set (no shared data needed)")
    ap.add_argument("--limit", type=int, default=486, help="nih: at most this many images")
    ap.add_argument("--ratio", type=float, default=10.0, help="nih: JPEG 2000 lossy compression ratio")
    ap.add_argument("--size", type=int, default=0, help="nih: resample to this many rows first (bicubic; 0: 512 as shared)")
    ap.add_argument("--kinds", nargs="+", choices=NIH_KINDS, default=list(NIH_KINDS[:3]),
                    help="nih: the encodings to write (default: the three with a reduced decoding of their own)")
    args = ap.parse_args(argv)
    if Path(__file__).resolve().parents[1] in args.out.resolve().parents:
        print("write the sets outside the repository (e.g. /tmp/cxr-enc): they are never committed", file=sys.stderr)
        return 2
    if args.set == "rg1" and args.from_set is not None:
        copy_rg1(args.from_set, args.out, args.copies)
    elif args.set == "rg1":
        make_rg1(args.out, args.copies)
    else:
        make_nih(args.out, args.limit, args.ratio, args.size, tuple(args.kinds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
