"""Benchmark: images/s sustained by `cxrtriage serve` (received over loopback and scored) versus `predict` on the
same files, measured side by side in one run. The goal is at least 0.8 of `predict`.

The images (``--input``, default ../shared/data/nih14/images) are written once as CR DICOM files (one study per
image, as the NIH set has one image per patient), uncompressed. Each round then

1. runs ``predict`` on the DICOM folder in this process (``run_predict``): wall-clock images/s (model loading and
   worker start included) and steady state;
2. starts a fresh ``cxrtriage serve`` process (its own output folder, ``--study-timeout`` seconds), waits until it
   answers C-ECHO, sends every file over ``--associations`` association(s) with pynetdicom from this process
   (each file read from disk and streamed as it is), and waits for the last row. Everything counts: the network,
   the durable write (fsync) of every instance before it is acknowledged, scoring, the journal, the tables. Two
   figures again: end to end, N / (last row - first C-STORE - study timeout) (the study timeout is a fixed wait, the
   latency of "the study is complete", not a rate), and steady state: what the node sustains while studies keep
   arriving.

Steady state is measured the same way on both sides: the rows written after the first 10 % of them, over the time
from that moment to the last row (the start-up, the first batch and the study timeout are outside it). A node
receives over one association per sender; ``--associations 1,2`` measures each count in the same run.
Rounds alternate (predict, then serve for each association count) on a shared machine; each ratio is the median of
per-round ratios, steady state against steady state (and, for reference, end to end against wall clock).

Usage (not a test; runnable by anyone):

    python benchmarks/bench_serve.py --input ../shared/data/nih14/images --limit 200 [--model cxr-classifier]
        [--workers 1] [--rounds 3] [--study-timeout 1] [--associations 1,2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parents[1]
CR = "1.2.840.10008.5.1.4.1.1.1"
# This checkout's code on both sides: `python benchmarks/bench_serve.py` puts benchmarks/ first on the path, and an
# installed cxrtriage (another checkout) would otherwise be the one `predict` runs here while `serve` runs this one.
sys.path.insert(0, str(REPO))


def make_dicom(images: list[Path], folder: Path) -> list[Path]:
    """Each image as a CR chest PA DICOM file (8-bit MONOCHROME2, uncompressed), one study each."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, p in enumerate(images):
        img = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        if img is None:
            continue
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CR
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CR
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.PatientName, ds.PatientID = f"Bench^{i}", f"B{i:05d}"
        ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
        ds.set_pixel_data(np.ascontiguousarray(img), "MONOCHROME2", 8)
        path = folder / f"{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def steady_rate(stamps: list[tuple[float, int]], n: int) -> float:
    """Rows per second from the moment 10 % of the ``n`` rows were written to the last row (stamps: time, rows)."""
    t_a, k_a = next(st for st in stamps if st[1] >= max(1, n // 10))
    t_b, k_b = stamps[-1]
    return (k_b - k_a) / (t_b - t_a) if t_b > t_a else float("nan")


def bench_predict(folder: Path, out: Path, model: str, workers: int, batch_size: int) -> tuple[float, float, int]:
    """(wall-clock images/s, steady-state images/s, scored) of one predict run."""
    from cxrtriage.pipeline.config import PredictConfig
    from cxrtriage.pipeline.engine import ProgressUpdate
    from cxrtriage.pipeline.predict import run_predict

    stamps: list[tuple[float, int]] = []

    def on_progress(u: ProgressUpdate) -> None:
        stamps.append((time.perf_counter(), u.scored))

    t0 = time.perf_counter()
    summary = run_predict(PredictConfig(inputs=(folder,), out_dir=out, model=model, workers=workers,
                                        batch_size=batch_size), on_progress=on_progress)
    wall = time.perf_counter() - t0
    return summary.scored / wall, steady_rate(stamps, summary.scored), summary.scored


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _echo(port: int) -> bool:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title="BENCH")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="CXRTRIAGE")
    if not assoc.is_established:
        return False
    assoc.release()
    return True


def _rows(out: Path) -> int:
    try:
        with open(out / "results.jsonl", "rb") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0


