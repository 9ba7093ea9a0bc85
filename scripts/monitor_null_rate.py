"""How often ``cxrtriage monitor`` raises an alert or a warning when nothing has shifted: random halves of one set.

Usage:
    python scripts/monitor_null_rate.py RESULTS [RESULTS...] [--splits 200] [--seed 0] [--shift OTHER_RESULTS]

RESULTS are results folders or files of ``cxrtriage predict``, read as one set. Each split shuffles the rows (seeded)
and compares the second half (current) with the first (reference, a results reference), every slice and metric as
``cxrtriage monitor`` does (subgroups against the same subgroup of the reference, levels judged over the whole run).
Prints, over the splits, the share of splits with at least one alert / warning and the number of judged tests per
split. ``--shift`` also compares OTHER_RESULTS with the whole set once (a real shift that
must alert). The alert levels in ``cxrtriage/monitor/drift.py`` are checked with it (docs/monitor.md).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxrtriage.monitor.drift import Reference, drift_of, slice_drift  # noqa: E402
from cxrtriage.monitor.profile import profile_of  # noqa: E402
from cxrtriage.monitor.run import read_records  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", type=Path)
    ap.add_argument("--splits", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shift", type=Path, nargs="*", default=None)
    args = ap.parse_args()

    records, _, labels, _ = read_records(args.results)
    rng = random.Random(args.seed)
    with_alert = with_warn = 0
    judged: list[int] = []
    worst_psi: list[float] = []
    for _ in range(args.splits):
        rows = list(records)
        rng.shuffle(rows)
        half = len(rows) // 2
        reference = Reference(profile_of(rows[:half], labels, name="first half", kind="results"), tuple(rows[:half]))
        drift = drift_of(rows[half:], labels, reference)
        metrics = [m for s in drift for m in s.metrics]
        with_alert += any(m.level == "alert" for m in metrics)
        with_warn += any(m.level == "warn" for m in metrics)
        judged.append(sum(m.level in ("alert", "warn", "ok") for m in metrics))
        worst_psi.append(max((m.psi or 0.0) for m in metrics))
    print(f"{len(records)} rows, {args.splits} random halves: splits with an alert {with_alert} "
          f"({100 * with_alert / args.splits:.1f}%), with a warning {with_warn} ({100 * with_warn / args.splits:.1f}%); "
          f"judged tests per split {min(judged)}-{max(judged)}; largest PSI per split: median "
          f"{sorted(worst_psi)[len(worst_psi) // 2]:.3f}, max {max(worst_psi):.3f}")
    if args.shift:
        other, _, _, _ = read_records(args.shift)
        reference = profile_of(records, labels, name="results", kind="results")
        drift = slice_drift("all", "all", other, labels, reference, composition=True)  # judged alone
        alerts = [m.name for m in drift.metrics if m.level == "alert"]
        print(f"shift {', '.join(map(str, args.shift))} ({len(other)} rows) against all {len(records)}: "
              f"{len(alerts)} alert(s): {', '.join(alerts) or 'none'}")


if __name__ == "__main__":
    main()
