#!/usr/bin/env python3
"""Run every user-facing command on fixed inputs and compare two such runs: "nothing changed for users".

A refactoring must leave the outputs of cxrtriage unchanged. This script runs, with the code of a given
checkout (``--repo``):

- ``predict --lungs --heatmaps --report --dicom`` on ``sample_data/`` and the shared DICOM corpus;
- ``segment`` and ``explain --flagged`` (two methods, lung-gated) on the same inputs;
- ``predict`` on a small labelled set (Kermany test + NIH images from ``../shared/data``), then
  ``evaluate`` and ``calibrate`` on it, ``predict --site`` with the site file, and ``evaluate`` again;

and saves everything under ``--out``. ``compare A B`` then checks two such folders: results/worklist/
segment/explain CSV and JSONL equal (timing and generated-UID fields aside), masks and raw maps equal,
overlay and report images equal, DICOM objects equal element by element (generated UIDs, dates and times
aside; SEG pixels exact, SC pixels reported), evaluation JSON and site file equal, report text equal.

Usage (the shared data must sit at ``../shared/data`` beside the repository, or pass ``--shared``)::

    git worktree add /tmp/cxr-before <old-commit>
    python scripts/compare_outputs.py run --repo /tmp/cxr-before --out /tmp/outputs-before
    python scripts/compare_outputs.py run --repo . --out /tmp/outputs-after
    python scripts/compare_outputs.py compare /tmp/outputs-before /tmp/outputs-after

Exit status of ``compare``: 0 when equal, 1 with every difference listed.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

META = "compare_meta.json"
# Inputs are copied here, the same path for every run, so that paths (and names derived from them, such as the
# report slugs of folder studies) are the same whichever checkout or output folder a run used.
INPUTS = Path(tempfile.gettempdir()) / "cxrtriage-compare-inputs"
# Fields whose values legitimately differ between two runs of the same code.
VOLATILE_KEYS = {"started_at", "finished_at", "cwd", "generated_at", "seconds", "elapsed", "created", "created_at",
                 "images_per_s", "wall_s"}
DICOM_VOLATILE_VRS = {"UI", "DA", "TM", "DT"}
_TIME = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d+)?(?:[+-]\d\d:\d\d|Z)?")
_DATA_URI = re.compile(r"data:[a-z/+.-]+;base64,[A-Za-z0-9+/=]+")


# --------------------------------------------------------------------------- run


def _labelled_set(shared: Path, dest: Path) -> Path:
    """Symlink 48 Kermany test images and 40 NIH images into ``dest``; write ``dest/../labels.csv``."""
    dest.mkdir(parents=True, exist_ok=True)
    labels = dest.parent / "labels.csv"
    rows: list[list[Any]] = []
    with open(shared / "kermany224" / "labels.csv", newline="") as f:
        kermany = [r for r in csv.DictReader(f) if r["split"] == "test"][::13]
    for r in kermany:
        name = "k_" + r["image"].replace("/", "_")
        y = int(r["label"] == "PNEUMONIA")
        rows.append([name, y, y, "kermany", "unknown"])
        (dest / name).symlink_to(shared / "kermany224" / r["image"])
    with open(shared / "nih14" / "labels.csv", newline="") as f:
        nih = list(csv.DictReader(f))[:40]
    for r in nih:
        name = "n_" + Path(r["image"]).name
        rows.append([name, int(r["Pneumonia"]), 1 - int(r["no_finding"]), "nih", r["sex"]])
        (dest / name).symlink_to(shared / "nih14" / r["image"])
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "pneumonia", "abnormal", "source", "sex"])
        w.writerows(rows)
    return labels


def _prepare_inputs(repo: Path, shared: Path) -> None:
    """Fill ``INPUTS`` once (a temporary folder renamed into place), so that runs in parallel share it safely;
    it is rebuilt only when the repository's sample_data differs from the copy."""
    if INPUTS.is_dir() and _same_tree(repo / "sample_data", INPUTS / "sample_data"):
        return
    tmp = Path(tempfile.mkdtemp(prefix="cxrtriage-compare-inputs-", dir=INPUTS.parent))
    shutil.copytree(repo / "sample_data", tmp / "sample_data")
    _labelled_set(shared, tmp / "labelled" / "scans")
    old = INPUTS.with_name(INPUTS.name + f".old-{os.getpid()}")
    if INPUTS.exists():
        INPUTS.rename(old)
    tmp.rename(INPUTS)
    shutil.rmtree(old, ignore_errors=True)


