"""The image's population estimate: a logistic regression on the classifier's pooled features, pediatric vs adult.

PNG and JPEG files carry no age, and without one triage applies the most cautious operating points (those of an
unknown population), which calls few normal children ``normal``. The estimate lets the image say "this is a young
child" when nothing else does. ``fit_population_estimate`` is pure: given the global-average-pooled ``features``
output of every image of the model's patient splits, it fits the regression on the TRAIN split (Kermany children
aged 1-5 against NIH/ieee adults aged 18 and over; NIH patients aged 6-17 belong to neither population and are left
out), sets the decision threshold on the VALIDATION split (``THRESHOLD_RULE``) and measures the TEST split once.
``add_population_estimate`` computes the features through the product path (reader, preprocessing, ONNX) and writes
the ``population_estimate`` section into the manifest; ``cxrtriage train population-estimate`` recomputes it for a
shipped model without retraining.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxrtriage.evaluate.metrics import auroc, bootstrap_ci, wilson_interval
from cxrtriage.io.read import read_image
from cxrtriage.model import Classifier, load_model
from cxrtriage.model.manifest import load_manifest, read_manifest_data, write_sealed_manifest
from cxrtriage.train.data import Record
from cxrtriage.train.evaluation import fit_logistic, sigmoid
from cxrtriage.train.operating import POPULATIONS, _insert_after, population_of_source, records_from_splits

log = logging.getLogger("cxrtriage.train")

ESTIMATED = "pediatric"  # the class the regression estimates
VERSUS = "adult"
L2 = 1.0  # penalty on the slopes of the standardised features (Newton's method, see ``fit_logistic``)
# The threshold: the highest validation adult's logit plus this margin, and never below a probability of 0.5.
LOGIT_MARGIN = 2.0
THRESHOLD_RULE = (f"the highest probability among the validation adults, raised by {LOGIT_MARGIN:g} on the logit scale "
                  "(odds x e^2), and at least 0.5: no validation adult is estimated pediatric, with room for adults "
                  "the validation split did not hold")
N_BOOT = 1000
# Adult images outside the patient splits, measured too (never fitted on): the real DICOM chest of the shared data.
OTHER_ADULTS = "dicom/cxr_real"


def _r(v: float | None, nd: int = 4) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), nd)


def pool(features: np.ndarray) -> np.ndarray:
    """Global average pooling of feature maps [N, C, h, w] -> [N, C] (float64)."""
    out: np.ndarray = np.asarray(features, np.float64).mean(axis=(2, 3))
    return out


def pooled_features(data_root: Path, model: Classifier, paths: Sequence[str | Path], *, batch: int = 32) -> np.ndarray:
    """The pooled ``features`` output [N, C] of each image, read and preprocessed exactly as ``cxrtriage predict``
    does (``paths`` relative to ``data_root`` or absolute)."""
    parts: list[np.ndarray] = []
    for i in range(0, len(paths), batch):
        x = np.stack([model.preprocess(read_image(data_root / p)).array for p in paths[i:i + batch]])
        out = model.run(x, features=True)
        assert out.features is not None
        parts.append(pool(out.features))
        if i % (batch * 20) == 0:
            log.info("pooled features of %d of %d images", i + len(x), len(paths))
    return np.concatenate(parts) if parts else np.zeros((0, 0))


def fitting_group(r: Record) -> str:
    """``pediatric`` (a Kermany child), ``adult`` (an NIH patient aged 18 or over, an ieee patient) or ``neither`` (an
    NIH patient younger than 18: aged 6-17 no population of the manifest holds; the few aged 2-4 are children of an
    adult source, measured but never fitted on, to tell children from the Kermany source)."""
    pop = population_of_source(r.source)
    if pop == ESTIMATED or r.age is None:
        return pop
    lo, hi = POPULATIONS[pop]["age_years"]
    if r.age < lo or (hi is not None and r.age >= hi):
        return "neither"
    return pop


def _share(hits: int, n: int) -> dict[str, Any]:
    lo, hi = wilson_interval(hits, n)
    return {"n": n, "estimated_pediatric": hits, "share": _r(hits / n if n else math.nan), "ci95": [_r(lo), _r(hi)]}


def fit_population_estimate(x: np.ndarray, records: Sequence[Record], *, n_boot: int = N_BOOT,
                            other_adults: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """The manifest's ``population_estimate`` section from pooled features ``x`` [N, C] of ``records`` (their
    splits, sources and ages). ``other_adults``: pooled features of further adult images by name, never in the
    fitting, whose probabilities the section records. See the module docstring."""
    groups = np.array([fitting_group(r) for r in records])
    split = np.array([r.split for r in records])
    source = np.array([r.source for r in records])
    ages = np.array([np.nan if r.age is None else r.age for r in records])
    fit = (split == "train") & np.isin(groups, [ESTIMATED, VERSUS])
    y = (groups == ESTIMATED).astype(np.float64)
    mean = x[fit].mean(axis=0)
    scale = x[fit].std(axis=0)
    scale = np.where(scale > 1e-8, scale, 1.0)
    z = (x - mean) / scale
    # Both classes weigh the same (Kermany has ~12 training children per adult).
    n_ped, n_ad = int(y[fit].sum()), int((1 - y[fit]).sum())
    w = np.where(y == 1, 0.5 / n_ped, 0.5 / n_ad) * fit.sum()
    beta = fit_logistic(z[fit], y[fit], weights=w[fit], l2=L2)
    # Folded back onto the raw pooled features, so the product needs no standardisation step.
    weights = beta[:-1] / scale
    bias = float(beta[-1] - weights @ mean)
    logit = x @ weights + bias
    p = sigmoid(logit)

    val = split == "val"
    val_adults = val & (groups == VERSUS)
    top = float(logit[val_adults].max())
    threshold = round(float(max(0.5, sigmoid(np.array([top + LOGIT_MARGIN]))[0])), 6)
    est = p >= threshold

    def figures(mask: np.ndarray) -> dict[str, Any]:
        return _share(int(est[mask].sum()), int(mask.sum()))

    def split_figures(name: str) -> dict[str, Any]:
        m = split == name
        kids, adults = m & (groups == ESTIMATED), m & (groups == VERSUS)
        lo, hi = bootstrap_ci(auroc, y[kids | adults], p[kids | adults], n_boot=n_boot)
        out: dict[str, Any] = {
            "children_1_5_kermany": figures(kids),
            "adults": figures(adults),
            "adults_by_source": {s: figures(adults & (source == s)) for s in POPULATIONS[VERSUS]["sources"]},
            "auroc": _r(auroc(y[kids | adults], p[kids | adults])), "auroc_ci95": [_r(lo), _r(hi)],
            "nih_children_under_6": figures(m & (source == "nih14") & (ages < 6)),
            "nih_aged_6_17": figures(m & (source == "nih14") & (ages >= 6) & (ages < 18)),
        }
        if name == "val":
            out["highest_adult_probability"] = _r(float(p[val_adults].max()), 6)
            out["lowest_child_probability"] = _r(float(p[m & (groups == ESTIMATED)].min()), 6)
        return out

    nih_young = (source == "nih14") & (ages < 18)
    others = {name: float(sigmoid(np.array([float(f @ weights + bias)]))[0]) for name, f in (other_adults or {}).items()}
    return {
        "estimates": ESTIMATED,
        "versus": VERSUS,
        "features_output": "features",
        "pooling": "global_average",
        "weights": [round(float(v), 8) for v in weights],
        "bias": round(bias, 8),
        "threshold": threshold,
        "threshold_rule": THRESHOLD_RULE,
        "use": (f"only when neither the DICOM age nor --population says who the patient is: probability >= threshold "
                f"-> the {ESTIMATED} population; below it -> unknown (the most cautious operating points)"),
        "fitted_on": (f"train split of the model's patient splits: {n_ped} Kermany children (1-5 years) vs {n_ad} adults "
                      f"(NIH aged 18+, ieee); both classes weighted equally, L2 {L2:g} on standardised features; NIH "
                      f"patients aged 6-17 ({int(((split == 'train') & (groups == 'neither')).sum())}) left out"),
        "validation": split_figures("val"),
        "test": split_figures("test"),
        "nih_under_18_all_splits": [{"age": _r(float(a), 1), "split": str(s), "probability": _r(float(q), 4),
                                     "estimated_pediatric": bool(e)}
                                    for a, s, q, e in sorted(zip(ages[nih_young], split[nih_young], p[nih_young],
                                                                 est[nih_young], strict=True), key=lambda t: t[0])],
        "other_adult_images": {name: {"probability": _r(q, 4), "estimated_pediatric": bool(q >= threshold)}
                               for name, q in sorted(others.items())},
    }


def add_population_estimate(data_root: Path, out: Path, *, records: Sequence[Record] | None = None,
                            n_boot: int = N_BOOT) -> Path:
    """Fit the population estimate of the classifier in ``out`` (see ``fit_population_estimate``) and write it into
    its manifest (re-sealed, loaded back and checked). ``records``: default those of ``out/splits/splits.csv``."""
    path = out / "manifest.json"
    if records is None:
        records = records_from_splits(data_root, out / "splits" / "splits.csv")
    model = load_model(path, task="classification", intra_op_threads=None)
    assert isinstance(model, Classifier)
    x = pooled_features(data_root, model, [r.path for r in records])
    extra = sorted(p.relative_to(data_root).as_posix() for p in (data_root / OTHER_ADULTS).glob("*.dcm"))
    xe = pooled_features(data_root, model, extra) if extra else np.zeros((0, x.shape[1]))
    section = fit_population_estimate(x, records, n_boot=n_boot, other_adults=dict(zip(extra, xe, strict=True)))
    data = {k: v for k, v in read_manifest_data(path).items() if k != "population_estimate"}
    written = write_sealed_manifest(path, _insert_after(data, "study_operating_points", {"population_estimate": section}))
    load_manifest(written)
    return written
