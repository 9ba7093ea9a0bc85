"""``predict --ray`` on a real Ray cluster (a head and one more worker node on 127.0.0.1): the results equal a local
run's, a worker process killed mid-run or the driver killed and the command run again still give every input
exactly one row, and a file that crashes its worker gets a ``failed`` row without costing its block.

Each run is a real ``cxrtriage predict ... --ray ADDRESS`` process (the crash test's process calls ``run_predict_ray``
itself, to give the decode tasks a per-file function that crashes); every process is bounded in time, and the
cluster is stopped at the end of the module.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

try:
    import pyarrow.parquet as pq
    import ray  # noqa: F401  (the tests need it installed, not imported)
except ModuleNotFoundError:
    if os.environ.get("CXRTRIAGE_REQUIRE_DATA", "") == "1":  # CI installs the ray extra (scripts/dev-setup.sh)
        raise
    pytest.skip("ray is not installed (pip install -e '.[ray]')", allow_module_level=True)

from factories import read_jsonl, write_textured_png
from raycluster import REPO, RayCluster, iter_parts, start_cluster, wait_for

from cxrtriage.pipeline.config import PredictConfig
from cxrtriage.pipeline.predict import run_predict

pytestmark = pytest.mark.slow

N_PNG = 486  # every NIH PNG ("a few hundred"), beside the whole DICOM corpus: runs long enough to be killed mid-way
RUN_TIMEOUT = 300  # seconds for one `predict --ray` process on the 2-core test machine (about 30-60 s is usual)
SCORE_TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    c = start_cluster()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def inputs(shared_data: Path) -> list[Path]:
    pngs = sorted((shared_data / "nih14" / "images").glob("*.png"))[:N_PNG]
    assert len(pngs) == N_PNG
    return [shared_data / "dicom", *pngs]


@pytest.fixture(scope="module")
def local_run(inputs: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same inputs scored by the local pipeline (the reference)."""
    out = tmp_path_factory.mktemp("local")
    run_predict(PredictConfig(inputs=tuple(inputs), out_dir=out))
    return out


def _command(cluster: RayCluster, inputs: Sequence[Path], out: Path) -> list[str]:
    return [sys.executable, "-m", "cxrtriage", "predict", *map(str, inputs), "--out", str(out), "--ray", cluster.address]


