"""After training: export ONNX, fit Platt calibration and thresholds on validation, evaluate on test, write manifest + card."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxrtriage.errors import ModelError
from cxrtriage.files import atomic_write
from cxrtriage.io.dicom.source import age_band as dicom_age_band
from cxrtriage.model.integrity import canonical_json
from cxrtriage.model.manifest import (
    SCHEMA_VERSION,
    load_manifest,
    manifest_text,
    sha256_file,
    verify_onnx,
    write_sealed_manifest,
)
from cxrtriage.model.verify import open_checked_session
from cxrtriage.preprocess import PreprocessRecipe
from cxrtriage.train.data import (
    Record,
    age_band,
    cached_arrays,
    classifier_records,
    label_matrix,
    nih_positive_counts,
    tiny_subset,
    view_group,
)
from cxrtriage.train.evaluation import fit_platt, label_metrics, operating_points, sigmoid
from cxrtriage.train.export import check_head, export_onnx, find_head
from cxrtriage.train.nets import build_model, predict_logits

log = logging.getLogger("cxrtriage.train")
REPO = Path(__file__).resolve().parents[2]

INTENDED_USE = ("Research and clinical decision support only: prioritising adult frontal chest radiographs for review "
                "and flagging possible findings. Not a diagnosis; every output must be reviewed by a qualified reader. "
                "Not validated for pediatric use beyond pneumonia vs normal, for lateral views, or for clinical deployment.")

LABEL_MAPPING = {
    "abnormal": {"nih14": "1 - No Finding (any of the 14 findings)", "kermany224": "PNEUMONIA=1, NORMAL=0",
                 "ieee_lungs": "finding != 'No Finding' (COVID-19, ARDS, Pneumocystis = 1)"},
    "pneumonia": {"nih14": "Pneumonia column", "kermany224": "PNEUMONIA=1 (bacterial or viral), NORMAL=0",
                  "ieee_lungs": "COVID-19 or Pneumocystis = 1, No Finding = 0, ARDS undefined (masked)"},
}


class _Export(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out: tuple[torch.Tensor, torch.Tensor] = self.net(x)  # (logits, features); Module calls are typed Any
        return out


def write_manifest(out: Path, data: dict[str, Any]) -> Path:
    """Write ``out/manifest.json`` sealed (its integrity computed), then load it back: valid, sealed, matching the
    ONNX file and its graph (input size, one output per label)."""
    path = write_sealed_manifest(out / "manifest.json", data)
    m = load_manifest(path)
    verify_onnx(m)
    open_checked_session(m)
    return path


def run_speed_benchmark(onnx_path: Path, *, batch: int = 16, threads: int = 2) -> dict[str, Any] | None:
    """Model-only ORT speed via benchmarks/bench_model_speed.py (a subprocess; None when the script is absent)."""
    script = REPO / "benchmarks" / "bench_model_speed.py"
    if not script.is_file():
        return None
    res = subprocess.run([sys.executable, str(script), str(onnx_path), "--batch", str(batch), "--threads", str(threads),
                          "--json"], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        log.warning("speed benchmark failed: %s", res.stderr[-500:])
        return None
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def _group_metrics(records: list[Record], y: np.ndarray, p: np.ndarray, n_boot: int) -> dict[str, Any]:
    keys = {
        "source": lambda r: r.source,
        "sex": lambda r: r.sex or "unknown",
        "age": age_band,
        "view": view_group,
    }
    out: dict[str, Any] = {}
    ok = np.isfinite(y)
    for attr, fn in keys.items():
        vals = np.array([fn(r) for r in records])
        for v in sorted(set(vals[ok])):
            m = ok & (vals == v)
            res = label_metrics(y[m], p[m], None, n_boot=n_boot)
            res.pop("ece", None)
            out[f"{attr}={v}"] = res
    return out


REFERENCE_QUANTILES = 101  # the score CDF in 1 % steps: KS within 0.01, PSI bins at the deciles
REFERENCE_POPULATIONS = {"all": ("nih14", "kermany224", "ieee_lungs"), "adult": ("nih14", "ieee_lungs"),
                         "pediatric": ("kermany224",)}


def _counts(values: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def validation_reference(records: list[Record], probs: np.ndarray, labels: tuple[str, ...],
                         calibration: dict[str, Any], onnx_sha256: str) -> dict[str, Any]:
    """The manifest's ``reference``: what the model's calibrated scores looked like on the validation split, for
    ``cxrtriage monitor`` to compare a site's results against (drift).

    ``records`` are the validation images, ``probs`` [N, L] their calibrated scores. Per population (``all``, and the
    adult and pediatric sources apart: a site compares itself with the one it serves): the number of images, per label
    the score quantiles in 1 % steps, and the composition the monitor can compare with DICOM facts (age band, sex,
    view; "" = unknown). ``calibration_sha256`` and ``onnx_sha256`` say which scores these are: a re-calibrated or
    re-exported model needs a new reference (``cxrtriage train reference``).
    """
    source = np.array([r.source for r in records])
    q = np.linspace(0.0, 1.0, REFERENCE_QUANTILES)
    populations: dict[str, Any] = {}
    for name, sources in REFERENCE_POPULATIONS.items():
        m = np.isin(source, sources)
        recs = [r for r, keep in zip(records, m, strict=True) if keep]
        if not recs:
            continue
        # Kermany's ages are not in its labels; its README gives 1-5 years for every child
        ages = [dicom_age_band(r.age if r.age is not None else (3.0 if r.source == "kermany224" else None)) for r in recs]
        populations[name] = {
            "n": len(recs),
            "sources": _counts([r.source for r in recs]),
            "scores": {lab: [float(f"{v:.5g}") for v in np.quantile(probs[m, j], q)] for j, lab in enumerate(labels)},
            "age_band": _counts(ages),
            "sex": _counts([(r.sex or "").upper()[:1] for r in recs]),
            "view": _counts([v if (v := view_group(r)) != "unknown" else "" for r in recs]),
        }
    return {
        "what": "calibrated scores of the validation split (the images the calibration and thresholds were fitted on)",
        "split": "val",
        "quantiles": REFERENCE_QUANTILES,
        "calibration_sha256": hashlib.sha256(canonical_json(calibration)).hexdigest(),
        "onnx_sha256": onnx_sha256,
        "populations": populations,
    }


def add_reference(data_root: Path, out: Path) -> Path:
    """Recompute the ``reference`` of an existing classifier folder (model.pt, manifest.json, train_config.json)
    without retraining: the same validation images (checked against splits/splits.csv), the same network and the
    manifest's own calibration. Writes it into manifest.json, which is then no longer sealed: re-seal it on purpose
    with ``cxrtriage models seal OUT`` (which validates it and shows that only ``reference`` changed)."""
    path = out / "manifest.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    info = json.loads((out / "train_config.json").read_text(encoding="utf-8"))
    cfg = info["config"]
    labels = tuple(data["labels"])
    _, records = classifier_records(data_root, seed=int(cfg["seed"]))
    if cfg["tiny"]:
        records = tiny_subset(records)
    val = [r for r in records if r.split == "val"]
    splits = out / "splits" / "splits.csv"
    if splits.is_file():
        with open(splits, newline="", encoding="utf-8") as fh:
            listed = sorted(row["path"] for row in csv.DictReader(fh) if row["split"] == "val")
        if listed != sorted(r.path for r in val):
            raise ModelError(f"{splits}: its validation list differs from the recipe's (seed {cfg['seed']}); "
                             "the reference would describe other images than the ones the model was validated on")
    x, _ = cached_arrays(data_root, val, PreprocessRecipe.from_dict(data["preprocessing"]))
    ckpt = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    model = build_model(ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    logits = predict_logits(model, x)
    cal = data.get("calibration") or {}
    a = np.array([float(cal.get("a", {}).get(lab, 1.0)) for lab in labels])
    b = np.array([float(cal.get("b", {}).get(lab, 0.0)) for lab in labels])
    data["reference"] = validation_reference(val, sigmoid(logits * a + b), labels, cal, data["sha256"])
    atomic_write(path, manifest_text(data))
    return path


def reliability_plot(path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cxrtriage.evaluate.metrics import reliability

    n = len(curves)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (name, (y, p)) in zip(axes.flat, curves.items(), strict=False):
        rel = reliability(y, p, n_bins=10)
        ok = rel.counts > 0
        ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=1)
        ax.plot(rel.mean_predicted[ok], rel.observed[ok], marker="o", lw=1.5)
        ax.set_title(f"{name}\nECE {rel.ece:.3f}, n={len(y)}", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def experiments_text(out: Path) -> str | None:
    """The model folder's ``experiments.md`` (other attempts, written by hand), included in MODEL_CARD.md when present."""
    path = out / "experiments.md"
    return path.read_text(encoding="utf-8") if path.is_file() else None


