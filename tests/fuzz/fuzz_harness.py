"""Run ``python3 -m cxrtriage predict`` on a folder as a separate session, measure the memory of its whole process
tree while it runs, and check the invariants every run must keep, whatever the inputs:

- exit code 0, no Python traceback (nor "Fatal Python error") on stdout/stderr;
- ``results.csv`` exists with exactly one row per input file (the folder's entries: regular files, links, FIFOs;
  hidden names aside), every status in scored/excluded/failed, a non-empty reason for excluded/failed, and the
  status a control file must get; ``results.jsonl`` has as many valid JSON lines;
- no reason is the catch-all of an exception nobody expected (``unexpected <Error> while reading ...; please
  report this file``): the code path that raised it lacks its own check, and the user gets no real reason;
- no ``*.partial`` file left anywhere under ``--out``; no NUL byte in ``results.csv``; no spreadsheet formula
  (a non-numeric cell starting with ``= + - @``) in ``results.csv`` / ``worklist.csv``;
- the peak memory of the process tree (main process, forkserver, decode workers, resource tracker) stays under
  a bound; the run finishes within its time limit; no process of the run is left behind after it exits.

Memory: every ``SAMPLE_S`` the sampler lists the processes of the run's session (``/proc/<pid>/stat`` field 6,
the session id; the run is started with ``start_new_session=True``, so every descendant shares it unless it calls
setsid itself) and sums their ``VmRSS``; the peak of that sum is *the* figure (``peak_tree_rss``). RSS counts
shared pages (libraries, copy-on-write) once per process, so the sum over-states the tree a little: a safe
upper estimate. Two more figures guard against a spike between samples: the largest ``VmHWM`` (per-process peak
RSS, kept by the kernel) seen for any process, and ``ru_maxrss`` from ``wait4`` (the largest process of the tree
that was reaped). A run whose tree passes ``kill_rss`` is killed at once (it protects a shared machine; the
violation is reported as ``killed-memory``), as is one that passes ``timeout_s``.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20
GiB = 1 << 30
SAMPLE_S = 0.05
ORPHAN_GRACE_S = 5.0
STATUSES = ("scored", "excluded", "failed")
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|Fatal Python error")
_FORMULA_START = ("=", "+", "-", "@")
_UNEXPECTED = re.compile(r"unexpected .*please report this file")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$|^[+-]?(inf|nan)$")

# Run-level invariants: a failed run cannot be blamed on a file from its rows alone (``isolate`` finds the file).
RUN_LEVEL = ("exit-code", "traceback", "no-results", "killed-memory", "timeout", "memory", "orphans", "partial-left",
             "jsonl-broken", "missing-row")


# --------------------------------------------------------------------------- processes and memory


def _session_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2:].split()
    if fields[0] == b"Z":  # a zombie holds no memory
        return None
    return int(fields[3])


def _status_kib(pid: int, keys: tuple[bytes, ...]) -> dict[bytes, int]:
    out: dict[bytes, int] = {}
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                k = line.split(b":", 1)[0]
                if k in keys:
                    out[k] = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return out


def session_pids(sid: int) -> list[int]:
    """Every live process whose session id is ``sid``."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit() and _session_of(int(name)) == sid:
            pids.append(int(name))
    return pids


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()[:200]
    except OSError:
        return "?"


def _kill_session(sid: int) -> None:
    """SIGKILL the process group of the session leader and every remaining process of the session."""
    try:
        os.killpg(sid, signal.SIGKILL)
    except OSError:
        pass
    for pid in session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


@dataclass
class RunResult:
    """What one ``predict`` run did."""

    label: str
    workers: int | None  # None: the default (no --workers option)
    folder: Path
    out: Path
    returncode: int | None = None  # negative: killed by that signal
    wall_s: float = 0.0
    peak_tree_rss: int = 0  # bytes: the largest sum of VmRSS over the session's processes, over the samples
    peak_process_hwm: int = 0  # bytes: the largest VmHWM of any one process seen
    rusage_maxrss: int = 0  # bytes: ru_maxrss of wait4 (largest reaped process of the tree)
    peak_processes: int = 0
    killed: str = ""  # "", "memory" or "timeout"
    orphans: list[str] = field(default_factory=list)
    stdout: str = ""
    stderr: str = ""