def _start(cmd: list[str], cluster: RayCluster) -> subprocess.Popen[str]:
    return subprocess.Popen(cmd, env=cluster.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _finish(proc: subprocess.Popen[str], timeout: float = RUN_TIMEOUT) -> str:
    try:
        output, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return output


def _run(cmd: list[str], cluster: RayCluster) -> str:
    proc = _start(cmd, cluster)
    output = _finish(proc)
    assert proc.returncode == 0, output[-3000:]
    return output


def _shard_indices(out: Path) -> list[int]:
    return [i for p in iter_parts(out) for i in pq.read_table(p, columns=["input_index"]).column(0).to_pylist()]


def _without_run_facts(path: Path) -> dict[str, object]:
    data = json.loads(path.read_text())
    for key in ("started_at", "finished_at", "ray"):
        data.pop(key, None)
    data["options"].pop("workers")  # the decode processes a local run used; Ray's own tasks decode on a cluster
    return data


def assert_same_results(local: Path, remote: Path) -> float:
    """The Ray run's results equal the local run's: same rows in the same order, every column equal, scores within
    ``SCORE_TOLERANCE``; the same worklist and run.json (but for times and the ``ray`` section). Returns the largest
    score difference."""
    a, b = read_jsonl(local / "results.jsonl"), read_jsonl(remote / "results.jsonl")
    assert [r["path"] for r in b] == [r["path"] for r in a]
    worst = 0.0
    for ra, rb in zip(a, b, strict=True):
        assert list(rb) == list(ra)
        for key, va in ra.items():
            vb = rb[key]
            if isinstance(va, float) and isinstance(vb, float):
                worst = max(worst, abs(va - vb))
            else:
                assert vb == va, (ra["path"], key)
    assert worst <= SCORE_TOLERANCE
    with open(local / "worklist.csv", newline="") as fa, open(remote / "worklist.csv", newline="") as fb:
        wa, wb = list(csv.DictReader(fa)), list(csv.DictReader(fb))
    assert [{**r, "top_score": ""} for r in wb] == [{**r, "top_score": ""} for r in wa]  # studies, order, priorities
    assert all(abs(float(x["top_score"] or 0) - float(y["top_score"] or 0)) <= 1e-4 for x, y in zip(wa, wb, strict=True))
    assert _without_run_facts(remote / "run.json") == _without_run_facts(local / "run.json")
    return worst


def assert_exactly_once(out: Path, total: int) -> None:
    """Every input has one row in results.csv, and the shards hold each input index once."""
    assert len(read_jsonl(out / "results.jsonl")) == total
    with open(out / "results.csv", newline="") as f:
        assert sum(1 for _ in csv.DictReader(f)) == total
    assert sorted(set(_shard_indices(out))) == list(range(total))


@pytest.mark.data
def test_ray_run_equals_the_local_run(cluster: RayCluster, inputs: list[Path], local_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "ray"
    _run(_command(cluster, inputs, out), cluster)
    worst = assert_same_results(local_run, out)
    total = len(read_jsonl(local_run / "results.jsonl"))
    assert_exactly_once(out, total)
    assert len(_shard_indices(out)) == total  # no input twice in the shards either
    ray_section = json.loads((out / "run.json").read_text())["ray"]
    assert ray_section["nodes"] == 2 and ray_section["cpus"] == 2  # the head and the worker node took part
    statuses = [r["status"] for r in read_jsonl(out / "results.jsonl")]
    print(f"\n--ray equals local: {total} rows ({statuses.count('scored')} scored, {statuses.count('excluded')} "
          f"excluded, {statuses.count('failed')} failed), max score difference {worst:.3g}")


@pytest.mark.data
@pytest.mark.parametrize("worker", [
    "ScoreBatches",  # the inference actor, with its ONNX session and its batch in flight: Ray restarts it
    "decode_block",  # a decode task's worker process, mid-block: Ray runs the block's task again
])
def test_a_worker_process_killed_mid_run_costs_no_row(cluster: RayCluster, inputs: list[Path], local_run: Path,
                                                      tmp_path: Path, worker: str) -> None:
    out = tmp_path / "ray"
    total = len(read_jsonl(local_run / "results.jsonl"))
    proc = _start(_command(cluster, inputs, out), cluster)
    try:
        if worker == "decode_block":
            # a decode task's process bears its name only while it runs a block: catch the first one at work (later
            # ones may come too late: decoding runs ahead of scoring and can be over before the first shard)
            assert wait_for(lambda: cluster.workers(worker) or proc.poll() is not None, RUN_TIMEOUT, step=0.02)
        else:  # the actor, once its rows have started to arrive
            assert wait_for(lambda: any(iter_parts(out)) or proc.poll() is not None, RUN_TIMEOUT)
        victims = cluster.workers(worker)
        done_before = len(_shard_indices(out))
        assert proc.poll() is None and victims and done_before < total, "the run ended before a worker could be killed"
        os.kill(victims[0], signal.SIGKILL)
    finally:
        output = _finish(proc)
    assert proc.returncode == 0, output[-3000:]
    assert victims[0] not in cluster.pids()  # it was killed, not spared
    assert_same_results(local_run, out)
    assert_exactly_once(out, total)
    assert "failed on the cluster" not in " ".join(output.split())  # the retry of Ray itself recovered it: no file was run alone
    print(f"\nkilled a {worker} worker (pid {victims[0]}) with {done_before} of {total} rows in the shards; the run "
          f"finished with {total} rows, each once")


@pytest.mark.data
def test_a_killed_driver_is_resumed_by_running_the_command_again(cluster: RayCluster, inputs: list[Path],
                                                                 local_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "ray"
    total = len(read_jsonl(local_run / "results.jsonl"))
    cmd = _command(cluster, inputs, out)
    first = _start(cmd, cluster)
    try:
        assert wait_for(lambda: any(iter_parts(out)) or first.poll() is not None, RUN_TIMEOUT)
        assert first.poll() is None, "the run ended before its driver could be killed"
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        _finish(first, timeout=1)
    done_before = len(set(_shard_indices(out)))
    assert 0 < done_before < total and not (out / "results.csv").exists()
    output = _run(cmd, cluster)
    assert f"resumed: {done_before} of {total} rows" in " ".join(output.split())
    assert_same_results(local_run, out)
    assert_exactly_once(out, total)
    print(f"\ndriver killed with {done_before} of {total} rows in the shards; the second run scored the other "
          f"{total - done_before}; {total} rows, each once")


def test_a_file_that_crashes_its_worker_gets_a_failed_row_and_its_block_is_kept(cluster: RayCluster,
                                                                               tmp_path: Path) -> None:
    folder = tmp_path / "in"
    for i in range(7):
        write_textured_png(folder / f"img{i}.png", 256, 256, seed=i)
    write_textured_png(folder / "crash.png", 256, 256, seed=9)  # crash_on_name kills its worker on this name
    code = f"from raycluster import crash_run; crash_run({cluster.address!r}, {str(folder)!r}, {str(tmp_path / 'out')!r})"
    output = _run([sys.executable, "-c", code], cluster)
    rows = {Path(str(r["path"])).name: r for r in read_jsonl(tmp_path / "out" / "results.jsonl")}
    assert len(rows) == 8
    crash = rows.pop("crash.png")
    assert crash["status"] == "failed" and "died or failed on every attempt" in str(crash["reason"])
    assert crash["priority"] == "not_assessed"  # the hooks ran on its row as on any failed file's
    assert all(r["status"] == "scored" for r in rows.values())  # its block's other files too
    # its block of 4 failed on every retry; its 4 files were run again one per block; it alone failed again
    assert json.loads(output.strip().splitlines()[-1]) == {"retried_alone": 4, "failed_on_cluster": 1}
