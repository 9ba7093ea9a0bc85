#!/usr/bin/env python3
"""Fuzz ``cxrtriage predict`` at scale: the long version of ``tests/fuzz/test_fuzz_predict.py``.

Writes a deterministic corpus of mutated files (``tests/fuzz/fuzz_corpus.py``: the structured catalogue, then
seeded random mutations up to ``--count``) under ``DIR/corpus/<family>/``, a tiny model under ``DIR/model/``,
and runs ``python3 -m cxrtriage predict . --out ...`` in every family folder for every worker mode, each run
as its own session whose process-tree memory is sampled (``tests/fuzz/fuzz_harness.py`` says how).

Every invariant a run breaks is listed. When a run breaks one that no single row explains (it aborted, crashed,
timed out, used too much memory, left processes or partial files), the files are isolated: the files without a
row are tried alone (with the folder's two control files), the first of them that reproduces the failure is a
culprit, and the rest are run again without it; when that does not find one, the files are bisected.
Everything stays under DIR for reproduction: ``DIR/corpus`` (with ``corpus.json``: each file's base and
mutation), ``DIR/runs/w<N>/<family>/`` (outputs, stdout, stderr, the command), ``DIR/isolate/``, and
``DIR/report.json``.

Usage::

    python3 scripts/fuzz_predict.py --count 1000 --seed 0 --workers 0,default --out /tmp/fuzz
    python3 scripts/fuzz_predict.py --count 1000 --families bombs,names --workers 2 --out /tmp/fuzz-bombs

Exit status: 0 when every invariant held, 1 when any was broken (each listed with its file), 2 on bad usage.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shlex
import shutil
import stat
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "fuzz"), str(REPO / "tests")]  # this checkout's cxrtriage first

from factories import make_tiny_classifier  # noqa: E402
from fuzz_corpus import CORPUS_JSON, FAMILIES, build_corpus  # noqa: E402
from fuzz_harness import (  # noqa: E402
    RUN_LEVEL,
    GiB,
    MiB,
    RunResult,
    Violation,
    check_run,
    expected_entries,
    format_table,
    normalise_reason,
    run_predict,
    statuses,
)


class Fuzzer:
    def __init__(self, args: argparse.Namespace, out: Path, model: Path, info: dict[str, dict[str, Any]]) -> None:
        self.args = args
        self.out = out
        self.model = model
        self.info = info  # relpath -> corpus.json entry
        self.bound = int(args.bound_gib * GiB)
        self.kill = int(args.kill_gib * GiB)
        self.extra = shlex.split(args.extra_args)
        self.isolation_runs = 0
        self.iso_seq = 0

    def run(self, folder: Path, out: Path, workers: int | None, label: str, *, extra: tuple[str, ...] = (),
            launch: str = "exec") -> RunResult:
        n = len(expected_entries(folder))
        res = run_predict(folder, out, model=self.model, workers=workers, label=label, kill_rss=self.kill,
                          timeout_s=self.args.timeout + 0.5 * n, extra_args=[*self.extra, *extra], launch=launch)
        summary = {k: getattr(res, k) for k in ("label", "workers", "returncode", "wall_s", "peak_tree_rss",
                                                "peak_process_hwm", "rusage_maxrss", "peak_processes", "killed", "orphans")}
        summary["violations"] = [x.line() for x in check_run(res, bound=self.bound)]
        (out.parent / f"{out.name}.logs" / "result.json").write_text(json.dumps(summary, indent=1))
        return res

    def expect(self, family: str) -> dict[str, str]:
        prefix = family + "/"
        return {k[len(prefix):]: str(v["expect"]) for k, v in self.info.items() if k.startswith(prefix) and v.get("expect")}

    # ---- isolation
    def _subset(self, family: str, names: list[str]) -> Path:
        """A fresh folder holding the family's control files and ``names`` (hard links, or re-made links/FIFOs)."""
        self.iso_seq += 1
        folder = self.out / "isolate" / f"{self.iso_seq:04d}-{family}" / "in"
        folder.mkdir(parents=True)
        src = self.out / "corpus" / family
        controls = [e for e in expected_entries(src) if e.startswith("000-control-")]
        for name in dict.fromkeys([*controls, *names]):
            s, d = src / name, folder / name
            d.parent.mkdir(parents=True, exist_ok=True)
            st = os.lstat(s)
            if stat.S_ISLNK(st.st_mode):
                d.symlink_to(os.readlink(s))
            elif stat.S_ISFIFO(st.st_mode):
                os.mkfifo(d)
            else:
                try:
                    os.link(s, d)
                except OSError:
                    shutil.copyfile(s, d)
        return folder

    def _try(self, family: str, names: list[str], workers: int | None
             ) -> tuple[list[Violation], dict[str, tuple[str, str]]] | None:
        """Run the controls + ``names`` alone (one image per batch, so that rows reach the partial results file
        as they are made): the run-level violations, and the rows it wrote; None when the budget is used up."""
        if self.isolation_runs >= self.args.isolation_runs:
            return None
        self.isolation_runs += 1
        folder = self._subset(family, names)
        res = self.run(folder, folder.parent / "out", workers, f"{family}/{tag(workers)}/isolate",
                       extra=("--batch-size", "1"), launch=self.args.launch)
        v = [x for x in check_run(res, bound=self.bound) if x.invariant in RUN_LEVEL and x.invariant != "missing-row"]
        return v, statuses(res, partial=True)

    def confirm(self, family: str, name: str, workers: int | None) -> list[Violation]:
        """The run-level violations of ``name`` alone (with the controls), run exactly as a user would."""
        self.iso_seq += 1
        folder = self._subset(family, [name])
        res = self.run(folder, folder.parent / "out", workers, f"{family}/{tag(workers)}/confirm")
        return [x for x in check_run(res, bound=self.bound) if x.invariant in RUN_LEVEL]

    def isolate(self, family: str, names: list[str], workers: int | None, seen: dict[str, tuple[str, str]]
                ) -> list[tuple[str, list[Violation]]]:
        """The files among ``names`` that break a run-level invariant, each with what it does alone."""
        if not names:
            return []
        tried = self._try(family, names, workers)
        if tried is None:
            return [(names[0], [Violation("not-isolated", names[0], f"isolation budget used up ({len(names)} files "
                                                                    "left unchecked)", family)])]
        v, got = tried
        seen.update({k: s for k, s in got.items() if k in names})
        if not v:
            return []
        if len(names) == 1:
            print(f"    culprit: {family}/{ascii(names[0])[1:-1]}: {sorted({x.invariant for x in v})}", flush=True)
            return [(names[0], v)]
        missing = [n for n in names if n not in got]
        if 0 < len(missing) < len(names):  # it got somewhere: the culprit is among the first files without a row
            for head in missing[: self.args.window]:
                alone = self._try(family, [head], workers)
                if alone is not None and alone[0]:
                    print(f"    culprit: {family}/{ascii(head)[1:-1]}: {sorted({x.invariant for x in alone[0]})}", flush=True)
                    return [(head, alone[0])] + self.isolate(family, [n for n in names if n != head], workers, seen)
        mid = len(names) // 2
        return self.isolate(family, names[:mid], workers, seen) + self.isolate(family, names[mid:], workers, seen)