def subprocess_env(extra_path: Sequence[Path] = ()) -> dict[str, str]:
    """The environment of a run: this checkout's package first on the path (the installed one may be another
    checkout's; ``extra_path`` goes before it), a wide terminal for readable messages, one thread per library."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*map(str, extra_path), str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.update(COLUMNS="200", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONWARNINGS="default")
    env.pop("PYTHONFAULTHANDLER", None)
    return env


def _fork_cli(argv: list[str], folder: Path, stdout: int, stderr: int) -> int:
    """Run the CLI with ``argv`` in a forked child of this (warm: cxrtriage already imported) process, in a new
    session, as ``python3 -m cxrtriage`` would; returns the child's pid. Only for diagnosis (``launch="fork"``)."""
    from cxrtriage.cli.app import main as cli_main

    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        os.setsid()
        os.chdir(folder)
        devnull = os.open(os.devnull, os.O_RDONLY)
        for src, dst in ((devnull, 0), (stdout, 1), (stderr, 2)):
            os.dup2(src, dst)
        os.environ.update({k: v for k, v in subprocess_env().items() if k != "PYTHONWARNINGS"})
        # Look like `python3 -m cxrtriage` to multiprocessing too: decode workers then prepare themselves from
        # the module name `cxrtriage.__main__` (nothing re-run), not by re-running this process's main script.
        import importlib

        entry = importlib.import_module("cxrtriage.__main__")
        sys.modules["__main__"] = entry
        sys.argv = [str(entry.__file__), *argv]
        try:
            cli_main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        import atexit

        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def run_predict(folder: Path, out: Path, *, model: Path, workers: int | None, label: str = "",
                timeout_s: float = 120.0, kill_rss: int = 3 * GiB, extra_args: Sequence[str] = (),
                logs: Path | None = None, inputs: Sequence[str] = (".",), launch: str = "exec",
                extra_path: Sequence[Path] = ()) -> RunResult:
    """Run ``python3 -m cxrtriage predict <inputs> --out <out>`` with ``folder`` as the working directory (so
    rows name files as the user would see them: relative, possibly starting with ``=``) and measure it.

    ``workers`` None runs with the default decode workers (no ``--workers`` option), as a user would.
    ``extra_path`` is put first on the run's PYTHONPATH (a test's ``sitecustomize``).

    ``launch="fork"`` runs the CLI in a fork of this process instead (it must have imported this checkout's
    ``cxrtriage``): the same code path without the ~1.5 s of imports, for the many small runs of a diagnosis.
    """
    logs = logs or out.parent / f"{out.name}.logs"
    logs.mkdir(parents=True, exist_ok=True)
    args = ["predict", *inputs, "--out", str(out.resolve()), "--model", str(model),
            *([] if workers is None else ["--workers", str(workers)]), "--threads", "1", *extra_args]
    cmd = [sys.executable, "-m", "cxrtriage", *args]
    (logs / "command.txt").write_text(" ".join(cmd) + f"\n(cwd: {folder}; launched by {launch})\n")
    res = RunResult(label or folder.name, workers, folder, out)
    with open(logs / "stdout.txt", "wb") as so, open(logs / "stderr.txt", "wb") as se:
        t0 = time.monotonic()
        if launch == "fork":
            if extra_path:
                raise ValueError("extra_path needs launch='exec' (a forked run has already imported its modules)")
            pid = _fork_cli(args, folder, so.fileno(), se.fileno())
        else:
            proc = subprocess.Popen(cmd, cwd=folder, stdout=so, stderr=se, stdin=subprocess.DEVNULL,
                                    env=subprocess_env(extra_path), start_new_session=True)
            pid = proc.pid
            proc.returncode = 0  # reaped below with wait4 (for its rusage), never by Popen
        sid = pid
        status = None
        try:
            while True:
                pids = session_pids(sid)
                total = 0
                for member in pids:
                    kib = _status_kib(member, (b"VmRSS", b"VmHWM"))
                    total += kib.get(b"VmRSS", 0) * 1024
                    res.peak_process_hwm = max(res.peak_process_hwm, kib.get(b"VmHWM", 0) * 1024)
                res.peak_tree_rss = max(res.peak_tree_rss, total)
                res.peak_processes = max(res.peak_processes, len(pids))
                done, st, ru = os.wait4(pid, os.WNOHANG)
                if done == pid:
                    status = st
                    res.rusage_maxrss = ru.ru_maxrss * 1024
                    break
                if total > kill_rss:
                    res.killed = "memory"
                elif time.monotonic() - t0 > timeout_s:
                    res.killed = "timeout"
                if res.killed:
                    _kill_session(sid)
                    _, status, ru = os.wait4(pid, 0)
                    res.rusage_maxrss = ru.ru_maxrss * 1024
                    break
                time.sleep(SAMPLE_S)
        finally:
            if status is None:  # interrupted (KeyboardInterrupt, an error in the sampler): leave nothing behind
                _kill_session(sid)
                _, status, _ = os.wait4(pid, 0)
            res.returncode = os.waitstatus_to_exitcode(status)
            res.wall_s = time.monotonic() - t0
            deadline = time.monotonic() + (0.5 if res.killed else ORPHAN_GRACE_S)
            left = session_pids(sid)
            while left and time.monotonic() < deadline:
                time.sleep(0.1)
                left = session_pids(sid)
            if left and not res.killed:
                res.orphans = [f"{pid}: {_cmdline(pid)}" for pid in left]
            _kill_session(sid)
    res.stdout = (logs / "stdout.txt").read_text(errors="replace")
    res.stderr = (logs / "stderr.txt").read_text(errors="replace")
    return res


