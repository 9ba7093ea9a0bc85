"""Benchmark: images/s of ``predict --ray`` versus local ``predict`` on the same files, and the per-worker
throughputs that docs/scale.md projects a million radiographs from.

Measured side by side in one run (rounds interleave local and Ray; medians are reported):

1. local ``run_predict`` with its default options (decode processes + onnxruntime on all cores) and
2. ``run_predict_ray`` on a Ray cluster (``--address local`` starts a Ray instance on this machine for each run, with
   every core; or give an existing cluster's address), each on the first half of the files and on all of them:
   wall clock (for Ray: connecting, shipping the model, starting the actors included) and images/s, and the
   *marginal* rate, (N - N/2) / (wall(N) - wall(N/2)), in which the fixed start-up cost cancels out; and the CPU
   seconds each run took, in this process and every process under it (decode workers; Ray's GCS, raylet and
   workers), sampled from /proc: on a shared machine the wall clock moves with other people's load, the CPU
   seconds an image costs much less, so the marginal CPU seconds per image, (cpu(N) - cpu(N/2)) / (N - N/2), are
   the figure that docs/scale.md scales by;
3. per worker, in this process, on one core: ``examine`` (probe, select, decode, preprocess, quality checks: what one
   decode task does per file) on the ``--input`` files and on the real DICOM chest radiographs (``--dicom``, each
   read ``--dicom-repeats`` times); and the classifier with one onnxruntime thread on batches of ``--batch-size``
   preprocessed inputs (what one CPU inference actor does). Both as files per second of wall clock and per second of
   CPU time (what a core of its own would give; the difference is other processes on a shared machine);
4. the driver's merge: shards of ``--merge-rows`` rows (the real rows of the last Ray run, repeated) into
   results.csv and results.jsonl, rows/s.

The load average of the machine is printed with each run: on a shared machine the figures move with it.

Usage (not a test; runnable by anyone with the ray extra):

    python benchmarks/bench_ray.py --input ../shared/data/nih14/images [--limit 486] [--address local] \\
        [--dicom ../shared/data/dicom/cxr_real] [--rounds 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# The decode worker processes (forkserver) start fresh interpreters that import this script again: they must find
# this checkout's cxrtriage too, not an installed one, wherever the script is run from.
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])

from cxrtriage.io import discover  # noqa: E402
from cxrtriage.model import load_classifier  # noqa: E402
from cxrtriage.pipeline.cluster.run import ClusterProgress, run_predict_ray  # noqa: E402
from cxrtriage.pipeline.config import PredictConfig  # noqa: E402
from cxrtriage.pipeline.decode import DecodeTask, examine  # noqa: E402
from cxrtriage.pipeline.engine import ProgressUpdate  # noqa: E402
from cxrtriage.pipeline.predict import build_hooks, pixel_needs, run_predict  # noqa: E402
from cxrtriage.preprocess import PixelNeeds  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_and_parent(pid: int) -> tuple[float, int] | None:
    """(user + system CPU seconds, parent pid) of a live process, from /proc/PID/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK, int(fields[1])


class CpuMeter:
    """CPU seconds used by this process and all its descendants while the ``with`` block runs.

    A thread samples /proc every ``interval`` seconds and keeps, for each process it saw, its last CPU time: a
    process that ends between two samples loses at most one interval of CPU (the decode workers and Ray's
    processes live for the whole run). This process's own CPU (``time.process_time``) is measured exactly.
    """

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.seen: dict[int, float] = {}
        self.before: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.seconds = 0.0

    def _descendants(self) -> dict[int, float]:
        me = os.getpid()
        info = {int(e): st for e in os.listdir("/proc") if e.isdigit() and (st := _cpu_and_parent(int(e)))}
        children: dict[int, list[int]] = {}
        for pid, (_, parent) in info.items():
            children.setdefault(parent, []).append(pid)
        out: dict[int, float] = {}
        stack = list(children.get(me, []))
        while stack:
            pid = stack.pop()
            out[pid] = info[pid][0]
            stack.extend(children.get(pid, []))
        return out

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.seen.update(self._descendants())

    def __enter__(self) -> CpuMeter:
        self.before = self._descendants()  # processes that were there already count from here
        self.t0 = time.process_time()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.seen.update(self._descendants())
        self.seconds = time.process_time() - self.t0 + sum(
            cpu - self.before.get(pid, 0.0) for pid, cpu in self.seen.items())


