"""Linear probes for adult ``abnormal`` on frozen classifier features (issue 15, attempt 5).

Usage:
    python scripts/classifier_probe.py [--data ../shared/data] [--model models/cxr-classifier ...]
                                       [--l2 1000,3000,10000,30000,100000] [--json OUT.json]

The question: the networks learn adult findings from ~300 NIH images, 48 of them normal, while half of every epoch
goes to pediatric pneumonia. Does a small adult-only head on what they already compute do better than their own
``abnormal`` logit? For every ``--model`` (and, with several, their features side by side) the global-average-pooled
``features`` of each image (its inputs exactly as in `scripts/classifier_experiments.py`: the model's own recipe and
lung crop) are standardised on the training images, and an L2-penalised logistic regression
(`cxrtriage.train.evaluation.fit_logistic`, classes weighted to balance) is fitted for ``abnormal`` on the training
patients of the adult sources (NIH and ieee, seed-0 splits). The penalty is chosen on the NIH validation patients
(highest AUROC); test is scored once, with the chosen penalty. Printed per feature set: validation AUROC for every
penalty, then validation and test AUROC (95% bootstrap CI) of the chosen probe and the paired difference from the first
model's raw ``abnormal`` logit on the same patients.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from classifier_experiments import model_inputs, paired_delta  # noqa: E402

from cxrtriage.evaluate.metrics import auroc, bootstrap_ci  # noqa: E402
from cxrtriage.model import load_classifier  # noqa: E402
from cxrtriage.train.data import classifier_records, label_matrix  # noqa: E402
from cxrtriage.train.evaluation import fit_logistic  # noqa: E402
from cxrtriage.train.population import pool  # noqa: E402

ADULT_SOURCES = ("nih14", "ieee_lungs")


def features_and_logits(data: Path, model_dir: Path, records: list[Any], batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features [N, C] and raw logits [N, L] of ``records`` through the model's ONNX graph."""
    model = load_classifier(model_dir, intra_op_threads=1)
    x = model_inputs(data, model, model_dir, records)
    feats, logits = [], []
    for i in range(0, len(x), batch):
        out = model.run(np.ascontiguousarray(x[i:i + batch], dtype=np.float32)[:, None], features=True)
        if out.features is None:
            raise SystemExit(f"{model_dir}: the model has no features output to probe")
        feats.append(pool(out.features))
        logits.append(out.logits)
    return np.concatenate(feats), np.concatenate(logits)


def probe(f: np.ndarray, y: np.ndarray, train: np.ndarray, val: np.ndarray, test: np.ndarray, l2s: list[float],
          reference: np.ndarray, n_boot: int) -> dict[str, Any]:
    mu, sd = f[train].mean(axis=0), f[train].std(axis=0) + 1e-6
    z = (f - mu) / sd
    pos = y[train] == 1
    weights = np.where(pos, 0.5 / pos.mean(), 0.5 / (1 - pos.mean()))
    scores: dict[float, np.ndarray] = {}
    val_auc: dict[float, float] = {}
    for l2 in l2s:
        beta = fit_logistic(z[train], y[train], weights=weights, l2=l2)
        scores[l2] = z @ beta[:-1] + beta[-1]
        val_auc[l2] = auroc(y[val], scores[l2][val])
    best = max(l2s, key=lambda v: val_auc[v])
    out: dict[str, Any] = {"val_auroc_by_l2": {str(k): round(v, 4) for k, v in val_auc.items()}, "chosen_l2": best}
    for name, m in (("val", val), ("test", test)):
        lo, hi = bootstrap_ci(auroc, y[m], scores[best][m], n_boot=n_boot, seed=0)
        d, dlo, dhi = paired_delta(y[m], scores[best][m], reference[m], n_boot)
        out[name] = {"auroc": round(auroc(y[m], scores[best][m]), 4), "ci95": [round(lo, 4), round(hi, 4)],
                     "minus_first_model_logit": round(d, 4), "delta_ci95": [round(dlo, 4), round(dhi, 4)],
                     "first_model_logit_auroc": round(auroc(y[m], reference[m]), 4),
                     "n_pos": int((y[m] == 1).sum()), "n_neg": int((y[m] == 0).sum())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--model", type=Path, action="append", help="model folder (repeatable); default models/cxr-classifier")
    ap.add_argument("--l2", default="1000,3000,10000,30000,100000", help="comma-separated L2 penalties to choose from")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    dirs = args.model or [REPO / "models" / "cxr-classifier"]
    l2s = [float(v) for v in args.l2.split(",")]
    seeds = {json.loads((d / "train_config.json").read_text())["config"]["seed"] for d in dirs}
    if len(seeds) != 1:
        raise SystemExit(f"--model folders were trained with different seeds {sorted(seeds)}: their splits differ")
    labels, records = classifier_records(args.data, seed=seeds.pop())
    k = labels.index("abnormal")
    y_all = label_matrix(records, labels)[:, k]
    split = np.array([r.split for r in records])
    source = np.array([r.source for r in records])
    adult = np.isin(source, ADULT_SOURCES) & np.isfinite(y_all)
    keep = np.flatnonzero(adult)
    recs = [records[i] for i in keep]
    y, split, source = y_all[keep], split[keep], source[keep]
    train = split == "train"
    val, test = (split == "val") & (source == "nih14"), (split == "test") & (source == "nih14")
    feats, logits = {}, {}
    for d in dirs:
        feats[d.name], logits[d.name] = features_and_logits(args.data, d, recs)
    reference = logits[dirs[0].name][:, k]
    sets = dict(feats)
    if len(dirs) > 1:
        sets["+".join(feats)] = np.concatenate(list(feats.values()), axis=1)
    results = {name: probe(f, y, train, val, test, l2s, reference, args.n_boot) for name, f in sets.items()}
    results["_setup"] = {"train_images": int(train.sum()), "train_normal": int((y[train] == 0).sum()),
                         "models": [str(d) for d in dirs], "l2": l2s}
    for name, r in results.items():
        if name.startswith("_"):
            continue
        print(f"\n## probe on {name}: validation AUROC by L2 {r['val_auroc_by_l2']} -> L2 {r['chosen_l2']:g}")
        for sp in ("val", "test"):
            v = r[sp]
            print(f"  {sp:4s} NIH abnormal {v['auroc']:.3f} ({v['ci95'][0]:.3f}-{v['ci95'][1]:.3f}), "
                  f"{dirs[0].name} logit {v['first_model_logit_auroc']:.3f}, difference {v['minus_first_model_logit']:+.3f} "
                  f"({v['delta_ci95'][0]:+.3f} to {v['delta_ci95'][1]:+.3f}), pos/neg {v['n_pos']}/{v['n_neg']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