def _same_tree(a: Path, b: Path) -> bool:
    if not b.is_dir():
        return False
    fa = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    fb = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return fa == fb and all((a / r).read_bytes() == (b / r).read_bytes() for r in fa)


def _cxr(repo: Path, log: Path, *args: object) -> None:
    cmd = [sys.executable, "-m", "cxrtriage", *(str(a) for a in args)]
    t0 = time.perf_counter()
    env = dict(os.environ, COLUMNS="200", NO_COLOR="1")
    res = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env)
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ {' '.join(cmd[2:])}  (rc {res.returncode}, {time.perf_counter() - t0:.1f} s)\n")
        f.write(res.stdout + res.stderr + "\n")
    if res.returncode != 0:
        raise SystemExit(f"command failed (rc {res.returncode}): {' '.join(cmd)}\n{res.stdout}\n{res.stderr}")


def run(repo: Path, out: Path, shared: Path) -> None:
    repo, out, shared = repo.resolve(), out.resolve(), shared.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    log = out / "commands.log"
    _prepare_inputs(repo, shared)
    sample = INPUTS / "sample_data"
    corpus = shared / "dicom"
    (out / META).write_text(json.dumps({"repo": str(repo), "shared": str(shared), "out": str(out)}, indent=1))
    _cxr(repo, log, "predict", sample, corpus, "--out", out / "predict", "--lungs", "--heatmaps", "--report", "--dicom",
         "--workers", "1")
    _cxr(repo, log, "segment", sample, corpus / "cxr_real", "--out", out / "segment", "--workers", "1")
    _cxr(repo, log, "explain", sample, corpus / "cxr_real", "--flagged", "--method", "gradcam", "--method", "eigencam",
         "--lung-mask", "--out", out / "explain")
    scans = INPUTS / "labelled" / "scans"
    labels = INPUTS / "labelled" / "labels.csv"
    _cxr(repo, log, "predict", scans, "--out", out / "labelled" / "before", "--workers", "1")
    _cxr(repo, log, "evaluate", "--results", out / "labelled" / "before" / "results.csv", "--labels", labels,
         "--by", "source,sex", "--json", out / "labelled" / "evaluate_before.json", "--html",
         out / "labelled" / "evaluate_before.html", "--n-boot", "200")
    site = out / "labelled" / "site.toml"
    _cxr(repo, log, "calibrate", "--results", out / "labelled" / "before" / "results.csv", "--labels", labels,
         "--out", site, "--target-sensitivity", "0.9")
    _cxr(repo, log, "predict", scans, "--out", out / "labelled" / "after", "--workers", "1", "--site", site)
    _cxr(repo, log, "evaluate", "--results", out / "labelled" / "after" / "results.csv", "--labels", labels,
         "--json", out / "labelled" / "evaluate_after.json", "--n-boot", "200")
    print(f"outputs of {repo} written to {out} (commands and their output: {log})")


# --------------------------------------------------------------------------- compare


class Diff:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.checked = 0

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{where}: {what}")


def _norm_text(text: str, meta: dict[str, str]) -> str:
    for key in ("out", "repo", "shared"):  # longest-first is not needed: out is never inside repo/shared here
        text = text.replace(meta[key], f"<{key.upper()}>")
    return _TIME.sub("<TIME>", text)


def _norm(value: Any, meta: dict[str, str]) -> Any:
    if isinstance(value, str):
        return _norm_text(value, meta)
    if isinstance(value, list):
        return [_norm(v, meta) for v in value]
    if isinstance(value, dict):
        return {k: ("<volatile>" if k in VOLATILE_KEYS else _norm(v, meta)) for k, v in value.items()}
    return value