def write_classifier_card(data_root: Path, out: Path) -> Path:
    """(Re)render MODEL_CARD.md from an existing manifest.json and train_config.json (no retraining, no re-export)."""
    from cxrtriage.train.card import classifier_card

    data = json.loads((out / "manifest.json").read_text())
    info = json.loads((out / "train_config.json").read_text())
    path = out / "MODEL_CARD.md"
    atomic_write(path, classifier_card(data, info, nih_positive_counts(data_root), experiments_text(out)))
    return path


def finalize_classifier(data_root: Path, out: Path, *, records: list[Record] | None = None,
                        x_all: np.ndarray | None = None) -> Path:
    """Export model.pt → model.onnx; calibrate + threshold on val; evaluate on test; study-level operating points;
    write manifest.json and MODEL_CARD.md."""
    info = json.loads((out / "train_config.json").read_text())
    cfg = info["config"]
    tiny = bool(cfg["tiny"])
    n_boot = 100 if tiny else 1000
    labels = tuple(info["labels"])
    recipe = PreprocessRecipe.from_dict(info["preprocessing"])
    if records is None:
        _, records = classifier_records(data_root, seed=int(cfg["seed"]))
        if tiny:
            records = tiny_subset(records)
    if x_all is None:
        x_all, _ = cached_arrays(data_root, records, recipe)
    ckpt = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    model = build_model(ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()

    onnx_path = out / "model.onnx"
    export_onnx(_Export(model), onnx_path, recipe.size, ("logits", "features"))
    weight = model.head.weight.detach().numpy()
    bias = model.head.bias.detach().numpy()
    head = find_head(onnx_path, weight, bias)
    check_head(onnx_path, head, len(labels), weight.shape[1])

    y_all = label_matrix(records, labels)
    split = np.array([r.split for r in records])
    source = np.array([r.source for r in records])
    logits = predict_logits(model, x_all)
    va = split == "val"
    cal_a, cal_b, thresholds, notes = {}, {}, {}, []
    for j, lab in enumerate(labels):
        m = va & np.isfinite(y_all[:, j])
        yv, zv = y_all[m, j], logits[m, j]
        if (yv == 1).any() and (yv == 0).any():
            a, b = fit_platt(zv, yv)
            cal_a[lab], cal_b[lab] = a, b
            thresholds[lab] = operating_points(yv, sigmoid(a * zv + b))
        else:
            cal_a[lab], cal_b[lab] = 1.0, 0.0
            notes.append(f"{lab}: validation split lacks positives or negatives; identity calibration, no thresholds")
    a_vec = np.array([cal_a[lab] for lab in labels])
    b_vec = np.array([cal_b[lab] for lab in labels])
    probs = sigmoid(logits * a_vec + b_vec)

    te = split == "test"
    test_sets = {
        "kermany224_test (pediatric)": te & (source == "kermany224"),
        "nih14_test (adult)": te & (source == "nih14"),
        "ieee_lungs_test (adult)": te & (source == "ieee_lungs"),
        "adult_test (nih14 + ieee_lungs)": te & (source != "kermany224"),
    }
    test_metrics: dict[str, Any] = {}
    for name, m in test_sets.items():
        per: dict[str, Any] = {}
        for j, lab in enumerate(labels):
            mm = m & np.isfinite(y_all[:, j])
            if mm.sum() == 0:
                continue
            per[lab] = label_metrics(y_all[mm, j], probs[mm, j], thresholds.get(lab), n_boot=n_boot)
        if per:
            test_metrics[name] = per
    test_recs = [r for r, t in zip(records, te, strict=True) if t]
    subgroups = {lab: _group_metrics(test_recs, y_all[te, labels.index(lab)], probs[te, labels.index(lab)], n_boot)
                 for lab in ("abnormal", "pneumonia")}

    def _auc(setname: str, lab: str) -> float | None:
        auc: float | None = test_metrics.get(setname, {}).get(lab, {}).get("auroc")
        return auc

    domain_shift = {
        "pneumonia_auroc_kermany224_test": _auc("kermany224_test (pediatric)", "pneumonia"),
        "pneumonia_auroc_adult_test": _auc("adult_test (nih14 + ieee_lungs)", "pneumonia"),
        "pneumonia_auroc_nih14_test": _auc("nih14_test (adult)", "pneumonia"),
        "abnormal_auroc_kermany224_test": _auc("kermany224_test (pediatric)", "abnormal"),
        "abnormal_auroc_nih14_test": _auc("nih14_test (adult)", "abnormal"),
    }
    curves = {}
    for j, lab in enumerate(labels):
        mm = te & np.isfinite(y_all[:, j])
        if mm.any():
            curves[lab] = (y_all[mm, j], probs[mm, j])
    reliability_plot(out / "reliability_test.png", curves, "Calibrated scores on the test split (all sources pooled)")
    vcurves = {lab: (y_all[va & np.isfinite(y_all[:, j]), j], probs[va & np.isfinite(y_all[:, j]), j])
               for j, lab in enumerate(labels) if (va & np.isfinite(y_all[:, j])).any()}
    reliability_plot(out / "reliability_val.png", vcurves, "Calibrated scores on the validation split (fit set)")

    speed = None if tiny else run_speed_benchmark(onnx_path)
    size_mb = round(onnx_path.stat().st_size / 1e6, 2)
    counts: dict[str, dict[str, int]] = {"train": {}, "val": {}, "test": {}}
    for s in counts:
        for src in ("nih14", "kermany224", "ieee_lungs"):
            counts[s][src] = int(((split == s) & (source == src)).sum())
    label_mapping = dict(LABEL_MAPPING)
    for lab in labels[2:]:
        label_mapping[lab] = {"nih14": f"{lab} column (NIH ChestX-ray14)", "kermany224": "undefined (masked)",
                              "ieee_lungs": "undefined (masked)"}
    data: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "name": "cxr-classifier" if not tiny else "cxr-classifier-tiny",
        "version": "1.0.0" if not tiny else "0.0.1-tiny",
        "task": "classification",
        "onnx_file": "model.onnx",
        "sha256": sha256_file(onnx_path),
        "input": {"name": "image", "shape": [None, 1, recipe.size, recipe.size]},
        "labels": list(labels),
        "outputs": {"logits": "logits", "features": "features"},
        "head": head,
        "preprocessing": recipe.to_dict(),
        "thresholds": thresholds,
        "calibration": {"method": "platt", "a": cal_a, "b": cal_b},
        "intended_use": INTENDED_USE,
        "training_data": ("NIH ChestX-ray14 subset (486 adults, one image per patient), Kermany pediatric pneumonia "
                          "(published train split), ieee covid-chestxray lungs (101 adult images); patient-level splits "
                          "in splits/splits.csv"),
        "metrics": {
            "test": test_metrics,
            "subgroups": subgroups,
            "domain_shift": domain_shift,
            "speed": speed or {},
            "onnx_mb": size_mb,
            "images": counts,
        },
        "model_card": "MODEL_CARD.md",
        "reference": validation_reference([r for r, v in zip(records, va, strict=True) if v], probs[va], labels,
                                          {"method": "platt", "a": cal_a, "b": cal_b}, sha256_file(onnx_path)),
        "label_mapping": label_mapping,
        "architecture": {"name": "SlimResNet", **ckpt["config"], "feature_map": "post-ReLU output of the last residual block"},
        "training": {"best_epoch": info["best_epoch"], "epochs": cfg["epochs"], "seed": cfg["seed"],
                     "train_seconds": info["train_seconds"], "notes": notes},
    }
    path = write_manifest(out, data)
    # Populations, per-population label validation and study-level operating points: from the exported ONNX model
    # run exactly as `cxrtriage predict` runs it, so that `cxrtriage train operating-points` reproduces them.
    from cxrtriage.train.operating import add_operating_points

    path = add_operating_points(data_root, out, records=records, n_boot=n_boot)
    # The population estimate from the image, from the same ONNX model (`cxrtriage train population-estimate`).
    from cxrtriage.train.population import add_population_estimate

    path = add_population_estimate(data_root, out, records=records, n_boot=n_boot)
    write_classifier_card(data_root, out)
    log.info("classifier manifest written: %s", path)
    return path