def tag(workers: int | None) -> str:
    """Short name of a worker mode in labels and folder names: w0, w2, wdefault."""
    return "wdefault" if workers is None else f"w{workers}"


def mode_name(workers: int | None) -> str:
    return "default workers" if workers is None else f"--workers {workers}"


def warm_up() -> None:
    """Import what a predict run imports, once, so that forked isolation runs skip it."""
    import importlib

    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    for name in ("cxrtriage.cli.app", "cxrtriage.pipeline.predict", "cxrtriage.pipeline.decode", "cxrtriage.io",
                 "cxrtriage.model", "onnxruntime", "SimpleITK", "cv2", "pydicom.pixels", "gdcm", "pylibjpeg",
                 "openjpeg", "rle", "libjpeg", "jpeg_ls"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    import cxrtriage

    if Path(cxrtriage.__file__).resolve().parents[1] != REPO:
        raise SystemExit(f"cxrtriage imports from {cxrtriage.__file__}, not from {REPO}")


def _describe(info: dict[str, dict[str, Any]], relpath: str) -> str:
    d = info.get(relpath) or info.get(ascii(relpath)[1:-1]) or {}
    rec = f" [issue {d['recipe']}]" if d.get("recipe") else ""
    return f"{d.get('base', '?')}: {d.get('mutation', '?')}{rec}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=1000, help="mutated files (default 1000; the catalogue is ~650)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", default="0,default",
                    help="worker modes, comma-separated: a number for --workers N, 'default' for no --workers option "
                         "(default: 0,default)")
    ap.add_argument("--out", type=Path, required=True, help="folder for the corpus, the runs and the report")
    ap.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated subset of {', '.join(FAMILIES)}")
    ap.add_argument("--bound-gib", type=float, default=1.5, help="peak memory allowed for a run's process tree")
    ap.add_argument("--kill-gib", type=float, default=3.0, help="kill a run whose process tree passes this")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per run (plus 0.5 s per file)")
    ap.add_argument("--no-isolate", dest="isolate", action="store_false", help="do not look for the culprit files")
    ap.add_argument("--isolation-runs", type=int, default=600, help="most isolation runs per worker mode")
    ap.add_argument("--window", type=int, default=8, help="files without a row tried alone before bisecting")
    ap.add_argument("--extra-args", default="", help="more predict options, e.g. '--heatmaps --report'")
    ap.add_argument("--launch", choices=("fork", "exec"), default="fork",
                    help="how isolation runs start the CLI: forked from this warm process (default, ~5x faster) or "
                         "as python3 -m cxrtriage; every culprit is confirmed with the latter either way")
    args = ap.parse_args(argv)
    try:
        modes = [None if w.strip() == "default" else int(w) for w in args.workers.split(",")]
    except ValueError:
        ap.error("--workers: comma-separated integers or 'default'")
    families = tuple(f for f in args.families.split(",") if f)
    if unknown := set(families) - set(FAMILIES):
        ap.error(f"unknown families: {sorted(unknown)}")
    out: Path = args.out.resolve()
    if out.exists() and any(out.iterdir()):
        if not (out / "corpus" / CORPUS_JSON).is_file():
            ap.error(f"{out} exists and is not an earlier run's folder; choose an empty or new one")
        for sub in ("corpus", "runs", "isolate", "model"):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)

    t_start = time.monotonic()
    written = build_corpus(out / "corpus", count=args.count, seed=args.seed, families=families)
    info = {str(d["path"]): d for d in json.loads((out / "corpus" / CORPUS_JSON).read_text())["files"]}
    model = make_tiny_classifier(out / "model")
    fam_list = list(dict.fromkeys(m.family for m in written))
    print(f"corpus: {len(written)} files ({args.count} mutated + controls) in {len(fam_list)} families under "
          f"{out / 'corpus'}; built in {time.monotonic() - t_start:.1f} s", flush=True)

    if args.launch == "fork":
        warm_up()
    fz = Fuzzer(args, out, model, info)
    report: dict[str, Any] = {"count": args.count, "seed": args.seed, "bound_bytes": fz.bound, "modes": {}}
    all_violations: list[tuple[int | None, Violation, str]] = []
    exit_code = 0
    for workers in modes:
        fz.isolation_runs = 0
        t_mode = time.monotonic()
        rows_table = []
        reasons: collections.Counter[str] = collections.Counter()
        mode_peak, mode_peak_proc = 0, 0
        culprit_lines: list[str] = []
        for fam in fam_list:
            folder = out / "corpus" / fam
            res = fz.run(folder, out / "runs" / tag(workers) / fam / "out", workers, f"{fam}/{tag(workers)}")
            v = check_run(res, expect=fz.expect(fam), bound=fz.bound)
            got = statuses(res)
            needs_isolation = [x for x in v if x.invariant in RUN_LEVEL and x.invariant != "missing-row"]
            if needs_isolation and args.isolate:
                names = [e for e in expected_entries(folder) if not e.startswith("000-control-")]
                seen: dict[str, tuple[str, str]] = {}
                found = fz.isolate(fam, names, workers, seen)
                for k, s in seen.items():
                    got.setdefault(k, s)
                for i, (name, vs) in enumerate(found):
                    if vs and vs[0].invariant != "not-isolated":
                        confirmed = fz.confirm(fam, name, workers)
                        found[i] = (name, confirmed or [Violation("fork-only", name, "not reproduced as python3 -m "
                                                                   "cxrtriage: " + "; ".join(x.line() for x in vs), fam)])
                for name, vs in found:
                    kinds = sorted({x.invariant for x in vs})
                    detail = "; ".join(x.detail[:220] for x in vs if x.invariant not in ("partial-left", "no-results"))
                    line = f"{fam}/{ascii(name)[1:-1]}  [{', '.join(kinds)}]  {_describe(info, f'{fam}/{name}')}  -> {detail}"
                    culprit_lines.append(line)
                    all_violations.append((workers, Violation("+".join(kinds), f"{fam}/{name}", detail, tag(workers)),
                                           _describe(info, f"{fam}/{name}")))
                if not found:
                    culprit_lines.append(f"{fam}: run-level failure not reproduced by any single file "
                                         f"({[x.invariant for x in needs_isolation]})")
            for x in v:
                rel = f"{fam}/{x.path}" if x.path else fam
                all_violations.append((workers, x, _describe(info, rel) if x.path else ""))
            counts = collections.Counter(s for s, _ in got.values())
            for name, (status, reason) in got.items():
                if status == "failed":
                    reasons[normalise_reason(reason, name)] += 1
            mode_peak, mode_peak_proc = max(mode_peak, res.peak_tree_rss), max(mode_peak_proc, res.peak_process_hwm)
            rows_table.append([fam, len(expected_entries(folder)), len(got), counts["scored"], counts["excluded"],
                               counts["failed"], res.returncode, f"{res.peak_tree_rss / MiB:.0f}",
                               f"{res.peak_process_hwm / MiB:.0f}", f"{res.wall_s:.1f}", len(v)])
            print(f"  {tag(workers)} {fam}: {len(v)} violation(s), {res.wall_s:.1f} s", flush=True)
        wall = time.monotonic() - t_mode
        print(f"\n== {mode_name(workers)}: {wall:.0f} s, peak tree {mode_peak / MiB:.0f} MiB, largest process "
              f"{mode_peak_proc / MiB:.0f} MiB (bound {fz.bound / MiB:.0f} MiB), {fz.isolation_runs} isolation run(s)")
        print(format_table(rows_table, ["family", "files", "rows", "scored", "excluded", "failed", "exit", "tree MiB",
                                        "proc MiB", "wall s", "violations"]))
        print("\nfailures by reason (normalised):")
        for r, n in reasons.most_common(40):
            print(f"  {n:4d}  {r}")
        if culprit_lines:
            print("\nfiles that break a run-level invariant (each reproduced alone, with the controls):")
            for line in culprit_lines:
                print("  " + line)
        report["modes"][tag(workers)] = {"wall_s": wall, "peak_tree_rss": mode_peak, "peak_process_hwm": mode_peak_proc,
                                         "families": rows_table, "failed_reasons": dict(reasons),
                                         "culprits": culprit_lines}
    per_file = [(w, x, d) for w, x, d in all_violations if x.path]
    run_level = [(w, x, d) for w, x, d in all_violations if not x.path]
    if all_violations:
        exit_code = 1
        print(f"\n{len(per_file)} violation(s) with a file, {len(run_level)} for a run as a whole:")
        for w, x, d in sorted(per_file, key=lambda t: (t[1].path, t[0])):
            print(f"  {tag(w)} {x.invariant}: {ascii(x.path)[1:-1]} -- {x.detail[:200]}  ({d})")
        for w, x, _ in run_level:
            print(f"  {tag(w)} {x.invariant}: {x.run}: {x.detail[:300]}")
    report["violations"] = [{"workers": w, "invariant": x.invariant, "path": ascii(x.path)[1:-1], "run": x.run,
                             "detail": x.detail, "mutation": d} for w, x, d in all_violations]
    report["wall_s"] = time.monotonic() - t_start
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(f"\ntotal {report['wall_s']:.0f} s; report: {out / 'report.json'}; "
          f"{'ALL INVARIANTS HELD' if not exit_code else 'INVARIANTS BROKEN'}")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