# --------------------------------------------------------------------------- invariants


@dataclass(frozen=True, slots=True)
class Violation:
    invariant: str
    path: str  # the input file (relative to the run's folder), "" for the run as a whole
    detail: str
    run: str = ""

    def line(self) -> str:
        where = ascii(self.path)[1:-1] if self.path else "(run)"
        return f"[{self.run}] {self.invariant}: {where}: {self.detail}"


def expected_entries(folder: Path) -> list[str]:
    """The inputs a run on ``folder`` must report, relative, in discovery order: every entry that is not a
    folder (regular files, symbolic links even dangling or looping, FIFOs), hidden names aside."""
    found: list[tuple[tuple[str, ...], str]] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and not os.path.islink(os.path.join(dirpath, d)))
        rel = Path(dirpath).relative_to(folder)
        for name in filenames:
            if not name.startswith("."):
                p = rel / name
                found.append((p.parts, str(p)))
    return [s for _, s in sorted(found)]


def _spellings(name: str) -> set[str]:
    """How a results file may legitimately spell a file name that is not valid UTF-8 (as os gives it, with
    surrogate escapes; with U+FFFD; with backslash escapes; as Latin-1)."""
    raw = name.encode("utf-8", "surrogateescape")
    return {name, raw.decode("utf-8", "replace"), raw.decode("utf-8", "backslashreplace"), raw.decode("latin-1"),
            ascii(name)[1:-1]}


def _normalise(path: str, folder: Path) -> str:
    p = path[1:] if path.startswith("'") else path  # a cell guarded against formulas
    for prefix in (str(folder.resolve()) + os.sep, str(folder) + os.sep, "." + os.sep):
        if p.startswith(prefix):
            p = p[len(prefix):]
    return p


def read_rows(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="", encoding="utf-8", errors="surrogateescape") as fh:
        return list(csv.DictReader(fh))


_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt|Panic\w*|Warning))(: .*)?$")


def traceback_summary(text: str) -> str:
    """The tracebacks in ``text`` in one line: for the first and the last, the log message that carried it (if
    any), the exception raised and where."""
    lines = [ln.strip() for ln in text.splitlines()]
    starts = [i for i, ln in enumerate(lines) if TRACEBACK.search(ln)]

    def one(i: int) -> str:
        prev = lines[i - 1] if i else ""
        logged = re.sub(r"^(\[[^]]*\]\s*)?(ERROR|WARNING|CRITICAL)\s+", "", prev) if re.search(
            r"\b(ERROR|WARNING|CRITICAL)\b", prev) else ""
        end = next((j for j in range(i + 1, len(lines)) if _EXC_LINE.match(lines[j])), None)
        exc = lines[end][:240] if end is not None else lines[i][:200]
        where = next((ln for ln in reversed(lines[i + 1:end]) if ln.startswith("File ")), "") if end else ""
        return (f"{'logged ' + repr(logged[:120]) + ' with ' if logged else ''}{exc}"
                + (f" (at {where[:160]})" if where else ""))

    if not starts:
        return ""
    if len(starts) == 1:
        return one(starts[0])
    return f"{len(starts)} tracebacks; first: {one(starts[0])}; last: {one(starts[-1])}"


def _is_formula(cell: object) -> bool:
    """A cell a spreadsheet would run as a formula (numbers such as -0.5 aside)."""
    return isinstance(cell, str) and cell.startswith(_FORMULA_START) and not _NUMBER.match(cell.strip())