def local_round(files: list[Path], out: Path) -> dict[str, float]:
    first: list[float] = []

    def seen(u: ProgressUpdate) -> None:
        if not first:
            first.append(time.perf_counter())

    t0 = time.perf_counter()
    with CpuMeter() as cpu:
        s = run_predict(PredictConfig(inputs=tuple(files), out_dir=out), on_progress=seen)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "images_per_s": s.scored / wall, "files": s.total, "scored": s.scored,
            "first_row_s": first[0] - t0 if first else float("nan"), "cpu_s": cpu.seconds}


def ray_round(files: list[Path], out: Path, address: str) -> dict[str, Any]:
    first: list[float] = []

    def seen(u: ClusterProgress) -> None:
        if u.done > u.resumed and not first:
            first.append(time.perf_counter())

    t0 = time.perf_counter()
    with CpuMeter() as cpu:  # with --address local, Ray's processes are this process's descendants
        s = run_predict_ray(PredictConfig(inputs=tuple(files), out_dir=out), address, on_progress=seen)
    wall = time.perf_counter() - t0
    outcome = s.outcomes["ray"]
    return {"wall_s": wall, "images_per_s": s.scored / wall, "files": s.total, "scored": s.scored,
            "first_row_s": first[0] - t0 if first else float("nan"), "connect_s": outcome.seconds_connect,
            "cpu_s": cpu.seconds,
            "cpus": outcome.plan.cpus, "nodes": outcome.plan.nodes, "actors_max": outcome.plan.actors,
            "files_per_block": outcome.plan.files_per_block}