def _same(a: Any, b: Any, tol: float = 1e-6) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            fa, fb = float(a), float(b)
        except (TypeError, ValueError):
            return False
        return (math.isnan(fa) and math.isnan(fb)) or math.isclose(fa, fb, rel_tol=tol, abs_tol=tol)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y, tol) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k], tol) for k in a)
    if isinstance(a, str) and isinstance(b, str) and a != b:
        try:
            return math.isclose(float(a), float(b), rel_tol=tol, abs_tol=tol)
        except ValueError:
            return False
    return bool(a == b)


def _json_diff(a: Any, b: Any, where: str, diff: Diff) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                diff.add(where, f"key {k!r} only in {'B' if k not in a else 'A'}")
            else:
                _json_diff(a[k], b[k], f"{where}.{k}", diff)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _json_diff(x, y, f"{where}[{i}]", diff)
    elif not _same(a, b):
        diff.add(where, f"{str(a)[:160]!r} != {str(b)[:160]!r}")


def _csv_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def compare_csv(a: Path, b: Path, rel: str, meta_a: dict[str, str], meta_b: dict[str, str], diff: Diff) -> None:
    ha, ra = _csv_rows(a)
    hb, rb = _csv_rows(b)
    if ha != hb:
        diff.add(rel, f"header differs:\n  A {ha}\n  B {hb}")
    if len(ra) != len(rb):
        diff.add(rel, f"{len(ra)} rows vs {len(rb)}")
    for i, (x, y) in enumerate(zip(ra, rb, strict=False)):
        _json_diff(_norm(x, meta_a), _norm(y, meta_b), f"{rel} row {i + 2}", diff)


def compare_jsonl(a: Path, b: Path, rel: str, meta_a: dict[str, str], meta_b: dict[str, str], diff: Diff) -> None:
    la = [json.loads(x) for x in a.read_text(encoding="utf-8").splitlines() if x.strip()]
    lb = [json.loads(x) for x in b.read_text(encoding="utf-8").splitlines() if x.strip()]
    if len(la) != len(lb):
        diff.add(rel, f"{len(la)} lines vs {len(lb)}")
    for i, (x, y) in enumerate(zip(la, lb, strict=False)):
        if list(x) != list(y):
            diff.add(f"{rel} line {i + 1}", f"key order differs: {list(x)} vs {list(y)}")
        _json_diff(_norm(x, meta_a), _norm(y, meta_b), f"{rel} line {i + 1}", diff)


def compare_image(a: Path, b: Path, rel: str, diff: Diff) -> None:
    import cv2
    import numpy as np

    x = cv2.imread(str(a), cv2.IMREAD_UNCHANGED)
    y = cv2.imread(str(b), cv2.IMREAD_UNCHANGED)
    if x is None or y is None:
        diff.add(rel, "unreadable image")
    elif x.shape != y.shape:
        diff.add(rel, f"image shape {x.shape} vs {y.shape}")
    elif not np.array_equal(x, y):
        d = np.abs(x.astype(np.int64) - y.astype(np.int64))
        diff.add(rel, f"pixels differ: {int((d > 0).sum())} values, max {int(d.max())}")


def compare_npy(a: Path, b: Path, rel: str, diff: Diff) -> None:
    import numpy as np

    x, y = np.load(a), np.load(b)
    if x.shape != y.shape or x.dtype != y.dtype:
        diff.add(rel, f"array {x.dtype}{x.shape} vs {y.dtype}{y.shape}")
    elif not np.allclose(x.astype(np.float64), y.astype(np.float64), atol=1e-6, rtol=0):
        diff.add(rel, f"arrays differ, max |d| {float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max()):.3g}")