def check_run(res: RunResult, *, expect: dict[str, str] | None = None, bound: int | None = None,
              exit_code: int = 0) -> list[Violation]:
    """Every invariant ``res`` breaks. ``expect`` maps an input (relative path) to the status it must get
    (the controls); ``bound`` is the peak tree memory allowed, in bytes; ``exit_code`` the documented exit status
    (0 for a run that completed; 1 with ``--fail-on-error`` when a file failed)."""
    v: list[Violation] = []

    def add(inv: str, path: str, detail: str) -> None:
        v.append(Violation(inv, path, detail, res.label))

    if res.killed == "memory":
        add("killed-memory", "", f"killed when the process tree reached {res.peak_tree_rss / GiB:.2f} GiB")
    elif res.killed == "timeout":
        add("timeout", "", f"killed after {res.wall_s:.0f} s")
    elif res.returncode != exit_code:
        sig = f" (signal {signal.Signals(-res.returncode).name})" if res.returncode and res.returncode < 0 else ""
        add("exit-code", "", f"exit code {res.returncode}{sig}; stderr ends: {res.stderr.strip()[-300:]!r}")
    for stream, text in (("stderr", res.stderr), ("stdout", res.stdout)):
        if TRACEBACK.search(text):
            add("traceback", "", f"{stream}: {traceback_summary(text)}")
    if bound is not None and res.peak_tree_rss > bound and res.killed != "memory":
        add("memory", "", f"process tree peaked at {res.peak_tree_rss / GiB:.2f} GiB (bound {bound / GiB:.2f} GiB; "
                          f"largest process {res.peak_process_hwm / GiB:.2f} GiB)")
    if res.orphans:
        add("orphans", "", f"{len(res.orphans)} process(es) alive after the run exited: {res.orphans}")
    partial = sorted(str(p.relative_to(res.out)) for p in res.out.rglob("*.partial")) if res.out.exists() else []
    if partial and not res.killed:  # SIGKILL leaves no chance to clean up: not a finding of its own
        add("partial-left", "", f"{partial}")
    entries = expected_entries(res.folder)
    csv_path = res.out / "results.csv"
    if not csv_path.is_file():
        add("no-results", "", f"no results.csv for {len(entries)} input(s)")
        return v
    nuls = csv_path.read_bytes().count(b"\0")
    if nuls:
        add("nul-in-output", "", f"results.csv holds {nuls} NUL byte(s)")
    worklist = res.out / "worklist.csv"
    if worklist.is_file():
        cells = sorted({c for row in read_rows(worklist) for c in row.values() if _is_formula(c)})
        if cells:
            add("formula-cell", "", f"worklist.csv: {[c[:60] for c in cells]}")
    rows = read_rows(csv_path)
    jsonl = res.out / "results.jsonl"
    if jsonl.is_file():
        lines = jsonl.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
        bad = 0
        for line in lines:
            try:
                json.loads(line)
            except ValueError:
                bad += 1
        if bad or len(lines) != len(rows):
            add("jsonl-broken", "", f"{len(lines)} JSONL line(s) ({bad} not JSON) for {len(rows)} CSV row(s)")
    spelled: dict[str, str] = {}
    for e in entries:
        for s in _spellings(e):
            spelled.setdefault(s, e)
    seen: dict[str, int] = {}
    for row in rows:
        name = _normalise(row.get("path", ""), res.folder)
        entry = spelled.get(name)
        if entry is None:
            add("extra-row", name, "a row for no input file")
            continue
        seen[entry] = seen.get(entry, 0) + 1
        status, reason = row.get("status", ""), (row.get("reason") or "").strip()
        if status not in STATUSES:
            add("bad-status", entry, f"status {status!r}")
        elif status != "scored" and not reason:
            add("no-reason", entry, f"{status} without a reason")
        elif _UNEXPECTED.search(reason):
            add("unexpected-error", entry, reason[:300])
        cells = sorted({c for c in row.values() if _is_formula(c)})
        if cells:
            add("formula-cell", entry, f"results.csv cells {[c[:60] for c in cells]}")
        want = (expect or {}).get(entry)
        if want and status != want:
            add("control-status", entry, f"{status} ({reason[:200]}), expected {want}")
    for e in entries:
        n = seen.get(e, 0)
        if n == 0:
            add("missing-row", e, "no row")
        elif n > 1:
            add("duplicate-row", e, f"{n} rows")
    return v


def statuses(res: RunResult, *, partial: bool = False) -> dict[str, tuple[str, str]]:
    """Input (relative) -> (status, reason) from a run's results.csv (or, with ``partial``, the rows its
    results.csv.partial holds when the run did not finish); empty when there is neither."""
    csv_path = res.out / "results.csv"
    if not csv_path.is_file() and partial:
        csv_path = res.out / "results.csv.partial"
    if not csv_path.is_file():
        return {}
    spelled = {s: e for e in expected_entries(res.folder) for s in _spellings(e)}
    out = {}
    for row in read_rows(csv_path):
        entry = spelled.get(_normalise(row.get("path", ""), res.folder))
        if entry is not None:
            out[entry] = (row.get("status", ""), row.get("reason", ""))
    return out


_DIGITS = re.compile(r"\d+")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def normalise_reason(reason: str, path: str = "") -> str:
    """A failure reason with the file name, quoted values and numbers taken out, to group similar failures."""
    r = reason
    for p in {path, os.path.basename(path)} - {""}:
        r = r.replace(p, "<file>")
    r = _QUOTED.sub("'…'", r)
    r = _DIGITS.sub("N", r)
    return r[:160]


def format_table(rows: Iterable[Sequence[object]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header], *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])