def _tail(log: Path, lines: int = 40) -> str:
    """The last lines of a log (the benchmark's folder is removed when it stops, the log with it)."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"({log}: {exc})"


def _send(files: list[Path], port: int, failures: list[str]) -> None:
    from pynetdicom import AE, build_context

    ae = AE(ae_title="BENCH")
    ae.requested_contexts = [build_context(CR, ExplicitVRLittleEndian)]
    assoc = ae.associate("127.0.0.1", port, ae_title="CXRTRIAGE")
    if not assoc.is_established:
        failures.append("association not established")
        return
    try:
        for f in files:
            status = assoc.send_c_store(f)  # streamed from the file as it is
            if not status or int(status.Status) != 0:
                failures.append(f"{f.name}: {status.Status if status else 'no answer'}")
    finally:
        assoc.release()


def bench_serve(files: list[Path], out: Path, model: str, workers: int, batch_size: int, timeout: float,
                associations: int, log: Path) -> tuple[float, float, float]:
    """(end-to-end images/s without the study timeout, steady-state images/s, seconds from first C-STORE to last
    row)."""
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), NO_COLOR="1")
    with open(log, "ab") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cxrtriage", "serve", "--out", str(out), "--host", "127.0.0.1", "--port", str(port),
             "--model", model, "--workers", str(workers), "--batch-size", str(batch_size), "--study-timeout",
             str(timeout), "--min-free-mb", "100"], cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not _echo(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve did not start; see {log}")
            time.sleep(0.2)
        failures: list[str] = []
        shares = [files[k::associations] for k in range(associations)]
        t0 = time.perf_counter()
        threads = [threading.Thread(target=_send, args=(s, port, failures)) for s in shares]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failures:
            raise RuntimeError(f"sending failed: {failures[:3]}; the end of serve's log:\n{_tail(log)}")
        stamps: list[tuple[float, int]] = []
        while not stamps or stamps[-1][1] < len(files):
            if time.perf_counter() - t0 > 1800 or proc.poll() is not None:
                raise RuntimeError(f"serve did not score every file; the end of its log:\n{_tail(log)}")
            rows = _rows(out)
            if rows and (not stamps or rows > stamps[-1][1]):
                stamps.append((time.perf_counter(), rows))
            time.sleep(0.01)
        elapsed = stamps[-1][0] - t0
        return len(files) / max(elapsed - timeout, 1e-9), steady_rate(stamps, len(files)), elapsed
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--input", type=Path, default=REPO.parent / "shared" / "data" / "nih14" / "images")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--model", default="cxr-classifier")
    ap.add_argument("--workers", type=int, default=1, help="decode processes, both sides (default 1)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--study-timeout", type=float, default=1.0)
    ap.add_argument("--associations", default="1,2", help="association counts to measure, e.g. 1,2 (default)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    images = sorted(p for p in args.input.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[: args.limit]
    if not images:
        print(f"no images under {args.input}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        base = Path(tmp)
        files = make_dicom(images, base / "dicom")
        counts = [int(a) for a in str(args.associations).split(",") if a.strip()]
        print(f"{len(files)} CR DICOM files ({args.input}), model {args.model}, workers {args.workers}, "
              f"batch {args.batch_size}, study timeout {args.study_timeout} s, {os.cpu_count()} CPUs, "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
        runs: dict[str, list[float]] = {"predict_wall": [], "predict_steady": []}
        for r in range(args.rounds):
            wall, steady, scored = bench_predict(base / "dicom", base / f"predict{r}", args.model, args.workers,
                                                 args.batch_size)
            if scored != len(files):
                print(f"predict scored {scored} of {len(files)}", file=sys.stderr)
                return 1
            runs["predict_wall"].append(wall)
            runs["predict_steady"].append(steady)
            line = [f"round {r + 1}: predict {wall:5.1f} images/s (steady {steady:5.1f})"]
            for a in counts:
                serve, serve_steady, elapsed = bench_serve(files, base / f"serve{r}-{a}", args.model, args.workers,
                                                           args.batch_size, args.study_timeout, a, base / "serve.log")
                for key, value in ((f"serve{a}", serve), (f"serve{a}_steady", serve_steady),
                                   (f"ratio{a}_steady", serve_steady / steady), (f"ratio{a}_wall", serve / wall)):
                    runs.setdefault(key, []).append(value)
                line.append(f"serve x{a} {serve:5.1f} end to end (steady {serve_steady:5.1f}, {elapsed:.1f} s) "
                            f"ratio {serve_steady / steady:.2f} steady, {serve / wall:.2f} end to end")
            print(" | ".join(line), flush=True)
        med: dict[str, Any] = {k: statistics.median(v) for k, v in runs.items()}
        print(f"median: predict {med['predict_wall']:.1f} images/s (steady {med['predict_steady']:.1f})")
        for a in counts:
            print(f"median: serve over {a} association(s) {med[f'serve{a}']:.1f} images/s end to end (steady "
                  f"{med[f'serve{a}_steady']:.1f}); serve/predict {med[f'ratio{a}_steady']:.2f} steady against steady, "
                  f"{med[f'ratio{a}_wall']:.2f} end to end against wall clock (goal >= 0.80)")
        if args.json is not None:
            args.json.write_text(json.dumps({"runs": runs, "median": med, "files": len(files)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
