"""A real Ray cluster on 127.0.0.1 for the tests of ``predict --ray``: a head node and one more worker node, each a
``ray start --block`` process in a session of its own, with small limits (one CPU and a small object store per node),
stopped at the end by ending every process of those sessions. Never ``ray stop``: it would stop other people's Ray.

Also the per-file function that crashes its worker process on a file named ``crash*`` (the Ray workers import it
from this module: the cluster's ``PYTHONPATH`` holds the tests folder).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cxrtriage.pipeline.decode import Decoded, DecodeTask, examine

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
OBJECT_STORE_BYTES = 150 * 1024 * 1024
START_TIMEOUT = 120.0


def crash_on_name(task: DecodeTask) -> Decoded:
    """``examine``, except that a file named ``crash*`` kills the worker process, as a decoder crash would."""
    if Path(task.path).name.startswith("crash"):
        os._exit(3)
    return examine(task)


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, session id) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    return int(fields[1]), int(fields[3])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def session_pids(sessions: set[int]) -> list[int]:
    """Every live process whose session is one of ``sessions``."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None and st[1] in sessions:
                out.append(int(entry))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RayCluster:
    """A running test cluster: its address, the environment its clients need (the auth token), its sessions."""

    address: str
    env: dict[str, str]
    temp_dir: Path
    sessions: set[int] = field(default_factory=set)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def pids(self) -> list[int]:
        return session_pids(self.sessions)

    def workers(self, title: str) -> list[int]:
        """Ray worker processes of this cluster whose process title (``ray::...``) contains ``title``."""
        return [p for p in self.pids() if _cmdline(p).startswith("ray::") and title in _cmdline(p)]

    def stop(self) -> None:
        """End every process of the cluster's sessions: SIGTERM, then SIGKILL for what is left after 10 s."""
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
            deadline = time.monotonic() + wait
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.2)
            for p in self.procs:
                if p.poll() is None:
                    try:
                        p.wait(timeout=0.1)
                    except subprocess.TimeoutExpired:
                        pass
            if not self.pids():
                break
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _wait_started(log: Path, proc: subprocess.Popen[bytes], what: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        if log.is_file() and "Ray runtime started" in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.3)
    text = log.read_text(errors="replace")[-3000:] if log.is_file() else "(no log)"
    raise RuntimeError(f"the Ray {what} did not start:\n{text}")


@dataclass
class _Starter:
    env: dict[str, str]
    temp_dir: Path

    def start(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        ray_cli = [sys.executable, "-c", "import sys; from ray.scripts.scripts import main; sys.exit(main())"]
        log = open(self.temp_dir / log_name, "wb")  # noqa: SIM115  (closed with the process, by the OS)
        return subprocess.Popen([*ray_cli, "start", *args, "--block", "--disable-usage-stats",
                                 f"--object-store-memory={OBJECT_STORE_BYTES}"],
                                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                cwd=self.temp_dir)


def start_cluster(cpus_per_node: int = 1) -> RayCluster:
    """A head node and one worker node on 127.0.0.1 (raises ``RuntimeError`` with the log when one does not start)."""
    # Short path: Ray's Unix sockets live under it, and a socket path may not exceed 107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="cxr-ray-", dir="/tmp"))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join([str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    address = f"127.0.0.1:{port}"
    starter = _Starter(env, temp_dir)
    cluster = RayCluster(address=address, env=env, temp_dir=temp_dir)
    deadline = time.monotonic() + START_TIMEOUT
    try:
        head = starter.start(["--head", "--node-ip-address=127.0.0.1", f"--port={port}", f"--num-cpus={cpus_per_node}",
                              "--num-gpus=0", "--include-dashboard=false", f"--temp-dir={temp_dir}"], "head.log")
        cluster.procs.append(head)
        cluster.sessions.add(head.pid)
        _wait_started(temp_dir / "head.log", head, "head node", deadline)
        worker = starter.start([f"--address={address}", "--node-ip-address=127.0.0.1", f"--num-cpus={cpus_per_node}",
                                "--num-gpus=0"], "worker.log")
        cluster.procs.append(worker)
        cluster.sessions.add(worker.pid)
        _wait_started(temp_dir / "worker.log", worker, "worker node", deadline)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def wait_for(predicate: object, timeout: float, step: float = 0.2) -> bool:
    """Poll ``predicate()`` until it is true or ``timeout`` seconds passed; its last value."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def iter_parts(out: Path) -> Iterator[Path]:
    folder = out / "results.parquet"
    if folder.is_dir():
        yield from sorted(folder.glob("part-*.parquet"))


def crash_run(address: str, folder: str, out: str) -> None:
    """Score ``folder`` on the cluster with ``crash_on_name`` as the decode tasks' per-file function, in blocks of 4;
    print what the cluster did as JSON (run in a process of its own: Ray reads its auth settings at import)."""
    import json

    from cxrtriage.pipeline.cluster.run import ClusterOutcome, run_predict_ray
    from cxrtriage.pipeline.config import PredictConfig

    summary = run_predict_ray(PredictConfig(inputs=(Path(folder),), out_dir=Path(out)), address,
                              examine_fn=crash_on_name, files_per_block=4)
    outcome = summary.outcomes["ray"]
    assert isinstance(outcome, ClusterOutcome)
    print(json.dumps({"retried_alone": outcome.retried_alone, "failed_on_cluster": outcome.failed_on_cluster}))
