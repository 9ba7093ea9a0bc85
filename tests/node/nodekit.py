"""What the node tests share: starting and stopping real `cxrtriage serve`/`watch` processes, real DICOM clients
(DCMTK's storescu/echoscu, a pynetdicom SCU), a real Storage SCP as a forward destination, and reading the results.

Every process is started in a session of its own with a deadline, and stopped by the test (SIGTERM, then kill -9 of
its whole session), so that nothing outlives a test, whatever it asserts.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE, AllStoragePresentationContexts, build_context, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

REPO = Path(__file__).resolve().parents[2]
SLOW_CLI = REPO / "tests" / "cli" / "slow_cli.py"


def dcmtk(tool: str) -> str:
    """Path of a DCMTK tool; the test skips when Debian's dcmtk is not installed (pynetdicom installs scripts of
    the same names, ``storescu``/``echoscu``, that are *not* DCMTK: they are told apart by their ``--version``)."""
    for candidate in (f"/usr/bin/{tool}", shutil.which(tool)):
        if not candidate or not os.path.isfile(candidate):
            continue
        try:
            out = subprocess.run([candidate, "--version"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        if "dcmtk" in out.lower():
            return candidate
    pytest.skip(f"DCMTK's {tool} is not installed (apt-get install dcmtk; scripts/dev-setup.sh does it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env() -> dict[str, str]:
    path = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return dict(os.environ, PYTHONPATH=path, COLUMNS="250", NO_COLOR="1")


@dataclass
class Proc:
    """A cxrtriage process started by a test: its Popen, its log file, its deadline."""

    popen: subprocess.Popen[bytes]
    log: Path
    deadline: float

    def text(self) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self) -> None:
        """kill -9 of the whole session (the node and its decode workers), as a crash would end it."""
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(30)

    def stop(self) -> int:
        """SIGTERM, a few seconds to stop, then kill -9 of the session; returns the exit status."""
        if self.alive():
            with suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                pass
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        return self.popen.wait(30)


def start(args: Sequence[str], log: Path, *, slow_store: float = 0.0, lifetime: float = 300.0) -> Proc:
    """``cxrtriage ARGS`` (through tests/cli/slow_cli.py, which can slow each stored instance down), in a new session."""
    e = env()
    if slow_store:
        e["CXRTRIAGE_TEST_STORE_SECONDS"] = str(slow_store)
    e["CXRTRIAGE_TEST_BATCH_SECONDS"] = "0"
    f = open(log, "ab")  # noqa: SIM115  # closed with the process (the child keeps its own copy)
    popen = subprocess.Popen(["timeout", "-s", "KILL", str(int(lifetime)), sys.executable, str(SLOW_CLI), *args],
                             cwd=REPO, env=e, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    f.close()
    return Proc(popen, log, time.monotonic() + lifetime)


def wait_for(condition: Callable[[], bool], seconds: float, what: str, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if proc is not None and not proc.alive():
            pytest.fail(f"the process ended (status {proc.popen.returncode}) while waiting for {what}:\n{proc.text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds} s waiting for {what}" + (f":\n{proc.text()[-3000:]}" if proc else ""))
        time.sleep(0.1)


def echo(port: int, *, calling: str = "TESTSCU", called: str = "CXRTRIAGE", timeout: float = 5) -> bool:
    """A C-ECHO with pynetdicom; True when answered with success."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = timeout  # type: ignore[assignment]
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and int(status.Status) == 0
    finally:
        assoc.release()


def start_serve(out: Path, model: Path, port: int, *extra: str, slow_store: float = 0.0, lifetime: float = 300.0,
                log_name: str = "serve.log") -> Proc:
    """A node on 127.0.0.1:``port`` writing into ``out``, up and answering C-ECHO when this returns."""
    args = ["--verbose", "serve", "--out", str(out), "--host", "127.0.0.1", "--port", str(port), "--model", str(model),
            "--workers", "1", "--min-free-mb", "1", *extra]
    proc = start(args, out.parent / log_name, slow_store=slow_store, lifetime=lifetime)
    wait_for(lambda: echo(port, timeout=2), 120, f"the node on port {port} to answer C-ECHO", proc)
    return proc


@dataclass
class Sent:
    path: Path
    sop_instance_uid: str
    status: int | None  # None: not sent (no context, association lost)


def send_pynetdicom(files: Iterable[Path], port: int, *, calling: str = "PYNETDICOM", called: str = "CXRTRIAGE",
                    timeout: float = 30) -> list[Sent]:
    """C-STORE every readable file over one association, each in its own transfer syntax; one result per file."""
    datasets: list[tuple[Path, Any]] = []
    results: list[Sent] = []
    for f in files:
        try:
            ds = pydicom.dcmread(f)
            _ = (str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))  # all present
        except Exception:
            results.append(Sent(f, "", None))
            continue
        datasets.append((f, ds))
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout  # type: ignore[assignment]
    contexts = {}
    for _, ds in datasets:
        key = (str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID))
        contexts.setdefault(key, build_context(*key))
    ae.requested_contexts = list(contexts.values())[:128]  # type: ignore[assignment]
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return results + [Sent(f, str(ds.SOPInstanceUID), None) for f, ds in datasets]
    try:
        for f, ds in datasets:
            try:
                status = assoc.send_c_store(ds)
                code = int(status.Status) if status else None
            except Exception:
                code = None
            results.append(Sent(f, str(ds.SOPInstanceUID), code))
    finally:
        if assoc.is_established:
            assoc.release()
    return results


def results_rows(out: Path) -> list[dict[str, str]]:
    path = out / "results.csv"
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def jsonl_rows(out: Path) -> list[dict[str, Any]]:
    path = out / "results.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def worklist_rows(out: Path) -> list[dict[str, str]]:
    path = out / "worklist.csv"
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@dataclass
class Destination:
    """A real pynetdicom Storage SCP on 127.0.0.1 (the PACS a node forwards to); every instance it stored."""

    port: int
    aet: str = "DESTPACS"
    received: list[str] = field(default_factory=list)  # SOP Instance UIDs, in arrival order (duplicates kept)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ae: Any = None

    def start(self) -> Destination:
        ae = AE(ae_title=self.aet)
        for cx in AllStoragePresentationContexts:
            if cx.abstract_syntax is not None:
                ae.add_supported_context(cx.abstract_syntax)
        ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self._ae = ae
        return self

    def _on_store(self, event: Any) -> int:
        with self.lock:
            self.received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def stop(self) -> None:
        if self._ae is not None:
            self._ae.shutdown()
