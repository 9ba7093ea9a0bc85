"""Score classifier variants (test-time augmentation, lung-cropped models, logit ensembles) on the validation and test patients.

Usage:
    python scripts/classifier_experiments.py [--data ../shared/data] [--model models/cxr-classifier ...]
                                             [--tta none,default] [--threads 1] [--json OUT.json]

Every ``--model`` folder is scored through its ONNX file (the graph `predict` runs), on the inputs its training saw:
the images of its own seed's patient splits, preprocessed by its manifest's recipe (input size included: a 320 px
model gets 320 px inputs; a ``train_config.json`` whose recipe differs from the manifest's is refused), and, when its
``train_config.json`` names a ``lung_crop`` segmenter, first cut to the cached lung boxes
(`cxrtriage.train.lungcrop`). A variant is one model under one TTA scheme, or (with two or more models) the mean of
all models' raw logits. TTA schemes act on the model input: ``default`` averages the raw logits of the input itself,
shifts of 8/224 of the input size (+-8 px at 224 px, +-11 px at 320 px) along each axis and zooms of 0.92x / 1.08x
about the centre (7 views). Flips are left out: a
mirrored chest puts the heart on the wrong side. Raw logits are compared (AUROC does not depend on the
per-label Platt calibration, which is monotone).

Prints, per variant: AUROC with a 95% percentile bootstrap CI (1000 case resamples, `cxrtriage.evaluate.metrics`)
for NIH ``abnormal`` and each NIH finding, Kermany ``pneumonia``/``abnormal``, ieee ``abnormal`` (val and test), and
the model's time per image (batch 16) for each TTA scheme, timed side by side in this process; then every variant's
AUROC difference from the first variant on the same cases (NIH ``abnormal``, Kermany ``pneumonia``) with a 95% paired
bootstrap CI, which is narrower than comparing two separate intervals.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxrtriage.evaluate.metrics import auroc, bootstrap_ci  # noqa: E402
from cxrtriage.model import Classifier, load_classifier  # noqa: E402
from cxrtriage.preprocess import PreprocessRecipe  # noqa: E402
from cxrtriage.train.data import Record, cached_arrays, classifier_records, label_matrix  # noqa: E402
from cxrtriage.train.lungcrop import LungCrop, lung_boxes  # noqa: E402

SHIFT = 8 / 224  # of the input size (8 px at 224 px, about 3.5% of the field), within the training augmentation's range
ZOOMS = (0.92, 1.08)
REPORT = (("nih14", "abnormal"), ("kermany224", "pneumonia"), ("kermany224", "abnormal"), ("ieee_lungs", "abnormal"))


def tta_views(x: np.ndarray, scheme: str, pad: float) -> list[np.ndarray]:
    """The views of a batch [N, 1, S, S] under ``scheme`` ("none" or "default"), each [N, 1, S, S]."""
    if scheme == "none":
        return [x]
    if scheme != "default":
        raise SystemExit(f"--tta: unknown scheme {scheme!r}; use none or default")
    s = x.shape[-1]
    px = round(SHIFT * s)  # the same share of the field at every input size
    mats: list[np.ndarray] = [np.array([[1, 0, dx], [0, 1, dy]], dtype=np.float32)
                              for dx, dy in ((px, 0), (-px, 0), (0, px), (0, -px))]
    mats += [cv2.getRotationMatrix2D((s / 2 - 0.5, s / 2 - 0.5), 0.0, z).astype(np.float32) for z in ZOOMS]
    views = [x]
    for m in mats:
        views.append(np.stack([cv2.warpAffine(img[0], m, (int(s), int(s)), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                              borderValue=float(pad))[None] for img in x]))
    return views


def model_logits(model: Classifier, x: np.ndarray, scheme: str, batch: int = 16) -> tuple[np.ndarray, float]:
    """Mean raw logits over the TTA views [N, L], and the seconds taken per image."""
    rec = model.manifest.preprocessing
    pad = rec.pad_value * (rec.output_range[1] - rec.output_range[0]) + rec.output_range[0]
    out = []
    t0 = time.perf_counter()
    for i in range(0, len(x), batch):
        xb = x[i : i + batch].astype(np.float32)[:, None]
        views = tta_views(xb, scheme, pad)
        out.append(np.mean([model.run(v).logits for v in views], axis=0))
    return np.concatenate(out), (time.perf_counter() - t0) / max(1, len(x))


def model_inputs(data_root: Path, model: Classifier, model_dir: Path, records: list[Record],
                 force_crop: LungCrop | None = None) -> np.ndarray:
    """The preprocessed inputs [N, S, S] this model was trained on and `predict` gives it: its manifest's recipe (S is
    the manifest's input size), lung-cropped when its training config says so, or when ``force_crop`` is given (the
    crop applied at inference only, to a model that did not train with it)."""
    cfg = json.loads((model_dir / "train_config.json").read_text())
    recipe = model.manifest.preprocessing
    if "preprocessing" in cfg and PreprocessRecipe.from_dict(cfg["preprocessing"]) != recipe:
        raise SystemExit(f"{model_dir}: train_config.json's preprocessing {cfg['preprocessing']} differs from "
                         f"manifest.json's {recipe.to_dict()}; re-seal or re-export the model so they agree")
    boxes = None
    crop = force_crop
    if cfg["config"].get("lung_crop"):
        crop = LungCrop(cfg["config"]["lung_crop"], float(cfg["config"]["lung_crop_margin"]))
    if crop is not None:
        all_boxes = lung_boxes(data_root, [r.path for r in classifier_records(data_root, seed=cfg["config"]["seed"])[1]], crop)
        boxes = {r.path: all_boxes[r.path] for r in records}
    x, _ = cached_arrays(data_root, records, recipe, boxes=boxes)
    return x


def metrics(logits: np.ndarray, y: np.ndarray, records: list[Record], labels: tuple[str, ...],
            n_boot: int) -> dict[str, Any]:
    """AUROC and its 95% CI per (split, source, label) with both classes present."""
    out: dict[str, Any] = {}
    split = np.array([r.split for r in records])
    source = np.array([r.source for r in records])
    pairs = list(REPORT) + [("nih14", lab) for lab in labels if lab != "abnormal"]
    for sp in ("val", "test"):
        for src, lab in pairs:
            m = (split == sp) & (source == src)
            yy, ss = y[m, labels.index(lab)], logits[m, labels.index(lab)]
            ok = np.isfinite(yy)
            yy, ss = yy[ok], ss[ok]
            if not (yy == 1).any() or not (yy == 0).any():
                continue
            lo, hi = bootstrap_ci(auroc, yy, ss, n_boot=n_boot, seed=0)
            out[f"{sp}/{src}/{lab}"] = {"auroc": round(auroc(yy, ss), 4), "ci95": [round(lo, 4), round(hi, 4)],
                                        "n_pos": int((yy == 1).sum()), "n_neg": int((yy == 0).sum())}
    return out


def paired_delta(y: np.ndarray, a: np.ndarray, b: np.ndarray, n_boot: int, seed: int = 0) -> tuple[float, float, float]:
    """AUROC(a) - AUROC(b) on the same cases, with a 95% paired percentile bootstrap CI (cases resampled together)."""
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        idx = rng.integers(0, y.size, y.size)
        if (y[idx] == 1).any() and (y[idx] == 0).any():
            vals.append(auroc(y[idx], a[idx]) - auroc(y[idx], b[idx]))
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return auroc(y, a) - auroc(y, b), float(lo), float(hi)


def deltas(variants: dict[str, np.ndarray], y: np.ndarray, records: list[Record], labels: tuple[str, ...],
           n_boot: int) -> dict[str, Any]:
    """Every variant against the first one (the reference), paired, for the headline pairs on val and test."""
    names = list(variants)
    split = np.array([r.split for r in records])
    source = np.array([r.source for r in records])
    out: dict[str, Any] = {}
    for name in names[1:]:
        for sp in ("val", "test"):
            for src, lab in (("nih14", "abnormal"), ("kermany224", "pneumonia")):
                m = (split == sp) & (source == src)
                yy = y[m, labels.index(lab)]
                ok = np.isfinite(yy)
                d, lo, hi = paired_delta(yy[ok], variants[name][m, labels.index(lab)][ok],
                                         variants[names[0]][m, labels.index(lab)][ok], n_boot)
                out[f"{name} - {names[0]} | {sp}/{src}/{lab}"] = {"delta": round(d, 4), "ci95": [round(lo, 4), round(hi, 4)]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--model", type=Path, action="append", help="model folder (repeatable); default models/cxr-classifier")
    ap.add_argument("--tta", default="none,default", help="comma-separated TTA schemes: none, default")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (timing depends on it)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--crop-at-inference", type=Path, metavar="SEGMENTER",
                    help="also lung-crop (margin 0.1) the inputs of models trained on whole images (a control: the crop "
                         "without retraining)")
    ap.add_argument("--json", type=Path, help="write every figure here")
    args = ap.parse_args()
    model_dirs = args.model or [REPO / "models" / "cxr-classifier"]
    schemes = [s.strip() for s in args.tta.split(",") if s.strip()]
    t_start = time.time()

    seeds = {json.loads((d / "train_config.json").read_text())["config"]["seed"] for d in model_dirs}
    if len(seeds) != 1:
        raise SystemExit(f"--model folders were trained with different seeds {sorted(seeds)}: their test patients differ")
    labels, records = classifier_records(args.data, seed=seeds.pop())
    records = [r for r in records if r.split in ("val", "test")]
    y = label_matrix(records, labels)
    results: dict[str, Any] = {"models": [str(d) for d in model_dirs], "variants": {}, "ms_per_image": {}}
    per_model: dict[tuple[str, str], np.ndarray] = {}
    all_logits: dict[str, np.ndarray] = {}
    for d in model_dirs:
        model = load_classifier(d, intra_op_threads=args.threads)
        if model.labels != labels:
            raise SystemExit(f"{d}: labels {model.labels} differ from the data's {labels}")
        force = LungCrop(str(args.crop_at_inference)) if args.crop_at_inference else None
        x = model_inputs(args.data, model, d, records, force)
        for scheme in schemes:
            logits, sec = model_logits(model, x, scheme)
            name = f"{d.name}{' crop-at-inference' if force else ''} tta={scheme}"
            per_model[(str(d), scheme)] = all_logits[name] = logits
            results["ms_per_image"][name] = round(1000 * sec, 2)
            results["variants"][name] = metrics(logits, y, records, labels, args.n_boot)
    if len(model_dirs) > 1:
        for scheme in schemes:
            mean = np.mean([per_model[(str(d), scheme)] for d in model_dirs], axis=0)
            name = "ensemble(" + "+".join(d.name for d in model_dirs) + f") tta={scheme}"
            results["ms_per_image"][name] = round(sum(results["ms_per_image"][k] for k in results["ms_per_image"]
                                                      if k.endswith(f" tta={scheme}") and not k.startswith("ensemble")), 2)
            results["variants"][name] = metrics(mean, y, records, labels, args.n_boot)
            all_logits[name] = mean
    results["paired_deltas"] = deltas(all_logits, y, records, labels, args.n_boot)
    results["wall_seconds"] = round(time.time() - t_start, 1)
    results["threads"] = args.threads

    for name, res in results["variants"].items():
        print(f"\n## {name}  ({results['ms_per_image'][name]} ms/image model time, {args.threads} thread(s))")
        for key, v in res.items():
            print(f"  {key:40s} {v['auroc']:.3f} ({v['ci95'][0]:.3f}-{v['ci95'][1]:.3f})  pos/neg {v['n_pos']}/{v['n_neg']}")
    if results["paired_deltas"]:
        print("\n## paired AUROC differences against the first variant (95% paired bootstrap CI)")
        for key, v in results["paired_deltas"].items():
            print(f"  {key:90s} {v['delta']:+.3f} ({v['ci95'][0]:+.3f} to {v['ci95'][1]:+.3f})")
    print(f"\nwall time {results['wall_seconds']} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
