"""Reduced-resolution decoding versus full decoding: calibrated scores and AUROC of `predict`, side by side.

Runs ``predict`` twice on each folder (as it decodes by default, and with ``--full-resolution``) and reports, per
label, the largest absolute difference of the calibrated scores and, with ``--labels`` (NIH ``labels.csv``), the
AUROC of each run and their difference. Folders of files named like the ``image`` column's stems join the labels.

Usage (not a test):

    python benchmarks/encode_sets.py nih --out /tmp/cxr-enc/nih
    python benchmarks/agreement.py /tmp/cxr-enc/nih/j2k_lossless /tmp/cxr-enc/nih/j2k_lossy \
        --labels /tmp/cxr-enc/nih/labels.csv
    python benchmarks/agreement.py ../shared/data/dicom/cxr_real
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# NIH finding columns for the model's labels; "abnormal" is any finding (no_finding == 0)
NIH = {"pneumonia": "Pneumonia", "infiltration": "Infiltration", "atelectasis": "Atelectasis", "nodule": "Nodule",
       "effusion": "Effusion", "consolidation": "Consolidation", "mass": "Mass",
       "pleural_thickening": "Pleural_Thickening", "cardiomegaly": "Cardiomegaly", "fibrosis": "Fibrosis"}


def _scores(folder: Path, reduced: bool, workers: int) -> dict[str, dict[str, float]]:
    from cxrtriage.pipeline.config import PredictConfig
    from cxrtriage.pipeline.predict import run_predict

    with tempfile.TemporaryDirectory() as out:
        run_predict(PredictConfig(inputs=(folder,), out_dir=Path(out), workers=workers, reduced_decode=reduced))
        rows = [json.loads(line) for line in (Path(out) / "results.jsonl").read_text().splitlines() if line.strip()]
    return {Path(r["path"]).stem: {k.removeprefix("score_"): v for k, v in r.items() if k.startswith("score_")}
            for r in rows if r["status"] == "scored"}


def _labels(path: Path) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            truth = {lab: int(r[col]) for lab, col in NIH.items()}
            truth["abnormal"] = 1 - int(r["no_finding"])
            out[Path(r["image"]).stem] = truth
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--labels", type=Path, default=None, help="NIH labels.csv (image stems join the file names)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from sklearn.metrics import roc_auc_score

    truth = _labels(args.labels) if args.labels else {}
    report = {}
    for folder in args.folders:
        red, full = _scores(folder, True, args.workers), _scores(folder, False, args.workers)
        keys = sorted(set(red) & set(full))
        labels = sorted(next(iter(red.values())))
        a = np.array([[red[k][lab] for lab in labels] for k in keys])
        b = np.array([[full[k][lab] for lab in labels] for k in keys])
        diff = np.abs(a - b)
        res: dict[str, object] = {"images": len(keys), "max_abs_score_diff": float(diff.max()),
                                  "p99_abs_score_diff": float(np.percentile(diff, 99)),
                                  "mean_abs_score_diff": float(diff.mean()),
                                  "per_label_max": {lab: float(diff[:, j].max()) for j, lab in enumerate(labels)}}
        print(f"{folder}: {len(keys)} images; |score reduced - full|: max {diff.max():.4f}, "
              f"99th percentile {np.percentile(diff, 99):.4f}, mean {diff.mean():.5f}")
        if truth and any(k in truth for k in keys):
            aucs = {}
            for j, lab in enumerate(labels):
                y = np.array([truth[k][lab] for k in keys if k in truth and lab in truth[k]])
                if lab not in NIH and lab != "abnormal" or y.size == 0 or y.min() == y.max():
                    continue
                idx = [i for i, k in enumerate(keys) if k in truth]
                ar, af = roc_auc_score(y, a[idx, j]), roc_auc_score(y, b[idx, j])
                aucs[lab] = {"reduced": ar, "full": af, "diff": ar - af, "positives": int(y.sum())}
                print(f"  {lab:20s} AUROC reduced {ar:.4f}  full {af:.4f}  diff {ar - af:+.4f}  ({int(y.sum())} positive)")
            res["auroc"] = aucs
            print(f"  largest |AUROC difference|: {max(abs(v['diff']) for v in aucs.values()):.4f}")
        report[str(folder)] = res
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
