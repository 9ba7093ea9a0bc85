"""Compare lung-segmenter training recipes by K-fold cross-validation over the train+val ieee patients (issue 15)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as `python3 scripts/segmenter_cv.py` from any checkout: use that checkout's package

from cxrtriage.errors import ConfigError  # noqa: E402
from cxrtriage.files import atomic_write  # noqa: E402
from cxrtriage.train.common import file_logger, log, seed_everything  # noqa: E402
from cxrtriage.train.data import Record, fold_records, patient_folds, segmenter_records  # noqa: E402
from cxrtriage.train.evaluation import dice_summary  # noqa: E402
from cxrtriage.train.segmenter import (  # noqa: E402
    MeanProbability,
    SegmenterConfig,
    eval_original,
    fit_segmenter,
    load_segmenter,
    resolve_config,
)

USAGE = """\
run:    python3 scripts/segmenter_cv.py run --data ../shared/data --out /tmp/segcv --recipe 1.0.0= --recipe B=aug=heavy,epochs=120
ensemble: python3 scripts/segmenter_cv.py ensemble /tmp/segcv --data ../shared/data --members 1.0.0,B --name E
report: python3 scripts/segmenter_cv.py report /tmp/segcv --baseline 1.0.0 --candidate B

A recipe is NAME=FIELD=VALUE,... over cxrtriage.train.segmenter.SegmenterConfig fields ("NAME=" is the default recipe,
the one `cxrtriage train segmenter` uses). Test patients (the recipe's test split for --seed) are never read. Each fold is
trained on the other folds; the recipe's checkpoint selection (best epoch by validation Dice) uses --val-fraction of
the training-fold patients, carved by patient exactly like the recipe's own split. A finished fold (oof.json) is not
run again, so an interrupted run resumes. Run two recipes in parallel as two processes over the same --out.
"ensemble" evaluates finished recipes' fold models together (class probabilities averaged, as
cxrtriage.train.segmenter.MeanProbability) on each fold's held-out images and writes them as one more recipe, NAME.
"""

_STRAT = "abnormal"  # the recipe's ieee split is stratified by this label; the folds and the validation carve are too


def _strat(r: Record) -> int:
    return r.labels[_STRAT]


def parse_recipe(spec: str, *, tiny: bool, seed: int) -> tuple[str, SegmenterConfig]:
    """``NAME=k=v,k=v`` → (NAME, SegmenterConfig): the default (or --tiny) recipe with those fields replaced."""
    name, sep, rest = spec.partition("=")
    if not sep or not name:
        raise ConfigError(f"--recipe {spec!r}: write NAME=FIELD=VALUE,... (or NAME= for the default recipe)")
    base = asdict(resolve_config(seed=seed, tiny=tiny))
    types = {f.name: type(base[f.name]) for f in fields(SegmenterConfig)}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or key not in types or key in ("seed", "tiny"):
            raise ConfigError(f"--recipe {spec!r}: {item!r} is not FIELD=VALUE for one of "
                              f"{sorted(set(types) - {'seed', 'tiny'})} (seed: --seed; tiny: --tiny)")
        base[key] = (value.lower() in ("1", "true", "yes")) if types[key] is bool else types[key](value)
    return name, resolve_config(config=SegmenterConfig(**base))


def cv_records(data_root: Path, *, seed: int, tiny: bool) -> list[Record]:
    """The recipe's train+val masked ieee images (its test patients left out), in the recipe's order."""
    recs = [r for r in segmenter_records(data_root, seed=seed) if r.split in ("train", "val")]
    if tiny:  # a handful of patients, for the test of this script
        keep = sorted({r.patient for r in recs})[:9]
        recs = [r for r in recs if r.patient in keep]
    return recs


def run_recipe(data_root: Path, out: Path, name: str, cfg: SegmenterConfig, *, k: int, val_fraction: float,
               fold_seed: int, tiny: bool) -> list[Path]:
    """Train and evaluate every fold of one recipe (sequentially); returns the per-fold oof.json files."""
    records = cv_records(data_root, seed=fold_seed, tiny=tiny)
    folds = patient_folds(records, k, fold_seed, strat=_strat)
    done = []
    for fold in range(k):
        fdir = out / name / f"fold{fold}"
        result = fdir / "oof.json"
        if result.is_file():
            done.append(result)
            continue
        t0 = time.time()
        fdir.mkdir(parents=True, exist_ok=True)
        handler = file_logger(fdir / "train_log.txt")
        try:
            recs = fold_records(records, folds, fold, val_fraction=val_fraction, seed=fold_seed, strat=_strat)
            g = seed_everything(cfg.seed, threads=int(os.environ.get("CXRTRIAGE_TRAIN_THREADS", "2")))
            info = fit_segmenter(data_root, fdir, recs, cfg, g, t0=t0)
            held = [r for r in recs if r.split == "test"]
            d = eval_original(load_segmenter(fdir), data_root, held, cfg.recipe())
            per_image = [{"path": r.path, "patient": r.patient, **{s: d[s][i] for s in d}} for i, r in enumerate(held)]
            atomic_write(result, json.dumps({
                "recipe": name, "config": asdict(cfg), "fold": fold, "folds": k, "fold_seed": fold_seed,
                "val_fraction": val_fraction,
                "images": {s: sum(r.split == s for r in recs) for s in ("train", "val", "test")},
                "best_epoch": info["best_epoch"], "best_val_dice": info["best_val_dice"],
                "seconds": round(time.time() - t0, 1), "threads": info["threads"],
                "summary": {s: dice_summary(v) for s, v in d.items()}, "per_image": per_image}, indent=2))
            log.info("%s fold %d: held-out lungs Dice %s", name, fold, dice_summary(d["lungs"]))
        finally:
            log.removeHandler(handler)
        done.append(result)
    return done


def ensemble_folds(data_root: Path, out: Path, members: list[str], name: str) -> list[Path]:
    """Each fold's member models as one (MeanProbability) on that fold's held-out images; written like a recipe."""
    if len(members) < 2 or name in members:
        raise ConfigError(f"--members {','.join(members)} --name {name}: name two or more finished recipes and a new name")
    runs = {m: load_oof(out, m) for m in members}
    first = runs[members[0]]
    keys = ("folds", "fold_seed", "val_fraction")

    def layout(fs: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        return [(f["fold"], *(f[key] for key in keys)) for f in fs]

    if any(layout(runs[m]) != layout(first) for m in members):
        raise ConfigError(f"{out}: the members' folds differ or are unfinished ({', '.join(members)}); finish every "
                          "member with the same --folds/--seed/--val-fraction first")
    k, fold_seed, val_fraction = (first[0][key] for key in keys)
    if len(first) != k:
        raise ConfigError(f"{out / members[0]}: {len(first)} of {k} folds finished; finish the run first")
    tiny = bool(first[0]["config"]["tiny"])
    records = cv_records(data_root, seed=fold_seed, tiny=tiny)
    folds = patient_folds(records, k, fold_seed, strat=_strat)
    done = []
    for fold in range(k):
        t0 = time.time()
        held = [r for r in fold_records(records, folds, fold, val_fraction=val_fraction, seed=fold_seed, strat=_strat)
                if r.split == "test"]
        if [r.path for r in held] != [im["path"] for im in first[fold]["per_image"]]:
            raise ConfigError(f"{out / members[0] / f'fold{fold}'}: its held-out images are not this data's fold {fold}")
        size = {runs[m][fold]["config"]["size"] for m in members}
        if len(size) != 1:
            raise ConfigError(f"members {members} take different input sizes {sorted(size)}: they cannot share one input")
        model = MeanProbability([load_segmenter(out / m / f"fold{fold}") for m in members]).eval()
        d = eval_original(model, data_root, held, SegmenterConfig(**runs[members[0]][fold]["config"]).recipe())
        per_image = [{"path": r.path, "patient": r.patient, **{s: d[s][i] for s in d}} for i, r in enumerate(held)]
        result = out / name / f"fold{fold}" / "oof.json"
        result.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(result, json.dumps({
            "recipe": name, "config": {"members": members, "tiny": tiny}, "fold": fold, "folds": k,
            "fold_seed": fold_seed, "val_fraction": val_fraction, "images": runs[members[0]][fold]["images"],
            "best_epoch": "+".join(str(runs[m][fold]["best_epoch"]) for m in members),
            "best_val_dice": None, "seconds": round(time.time() - t0, 1), "threads": None,
            "summary": {s: dice_summary(v) for s, v in d.items()}, "per_image": per_image}, indent=2))
        log.info("%s fold %d: held-out lungs Dice %s", name, fold, dice_summary(d["lungs"]))
        done.append(result)
    return done


def load_oof(out: Path, name: str) -> list[dict[str, Any]]:
    files = sorted((out / name).glob("fold*/oof.json"))
    if not files:
        raise ConfigError(f"{out / name}: no finished folds (fold*/oof.json); run the recipe first")
    return [json.loads(f.read_text()) for f in files]


def paired_bootstrap(patients: list[str], a: np.ndarray, b: np.ndarray, *, n_boot: int = 1000,
                     seed: int = 0) -> dict[str, Any]:
    """mean(b) - mean(a) over images, with a 95% CI from resampling PATIENTS (all their images) with replacement."""
    ids = sorted(set(patients))
    rows = {p: np.array([i for i, q in enumerate(patients) if q == p]) for p in ids}
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    for j in range(n_boot):
        idx = np.concatenate([rows[ids[i]] for i in rng.integers(0, len(ids), len(ids))])
        diffs[j] = b[idx].mean() - a[idx].mean()
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {"diff": round(float(b.mean() - a.mean()), 4), "ci95": [round(float(lo), 4), round(float(hi), 4)],
            "share_b_better": round(float((diffs > 0).mean()), 3), "n_boot": n_boot, "patients": len(ids)}


def report(out: Path, baseline: str, candidate: str, *, structure: str = "lungs", n_boot: int = 1000,
           seed: int = 0) -> dict[str, Any]:
    """Pooled out-of-fold Dice of both recipes, the paired bootstrap and the pre-registered decision."""
    runs = {n: load_oof(out, n) for n in (baseline, candidate)}
    pooled = {n: {im["path"]: float(im[structure]) for f in fs for im in f["per_image"]} for n, fs in runs.items()}
    fold_of = {n: {im["path"]: f["fold"] for f in fs for im in f["per_image"]} for n, fs in runs.items()}
    patient_of = {im["path"]: im["patient"] for fs in runs.values() for f in fs for im in f["per_image"]}
    if fold_of[baseline] != fold_of[candidate]:
        raise ConfigError("the two recipes were not evaluated on the same folds (different or unfinished fold runs); "
                          "finish both (same --folds/--seed/--val-fraction) before comparing")
    paths = sorted(pooled[baseline])
    a = np.array([pooled[baseline][p] for p in paths])
    b = np.array([pooled[candidate][p] for p in paths])
    sa, sb = dice_summary(a.tolist()), dice_summary(b.tolist())
    ship = bool(sb["mean"] is not None and sa["mean"] is not None and sb["mean"] >= sa["mean"]
                and sb["p5"] is not None and sa["p5"] is not None and sb["p5"] >= sa["p5"])
    res: dict[str, Any] = {
        "structure": structure, "images": len(paths), "folds": len(runs[baseline]),
        "recipes": {n: {"config": runs[n][0]["config"], "pooled": s,
                        "folds": [{"fold": f["fold"], "images": f["images"], "best_epoch": f["best_epoch"],
                                   "seconds": f["seconds"], "held_out": f["summary"][structure]} for f in runs[n]],
                        "structures": {st: dice_summary([im[st] for f in runs[n] for im in f["per_image"]])
                                       for st in ("lungs", "right_lung", "left_lung")}}
                    for n, s in ((baseline, sa), (candidate, sb))},
        "bootstrap": paired_bootstrap([patient_of[p] for p in paths], a, b, n_boot=n_boot, seed=seed),
        "rule": f"{candidate} wins iff its pooled mean >= {baseline}'s AND its pooled p5 >= {baseline}'s",
        "decision": candidate if ship else baseline,
    }
    atomic_write(out / f"report_{baseline}_vs_{candidate}.json", json.dumps(res, indent=2))
    return res


def markdown(res: dict[str, Any]) -> str:
    lines = ["| recipe | pooled mean | p5 | min | n | per fold mean (best epoch) |", "|---|---|---|---|---|---|"]
    for name, r in res["recipes"].items():
        p = r["pooled"]
        per = ", ".join(f"{f['held_out']['mean']:.3f} ({f['best_epoch']})" for f in r["folds"])
        lines.append(f"| {name} | {p['mean']:.3f} | {p['p5']:.3f} | {p['min']:.3f} | {p['n']} | {per} |")
    bs = res["bootstrap"]
    lines.append("")
    lines.append(f"paired bootstrap by patient ({bs['n_boot']} resamples of {bs['patients']} patients): "
                 f"mean difference {bs['diff']:+.4f}, 95% CI [{bs['ci95'][0]:+.4f}, {bs['ci95'][1]:+.4f}], "
                 f"candidate better in {bs['share_b_better']:.1%} of resamples")
    lines.append(f"rule: {res['rule']} -> decision: {res['decision']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, epilog=USAGE, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train and evaluate the folds of each --recipe (recipes one after another)")
    r.add_argument("--data", type=Path, required=True)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--recipe", action="append", required=True, metavar="NAME=FIELD=VALUE,...")
    r.add_argument("--folds", type=int, default=3)
    r.add_argument("--seed", type=int, default=0, help="training seed and the seed of the folds and the patient split")
    r.add_argument("--val-fraction", type=float, default=0.25,
                   help="share of the training-fold patients used for checkpoint selection (the recipe's own split is "
                        "60/20 train/val, i.e. 0.25)")
    r.add_argument("--tiny", action="store_true", help="tiny recipe and 9 patients (for tests)")
    e = sub.add_parser("ensemble", help="evaluate finished recipes' fold models together as one more recipe")
    e.add_argument("out", type=Path)
    e.add_argument("--data", type=Path, required=True)
    e.add_argument("--members", required=True, help="comma-separated finished recipe names, e.g. 1.0.0,B")
    e.add_argument("--name", required=True, help="name of the ensemble (a new recipe name under OUT)")
    p = sub.add_parser("report", help="pooled out-of-fold Dice, paired bootstrap and the decision")
    p.add_argument("out", type=Path)
    p.add_argument("--baseline", required=True)
    p.add_argument("--candidate", required=True)
    p.add_argument("--boot", type=int, default=1000)
    a = ap.parse_args(argv)
    if a.cmd == "run":
        recipes = [parse_recipe(s, tiny=a.tiny, seed=a.seed) for s in a.recipe]
        for name, cfg in recipes:
            run_recipe(a.data, a.out, name, cfg, k=a.folds, val_fraction=a.val_fraction, fold_seed=a.seed, tiny=a.tiny)
        return 0
    if a.cmd == "ensemble":
        ensemble_folds(a.data, a.out, [m for m in a.members.split(",") if m], a.name)
        return 0
    res = report(a.out, a.baseline, a.candidate, n_boot=a.boot)
    sys.stdout.write(markdown(res) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