def merge_rate(shards_of: Path, rows: int, tmp: Path) -> dict[str, float]:
    """Rows/s of the driver's final merge (shards -> results.csv + results.jsonl), on ``rows`` rows: the real rows of
    a finished Ray run, repeated under new input indices."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cxrtriage.pipeline.cluster.shards import INDEX_COLUMN, ShardStore
    from cxrtriage.results import ResultsWriter

    src = pq.read_table(shards_of / "results.parquet", schema=None)
    columns = [c for c in src.column_names if c not in (INDEX_COLUMN, "quality_failed_checks")]
    store = ShardStore(tmp, columns)
    src = src.select(store.schema.names).cast(store.schema)
    src = pa.concat_tables([src] * -(-1024 // src.num_rows)).slice(0, 1024)  # the driver's shards: about 1024 rows
    n, k = 0, 0
    while n < rows:  # shards of about 1024 rows, as the driver writes them
        part = src.slice(0, min(src.num_rows, rows - n))
        part = part.set_column(part.schema.get_field_index(INDEX_COLUMN), INDEX_COLUMN,
                               pa.array(range(n, n + part.num_rows), pa.int64()))
        store.write(part)
        n += part.num_rows
        k += 1
    t0 = time.perf_counter()
    with ResultsWriter(tmp, columns) as w:
        for _, row, _ in store.rows_in_order(n):
            w.write_row(row)
    wall = time.perf_counter() - t0
    return {"rows": n, "shards": k, "rows_per_s": n / wall}


def decode_per_core(paths: list[str], recipe: Any, needs: PixelNeeds | None) -> dict[str, float]:
    """Files/s of one decode task (one core): probe, select, read (reduced as ``predict`` reduces it: ``needs``),
    preprocess, quality checks."""
    cv2.setNumThreads(1)
    t0 = time.process_time()
    w0 = time.perf_counter()
    ok = 0
    for i, p in enumerate(paths):
        ok += examine(DecodeTask(i, p, recipe, image_checks=True, needs=needs)).ok
    wall = time.perf_counter() - w0
    cpu = time.process_time() - t0
    return {"files": len(paths), "readable": ok, "files_per_s": len(paths) / wall, "files_per_cpu_s": len(paths) / cpu}


def inference_per_core(model_name: str | None, inputs: np.ndarray, batch_size: int, repeats: int) -> dict[str, float]:
    """Images/s of one CPU inference actor: the classifier with one onnxruntime thread."""
    model = load_classifier(model_name, device="cpu", intra_op_threads=1, spinning=False)
    model.run(inputs[:batch_size])  # warm-up
    n = 0
    t0 = time.perf_counter()
    c0 = time.process_time()
    for _ in range(repeats):
        for i in range(0, len(inputs), batch_size):
            model.run(inputs[i:i + batch_size])
            n += len(inputs[i:i + batch_size])
    wall = time.perf_counter() - t0
    return {"images": n, "images_per_s": n / wall, "images_per_cpu_s": n / (time.process_time() - c0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", type=Path, required=True, help="folder of images (e.g. ../shared/data/nih14/images)")
    ap.add_argument("--limit", type=int, default=486)
    ap.add_argument("--address", default="local", help="Ray address (default: a local Ray instance per round)")
    ap.add_argument("--dicom", type=Path, default=REPO.parent / "shared" / "data" / "dicom" / "cxr_real")
    ap.add_argument("--dicom-repeats", type=int, default=3)
    ap.add_argument("--model", default=None)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--merge-rows", type=int, default=100_000)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    files = sorted(Path(p) for p in discover([args.input]))[: args.limit]
    if not files:
        sys.exit(f"no files under {args.input}")
    print(f"{len(files)} files from {args.input}; {os.cpu_count()} CPU(s) on this machine; Ray at {args.address}")
    rounds: list[dict[str, Any]] = []
    half = files[: len(files) // 2]
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        for r in range(args.rounds):
            rnd: dict[str, Any] = {"load_before": os.getloadavg()[0]}
            for side in ("local", "ray"):
                runs = {}
                for label, subset in (("half", half), ("all", files)):
                    out = Path(tmp) / f"{side}-{label}-{r}"
                    runs[label] = local_round(subset, out) if side == "local" else ray_round(subset, out, args.address)
                    runs[label]["load"] = os.getloadavg()[0]
                extra = len(files) - len(half)
                runs["marginal_images_per_s"] = extra / (runs["all"]["wall_s"] - runs["half"]["wall_s"])
                runs["marginal_cpu_s_per_image"] = (runs["all"]["cpu_s"] - runs["half"]["cpu_s"]) / extra
                rnd[side] = runs
            rounds.append(rnd)
            loc, ray_ = rnd["local"], rnd["ray"]
            print(f"round {r + 1} (load {rnd['load_before']:.1f}): local {loc['all']['wall_s']:.1f} s for {len(files)} "
                  f"({loc['all']['images_per_s']:.1f} img/s), {loc['half']['wall_s']:.1f} s for {len(half)}: marginal "
                  f"{loc['marginal_images_per_s']:.1f} img/s; --ray {ray_['all']['wall_s']:.1f} s "
                  f"({ray_['all']['images_per_s']:.1f} img/s, first row after {ray_['all']['first_row_s']:.1f} s), "
                  f"{ray_['half']['wall_s']:.1f} s for {len(half)}: marginal {ray_['marginal_images_per_s']:.1f} img/s; "
                  f"CPU s: local {loc['half']['cpu_s']:.1f} / {loc['all']['cpu_s']:.1f} (marginal "
                  f"{1000 * loc['marginal_cpu_s_per_image']:.1f} ms per image), --ray {ray_['half']['cpu_s']:.1f} / "
                  f"{ray_['all']['cpu_s']:.1f} (marginal {1000 * ray_['marginal_cpu_s_per_image']:.1f} ms per image)")
        merge = merge_rate(Path(tmp) / f"ray-all-{args.rounds - 1}", args.merge_rows, Path(tmp) / "merge")

    model = load_classifier(args.model, device="cpu", intra_op_threads=1)
    recipe = model.manifest.preprocessing
    # decoded as predict (local or --ray) decodes them with its default options
    config = PredictConfig(inputs=tuple(files), out_dir=Path(tempfile.gettempdir()) / "unused")
    needs = pixel_needs(config, model, build_hooks(config, model))
    png = decode_per_core([str(f) for f in files], recipe, needs)
    dicom_files = [str(p) for p in sorted(discover([args.dicom]))] if args.dicom.is_dir() else []
    dcm = decode_per_core(dicom_files * args.dicom_repeats, recipe, needs) if dicom_files else None
    inputs = np.stack([mi.array for mi in (examine(DecodeTask(i, str(f), recipe)).model_input for i, f in
                                           enumerate(files[:256])) if mi is not None])
    inf = inference_per_core(args.model, inputs, args.batch_size, repeats=4)

    def med(side: str, *keys: str) -> float:
        values = []
        for r in rounds:
            v: Any = r[side]
            for k in keys:
                v = v[k]
            values.append(float(v))
        return statistics.median(values)

    result = {
        "machine_cpus": os.cpu_count(), "files": len(files), "rounds": rounds,
        "median": {"local_wall_s": med("local", "all", "wall_s"), "local_images_per_s": med("local", "all", "images_per_s"),
                   "local_marginal_images_per_s": med("local", "marginal_images_per_s"),
                   "ray_wall_s": med("ray", "all", "wall_s"), "ray_images_per_s": med("ray", "all", "images_per_s"),
                   "ray_first_row_s": med("ray", "all", "first_row_s"), "ray_connect_s": med("ray", "all", "connect_s"),
                   "ray_marginal_images_per_s": med("ray", "marginal_images_per_s"),
                   "local_cpu_s": med("local", "all", "cpu_s"), "ray_cpu_s": med("ray", "all", "cpu_s"),
                   "local_marginal_cpu_s_per_image": med("local", "marginal_cpu_s_per_image"),
                   "ray_marginal_cpu_s_per_image": med("ray", "marginal_cpu_s_per_image")},
        "per_core": {"decode_png": png, "decode_dicom_cxr_real": dcm, "inference_cpu_actor": inf},
        "merge": merge,
    }
    m = result["median"]
    print(f"\nmedian of {args.rounds} round(s), {len(files)} files: local {m['local_images_per_s']:.1f} img/s "
          f"({m['local_wall_s']:.1f} s), marginal {m['local_marginal_images_per_s']:.1f} img/s; --ray "
          f"{m['ray_images_per_s']:.1f} img/s ({m['ray_wall_s']:.1f} s, first row after {m['ray_first_row_s']:.1f} s), "
          f"marginal {m['ray_marginal_images_per_s']:.1f} img/s; --ray/local "
          f"{m['ray_images_per_s'] / m['local_images_per_s']:.2f} (wall), "
          f"{m['ray_marginal_images_per_s'] / m['local_marginal_images_per_s']:.2f} (marginal)")
    print(f"CPU seconds for {len(files)} files: local {m['local_cpu_s']:.1f}, --ray {m['ray_cpu_s']:.1f} (start-up "
          f"included); marginal CPU per image: local {1000 * m['local_marginal_cpu_s_per_image']:.1f} ms, --ray "
          f"{1000 * m['ray_marginal_cpu_s_per_image']:.1f} ms (--ray/local "
          f"{m['ray_marginal_cpu_s_per_image'] / m['local_marginal_cpu_s_per_image']:.2f})")
    print(f"merge: {merge['rows']} rows from {merge['shards']} shards in results.csv + results.jsonl at "
          f"{merge['rows_per_s']:.0f} rows/s")
    print(f"per core: decode+preprocess {png['files_per_s']:.1f} PNG files/s"
          + (f", {dcm['files_per_s']:.2f} real DICOM CR files/s" if dcm else "")
          + f"; inference {inf['images_per_s']:.0f} images/s (one onnxruntime thread, batch {args.batch_size}); per CPU "
          f"second: {png['files_per_cpu_s']:.0f} PNG, " + (f"{dcm['files_per_cpu_s']:.2f} DICOM, " if dcm else "")
          + f"{inf['images_per_cpu_s']:.0f} inferences")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