def _dicom_elements(ds: Any, prefix: str = "") -> Iterator[tuple[str, str, Any]]:
    """(path, VR, comparable value) for every element, sequences walked; bulk data summarised."""
    import hashlib

    for elem in ds:
        path = f"{prefix}{elem.keyword or elem.tag}"
        if elem.VR == "SQ":
            yield path, "SQ", len(elem.value)
            for i, item in enumerate(elem.value):
                yield from _dicom_elements(item, f"{path}[{i}].")
        elif elem.keyword in ("PixelData", "EncapsulatedDocument"):
            continue  # compared on their own
        elif isinstance(elem.value, bytes):
            yield path, elem.VR, hashlib.sha256(elem.value).hexdigest()
        else:
            value = elem.value
            yield path, elem.VR, [str(v) for v in value] if elem.VM > 1 else str(value)


def compare_dicom(a: Path, b: Path, rel: str, meta_a: dict[str, str], meta_b: dict[str, str], diff: Diff) -> None:
    import numpy as np
    import pydicom

    x, y = pydicom.dcmread(a), pydicom.dcmread(b)
    ea = {p: (vr, v) for p, vr, v in _dicom_elements(x)}
    eb = {p: (vr, v) for p, vr, v in _dicom_elements(y)}
    for p in sorted(set(ea) | set(eb)):
        if p not in ea or p not in eb:
            diff.add(rel, f"element {p} only in {'B' if p not in ea else 'A'}")
            continue
        (vr, va), (_, vb) = ea[p], eb[p]
        # the PDF embeds its creation time, so its byte length varies; its text is compared below
        if vr in DICOM_VOLATILE_VRS or p.endswith(("ContributionDateTime", "AcquisitionDateTime",
                                                   "EncapsulatedDocumentLength")):
            continue
        if _norm(va, meta_a) != _norm(vb, meta_b) and not _same(va, vb):
            diff.add(rel, f"{p}: {str(va)[:120]!r} != {str(vb)[:120]!r}")
    if "PixelData" in x or "PixelData" in y:
        pa, pb = x.pixel_array, y.pixel_array
        if pa.shape != pb.shape:
            diff.add(rel, f"pixel array {pa.shape} vs {pb.shape}")
        elif not np.array_equal(pa, pb):
            d = np.abs(pa.astype(np.int64) - pb.astype(np.int64))
            diff.add(rel, f"pixels differ: {int((d > 0).sum())} of {d.size} values, max {int(d.max())}, "
                          f"mean {float(d.mean()):.4f}")
    if "EncapsulatedDocument" in x:
        compare_pdf_bytes(bytes(x.EncapsulatedDocument), bytes(y.EncapsulatedDocument), rel, meta_a, meta_b, diff)


def _pdf_text(data: bytes) -> str:
    if shutil.which("pdftotext") is None:
        return f"<{len(data)} bytes; pdftotext not installed>"
    res = subprocess.run(["pdftotext", "-layout", "-", "-"], input=data.rstrip(b"\x00"), capture_output=True)
    return res.stdout.decode("utf-8", "replace")


def compare_pdf_bytes(a: bytes, b: bytes, rel: str, meta_a: dict[str, str], meta_b: dict[str, str], diff: Diff) -> None:
    ta, tb = _norm_text(_pdf_text(a), meta_a), _norm_text(_pdf_text(b), meta_b)
    if ta != tb:
        la, lb = ta.splitlines(), tb.splitlines()
        first = next((i for i, (p, q) in enumerate(zip(la, lb, strict=False)) if p != q), min(len(la), len(lb)))
        diff.add(rel, f"PDF text differs from line {first + 1}: {la[first:first + 1]} vs {lb[first:first + 1]}")


