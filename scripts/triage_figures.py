#!/usr/bin/env python3
"""Measure what the triage priorities give on the shared data, through the product (`predict` + `evaluate`).

Writes labels CSVs from ``../shared/data`` (Kermany test: ``abnormal`` = ``pneumonia`` = PNEUMONIA; NIH:
``abnormal`` = 1 - no_finding and the finding columns, with the patient split of ``models/cxr-classifier``),
runs ``cxrtriage predict`` on the Kermany test split (with ``--population pediatric``, without any population, so
that the model's population estimate from the image decides, and with ``--population unknown``, the estimate off)
and on all 486 NIH images (no age in a PNG: the estimate decides), then ``cxrtriage evaluate`` against: Kermany
test; the NIH held-out test patients; all 486 NIH images; the NIH images with a finding (an all-abnormal adult
cohort). Prints the images per population and its source, and the headline figures; every figure is in
``OUT/*.eval.json`` (``study_level``, ``priority``). About 4 minutes on 2 CPU cores.

    python scripts/triage_figures.py --out /tmp/triage-figures [--data ../shared/data] [--repo .]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

NIH_FINDINGS = ("Infiltration", "Atelectasis", "Nodule", "Effusion", "Consolidation", "Mass", "Pleural_Thickening",
                "Cardiomegaly", "Fibrosis", "Pneumonia")


def write_labels(data: Path, splits_csv: Path, out: Path) -> dict[str, Path]:
    """The labels CSVs ``evaluate`` reads (one row per image)."""
    out.mkdir(parents=True, exist_ok=True)
    split = {r["path"]: r["split"] for r in csv.DictReader(open(splits_csv, newline=""))}
    paths = {name: out / f"{name}.csv" for name in ("kermany_test", "nih_test", "nih_all", "nih_abnormal")}
    with open(paths["kermany_test"], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "abnormal", "pneumonia", "subtype"])
        for r in csv.DictReader(open(data / "kermany224" / "labels.csv", newline="")):
            if r["split"] == "test":
                y = int(r["label"] == "PNEUMONIA")
                w.writerow([r["image"], y, y, r["pneumonia_subtype_from_filename"] or "normal"])
    nih = list(csv.DictReader(open(data / "nih14" / "labels.csv", newline="")))
    selections = {
        "nih_test": [r for r in nih if split.get(f"nih14/{r['image']}") == "test"],
        "nih_all": nih,
        "nih_abnormal": [r for r in nih if r["no_finding"] == "0"],
    }
    for name, rows in selections.items():
        with open(paths[name], "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["image", "abnormal", *(x.lower() for x in NIH_FINDINGS), "sex", "view", "age", "split"])
            for r in rows:
                w.writerow([r["image"], 1 - int(r["no_finding"]), *(r[x] for x in NIH_FINDINGS), r["sex"], r["view"],
                            r["age"], split.get(f"nih14/{r['image']}", "")])
    return paths


def cxrtriage(repo: Path, *args: object) -> None:
    cmd = [sys.executable, "-m", "cxrtriage", *map(str, args)]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=repo, check=True, stdout=subprocess.DEVNULL)


def headline(ev: dict[str, Any]) -> str:
    pc = ev["priority"]["counts"]
    normals = sum(row["negative"] for row in pc.values())
    normal_normal = pc["normal"]["negative"]
    positives = ev["priority"]["positives_assessed"]
    flagged = positives - ev["priority"]["positives_called_normal"]
    urgent = sum(pc["urgent"].values()) + sum(pc["critical"].values())
    text = f"abnormal not normal {flagged}/{positives} ({flagged / max(positives, 1):.1%})"
    if normals:
        text += f"; normal studies normal {normal_normal}/{normals} ({normal_normal / normals:.1%})"
    return text + f"; urgent or critical {urgent}/{ev['matching']['matched_scored']}"


def population_counts(results_csv: Path) -> str:
    """Images per population and where it came from (``population_source``), from a results table."""
    counts: dict[str, int] = {}
    for r in csv.DictReader(open(results_csv, newline="")):
        key = f"{r.get('population') or '-'} ({r.get('population_source') or '-'})"
        counts[key] = counts.get(key, 0) + 1
    return ", ".join(f"{k} {n}" for k, n in sorted(counts.items()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--repo", type=Path, default=Path("."))
    args = ap.parse_args()
    repo, data, out = args.repo.resolve(), args.data.resolve(), args.out.resolve()
    labels = write_labels(data, repo / "models" / "cxr-classifier" / "splits" / "splits.csv", out / "labels")
    runs = {
        "kermany_pediatric": (data / "kermany224" / "test", ("--population", "pediatric"), ["kermany_test"]),
        "kermany_age_unknown": (data / "kermany224" / "test", (), ["kermany_test"]),
        "kermany_estimate_off": (data / "kermany224" / "test", ("--population", "unknown"), ["kermany_test"]),
        "nih": (data / "nih14" / "images", (), ["nih_test", "nih_all", "nih_abnormal"]),
    }
    results: dict[str, dict[str, Any]] = {}
    populations: dict[str, str] = {}
    for run, (inputs, options, evals) in runs.items():
        cxrtriage(repo, "predict", inputs, "--out", out / run, *options)
        populations[run] = population_counts(out / run / "results.csv")
        for name in evals:
            report = out / f"{run}.{name}.eval.json"
            cxrtriage(repo, "evaluate", "--results", out / run / "results.csv", "--labels", labels[name],
                      "--json", report, "--n-boot", "200")
            results[f"{run} / {name}"] = json.loads(report.read_text())
    print()
    for run, text in populations.items():
        print(f"{run}: images by population (source): {text}")
    for key, ev in results.items():
        print(f"{key}: {headline(ev)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