def compare_html(a: Path, b: Path, rel: str, meta_a: dict[str, str], meta_b: dict[str, str], diff: Diff) -> None:
    ta = _norm_text(_DATA_URI.sub("<DATA>", a.read_text(encoding="utf-8")), meta_a)
    tb = _norm_text(_DATA_URI.sub("<DATA>", b.read_text(encoding="utf-8")), meta_b)
    if ta != tb:
        la, lb = ta.splitlines(), tb.splitlines()
        first = next((i for i, (p, q) in enumerate(zip(la, lb, strict=False)) if p != q), min(len(la), len(lb)))
        diff.add(rel, f"text differs from line {first + 1}: {la[first:first + 1]!r:.300} vs {lb[first:first + 1]!r:.300}")
    # the inlined pictures too, as decoded pixels (PNG/JPEG bytes may differ with encoder versions)
    ua, ub = _DATA_URI.findall(a.read_text(encoding="utf-8")), _DATA_URI.findall(b.read_text(encoding="utf-8"))
    if len(ua) != len(ub):
        diff.add(rel, f"{len(ua)} inlined pictures vs {len(ub)}")
        return
    import base64

    import cv2
    import numpy as np

    for i, (x, y) in enumerate(zip(ua, ub, strict=True)):
        if x == y:
            continue
        ia = cv2.imdecode(np.frombuffer(base64.b64decode(x.split(",", 1)[1]), np.uint8), cv2.IMREAD_UNCHANGED)
        ib = cv2.imdecode(np.frombuffer(base64.b64decode(y.split(",", 1)[1]), np.uint8), cv2.IMREAD_UNCHANGED)
        if ia is None or ib is None or ia.shape != ib.shape or not np.array_equal(ia, ib):
            how = "undecodable" if ia is None or ib is None else (
                f"shape {ia.shape} vs {ib.shape}" if ia.shape != ib.shape
                else f"max pixel diff {int(np.abs(ia.astype(int) - ib.astype(int)).max())}")
            diff.add(rel, f"inlined picture {i + 1} differs ({how})")


def compare(a: Path, b: Path) -> int:
    meta_a = json.loads((a / META).read_text())
    meta_b = json.loads((b / META).read_text())
    diff = Diff()
    files_a = {p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file() or p.is_symlink()}
    files_b = {p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file() or p.is_symlink()}
    for rel in sorted(files_a ^ files_b):
        diff.add(rel, f"only in {'A' if rel in files_a else 'B'}")
    for rel in sorted(files_a & files_b):
        pa, pb = a / rel, b / rel
        if rel in (META, "commands.log") or pa.is_symlink():
            continue
        diff.checked += 1
        suffix = pa.suffix.lower()
        if suffix == ".csv":
            compare_csv(pa, pb, rel, meta_a, meta_b, diff)
        elif suffix == ".jsonl":
            compare_jsonl(pa, pb, rel, meta_a, meta_b, diff)
        elif suffix == ".json":
            _json_diff(_norm(json.loads(pa.read_text()), meta_a), _norm(json.loads(pb.read_text()), meta_b), rel, diff)
        elif suffix in (".png", ".jpg"):
            compare_image(pa, pb, rel, diff)
        elif suffix == ".npy":
            compare_npy(pa, pb, rel, diff)
        elif suffix == ".dcm":
            compare_dicom(pa, pb, rel, meta_a, meta_b, diff)
        elif suffix == ".html":
            compare_html(pa, pb, rel, meta_a, meta_b, diff)
        elif suffix == ".pdf":
            compare_pdf_bytes(pa.read_bytes(), pb.read_bytes(), rel, meta_a, meta_b, diff)
        elif suffix in (".toml", ".txt", ".md"):
            ta, tb = _norm_text(pa.read_text(), meta_a), _norm_text(pb.read_text(), meta_b)
            if ta != tb:
                diff.add(rel, "text differs")
        elif pa.read_bytes() != pb.read_bytes():
            diff.add(rel, "bytes differ")
    for item in diff.items:
        print("DIFF", item)
    print(f"{diff.checked} files compared, {len(diff.items)} difference(s) "
          f"({len(files_a)} files in {a}, {len(files_b)} in {b})")
    return 1 if diff.items else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run every command with the code of --repo and save the outputs in --out")
    r.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    c = sub.add_parser("compare", help="compare two output folders written by `run`")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = parser.parse_args()
    if args.cmd == "run":
        if not (args.shared / "README.md").is_file():
            parser.error(f"shared data not found at {args.shared}; pass --shared PATH")
        run(args.repo, args.out, args.shared)
        return 0
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
