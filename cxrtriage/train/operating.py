"""Per-population label validation and study-level operating points, from held-out scores of a finished model.

``operating_points_from_scores`` is pure: given the calibrated scores of the validation and test images, their
labels, splits and sources, it decides which labels are validated for which population (held-out AUROC whose 95 %
bootstrap CI lies above 0.5), sets each tier's study-level threshold on the VALIDATION split for a stated target,
and measures what the whole decision (``triage.decide_priority``) gives on validation and test, per population,
with 95 % Wilson intervals. ``add_operating_points`` scores a model folder's images through the product path
(the ONNX file, as ``cxrtriage predict`` runs it) and writes the result into its manifest; the training recipe
calls it after export, and ``cxrtriage train operating-points`` recomputes it for a shipped model without
retraining.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxrtriage.errors import ConfigError
from cxrtriage.evaluate.metrics import (
    auroc,
    between_cases,
    bootstrap_ci,
    threshold_for_max_share,
    threshold_for_sensitivity,
)
from cxrtriage.evaluate.study import tier_result, tier_truth
from cxrtriage.io.read import read_image
from cxrtriage.model import Classifier, load_model
from cxrtriage.model.manifest import (
    UNKNOWN_POPULATION,
    LabelValidation,
    ModelManifest,
    Population,
    StudyOperatingPoints,
    StudyTier,
    load_manifest,
    read_manifest_data,
    write_sealed_manifest,
)
from cxrtriage.results import Priority
from cxrtriage.train.data import Record, classifier_records, label_matrix
from cxrtriage.train.evaluation import fit_logistic, sigmoid
from cxrtriage.triage import TriagePolicy, decide_priority, deciding_labels, load_policy, normalize_label, tier_labels

log = logging.getLogger("cxrtriage.train")

# The populations of the shipped data: the age ranges are those of the data each was validated on.
POPULATIONS: dict[str, dict[str, Any]] = {
    "pediatric": {"age_years": [1.0, 6.0], "sources": ("kermany224",),
                  "description": "children aged 1-5 years (Kermany pediatric pneumonia vs normal)"},
    "adult": {"age_years": [18.0, None], "sources": ("nih14", "ieee_lungs"),
              "description": "adults (NIH ChestX-ray14 subset, ieee covid-chestxray lungs)"},
}
NORMAL_TARGET_SENSITIVITY = 0.95  # share of abnormal studies that must NOT be called normal, per population
URGENT_MAX_FALSE = 0.05  # share of studies without an urgent finding that may be flagged urgent, per population
N_BOOT = 1000
# ieee_lungs has several images of one patient (often several days apart) and no study identifier: its patient is
# the study, the conservative unit (the study score is the highest over its images). Kermany and NIH: one study per
# image (NIH has one image per patient; Kermany's recurring patient ids name separate visits).
STUDY_BY_PATIENT = ("ieee_lungs",)
VALIDATION_DATA = "held-out patients (validation + test splits), never trained on"
VALIDATION_RULE = ("a label decides for a population when the 95% bootstrap CI (1000 resamples) of its AUROC on that "
                   "population's held-out patients lies above 0.5; otherwise it is reported but does not move the priority")


def _r(v: float | None, nd: int = 4) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), nd)


def study_ids(records: Sequence[Record]) -> list[str]:
    """The study of each record (see ``STUDY_BY_PATIENT``)."""
    return [r.patient if r.source in STUDY_BY_PATIENT else r.path for r in records]


def population_of_source(source: str) -> str:
    return next(name for name, p in POPULATIONS.items() if source in p["sources"])


def validate_labels(y: np.ndarray, p: np.ndarray, labels: Sequence[str], pops: np.ndarray, held_out: np.ndarray, *,
                    n_boot: int = N_BOOT) -> dict[str, dict[str, dict[str, Any]]]:
    """Per label and population: AUROC with its 95 % bootstrap CI on held-out images; validated when CI > 0.5."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for j, lab in enumerate(labels):
        out[lab] = {}
        for pop in POPULATIONS:
            m = held_out & (pops == pop) & np.isfinite(y[:, j])
            yy, pp = y[m, j], p[m, j]
            n_pos, n_neg = int((yy == 1).sum()), int((yy == 0).sum())
            entry: dict[str, Any] = {"validated": False, "auroc": None, "ci95": None, "n_pos": n_pos, "n_neg": n_neg}
            if n_pos == 0 and n_neg == 0:
                entry["note"] = "not labelled in this population's data"
            elif n_pos == 0 or n_neg == 0:
                entry["note"] = "only one class in this population's held-out data"
            else:
                lo, hi = bootstrap_ci(auroc, yy, pp, n_boot=n_boot)
                entry |= {"auroc": _r(auroc(yy, pp)), "ci95": [_r(lo), _r(hi)], "validated": bool(lo > 0.5)}
                if not entry["validated"]:
                    entry["note"] = "95% CI of the held-out AUROC does not lie above 0.5"
            out[lab][pop] = entry
    return out


def _study_max(values: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per study (``groups``): the highest value of each column (NaN-aware; all-NaN stays NaN), and the first row."""
    uniq, first, inv = np.unique(groups, return_index=True, return_inverse=True)
    out = np.full((uniq.size, values.shape[1]), np.nan)
    for col in range(values.shape[1]):
        v = values[:, col]
        ok = np.isfinite(v)
        agg = np.full(uniq.size, -np.inf)
        np.maximum.at(agg, inv[ok], v[ok])
        out[:, col] = np.where(np.isfinite(agg), agg, np.nan)
    return out, first


def _truth(y: np.ndarray, labels: Sequence[str], names: Sequence[str]) -> np.ndarray:
    """Per study (row of ``y``): ``evaluate.study.tier_truth`` of the tier whose truth is defined by ``names``."""
    rows = ({lab: float(v) for lab, v in zip(labels, row, strict=True) if math.isfinite(v)} for row in y)
    return np.array([tier_truth(t, names) for t in rows])


@dataclasses.dataclass(frozen=True, slots=True)
class HeldOut:
    """Calibrated scores of the held-out images with what each is: labels, split, population and study."""

    probs: np.ndarray  # [N, L] calibrated scores, as the product computes them
    y: np.ndarray  # [N, L] 1/0/NaN
    split: np.ndarray  # "val" | "test"
    population: np.ndarray
    study: np.ndarray
    labels: tuple[str, ...]

    def studies(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per study within ``mask``: max scores [S, L], max truth [S, L] and the population."""
        groups = self.study[mask]
        s, first = _study_max(self.probs[mask], groups)
        y, _ = _study_max(self.y[mask], groups)
        return s, y, self.population[mask][first]


def _manifest_with(base: ModelManifest, validation: Mapping[str, Mapping[str, Mapping[str, Any]]],
                   thresholds: Mapping[str, Mapping[str, float]], tier_labels: Mapping[str, Sequence[str]]) -> ModelManifest:
    """``base`` with populations, label validation and study thresholds: what ``decide_priority`` reads."""
    pops = {name: Population(name, p["age_years"][0], p["age_years"][1], p["description"])
            for name, p in POPULATIONS.items()}
    lv = {lab: {pop: LabelValidation(bool(v["validated"])) for pop, v in per.items()} for lab, per in validation.items()}
    tiers = {t: StudyTier(t, tuple(tier_labels[t]), dict(thr)) for t, thr in thresholds.items()}
    return dataclasses.replace(base, populations=pops, label_validation=lv,
                               study=StudyOperatingPoints(score="max", tiers=tiers))


def _decide(man: ModelManifest, policy: TriagePolicy, scores: np.ndarray, population: str) -> list[Priority]:
    labels = man.labels
    return [decide_priority(dict(zip(labels, map(float, row), strict=True)), manifest=man, policy=policy,
                            population=population).priority for row in scores]


def _score(scores: np.ndarray, labels: Sequence[str], names: Sequence[str]) -> np.ndarray:
    idx = [labels.index(n) for n in names]
    return scores[:, idx].max(axis=1) if idx else np.zeros(len(scores))


def operating_points_from_scores(h: HeldOut, base: ModelManifest, policy: TriagePolicy, *,
                                 n_boot: int = N_BOOT) -> dict[str, Any]:
    """``populations``, ``label_validation`` and ``study_operating_points`` for the manifest (see the module docstring)."""
    labels = h.labels
    validation = validate_labels(h.y, h.probs, labels, h.population, np.isin(h.split, ["val", "test"]), n_boot=n_boot)
    man0 = _manifest_with(base, validation, {}, {})
    # Truth per study (evaluate.study.tier_truth): normal = any label not ignored positive (the summary label too);
    # urgent = an urgent or critical finding positive; critical = a critical finding positive.
    truth_labels = tier_labels(policy, labels)
    tiers = [t for t in ("critical", "urgent", "normal") if t in truth_labels]
    # The labels a tier's study SCORE is taken over: its own findings (critical findings do not score "urgent").
    score_labels: dict[str, list[str]] = {
        t: (truth_labels[t] if t != "urgent" else [lab for lab in truth_labels[t] if lab not in truth_labels.get("critical", [])])
        for t in tiers}
    va, te = h.split == "val", h.split == "test"
    s_va, y_va, pop_va = h.studies(va)
    thresholds: dict[str, dict[str, float]] = {t: {} for t in tiers}
    for pop in POPULATIONS:
        m = pop_va == pop
        names = {t: [lab for lab in deciding_labels(man0, policy, pop) if lab in score_labels[t]] for t in tiers}
        for t in tiers:
            score = _score(s_va[m], labels, names[t])
            truth = _truth(y_va[m], labels, truth_labels[t])
            if t == "normal":
                ok = np.isfinite(truth)
                thr = threshold_for_sensitivity(truth[ok], score[ok], NORMAL_TARGET_SENSITIVITY)
                thresholds[t][pop] = round(between_cases(score[ok], thr), 6)
            else:
                neg = truth == 0
                # No deciding finding of this tier for the population: nothing can reach it (threshold above 1).
                thresholds[t][pop] = 1.0 if not names[t] else round(threshold_for_max_share(score[neg], URGENT_MAX_FALSE), 6)
    man = _manifest_with(base, validation, thresholds, score_labels)
    figures: dict[str, dict[str, dict[str, Any]]] = {t: {"validation": {}, "test": {}} for t in tiers}
    s_te, y_te, pop_te = h.studies(te)
    for split_name, (s_all, y_all, pop_all) in (("validation", (s_va, y_va, pop_va)), ("test", (s_te, y_te, pop_te))):
        for pop in POPULATIONS:
            m = pop_all == pop
            for as_pop, key in ((pop, pop), (UNKNOWN_POPULATION, f"{pop} (age unknown)")):
                prios = _decide(man, policy, s_all[m], as_pop)
                for t in tiers:
                    truth = _truth(y_all[m], labels, truth_labels[t])
                    figures[t][split_name][key] = tier_result(t, key, zip(prios, truth, strict=True)).to_json()
    targets = {t: ({"sensitivity": NORMAL_TARGET_SENSITIVITY, "positives": "studies with any finding (abnormal)"}
                   if t == "normal" else
                   {"max_false_urgent": URGENT_MAX_FALSE,
                    "negatives": f"studies without {'an' if t[0] in 'aeiou' else 'a'} {t} finding (normal studies "
                                 "included)"}) for t in tiers}
    study = {
        "score": "max",
        "definition": ("a tier's study score is the highest calibrated probability among the labels of that tier that "
                       "decide for the study's population (normal: every finding and summary label; urgent, critical: "
                       "the policy's findings of that tier), over the study's images"),
        "fitted_on": ("validation split, per population; the threshold sits halfway between two validation studies' "
                      "scores"),
        "evaluated_on": ("test split: Kermany's published test set (pediatric); the NIH and ieee test patients (adult); "
                         "never used to set a threshold"),
        "study_unit": ("one study per image (Kermany, NIH); ieee_lungs: one study per patient (several images, no "
                       "study identifier)"),
        "unknown_population": ("age not known (and no --population): labels validated for any population decide, and "
                               "each tier's lowest threshold over the populations applies (the most cautious)"),
        "policy": policy.name,
        "tiers": {t: {"labels": score_labels[t], "target": targets[t], "thresholds": thresholds[t],
                      "validation": figures[t]["validation"], "test": figures[t]["test"]} for t in tiers},
        "candidates": compare_scores(h, man0, policy, score_labels["normal"], n_boot=n_boot),
    }
    return {
        "populations": {name: {"age_years": p["age_years"], "description": p["description"]}
                        for name, p in POPULATIONS.items()},
        "label_validation": {"rule": VALIDATION_RULE, "data": VALIDATION_DATA, "labels": validation},
        "study_operating_points": study,
    }


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-7, 1 - 1e-7)
    out: np.ndarray = np.log(q) - np.log1p(-q)
    return out


def compare_scores(h: HeldOut, man: ModelManifest, policy: TriagePolicy, normal_labels: Sequence[str], *,
                   n_boot: int = N_BOOT) -> dict[str, Any]:
    """The measurements behind the choice of study score for ``normal``: candidate scores over each population's
    deciding labels, their study-level AUROC (abnormal vs normal) on validation and test, and on test the
    sensitivity/specificity at the threshold each gets on validation for the same target."""
    labels = h.labels
    va, te = h.split == "val", h.split == "test"
    s_va, y_va, pop_va = h.studies(va)
    s_te, y_te, pop_te = h.studies(te)
    ab_va, ab_te = _truth(y_va, labels, normal_labels), _truth(y_te, labels, normal_labels)
    names = {pop: [lab for lab in deciding_labels(man, policy, pop) if lab in normal_labels] for pop in POPULATIONS}
    summary = [lab for lab in normal_labels if normalize_label(lab) in policy.summary_labels]
    # A logistic regression over the deciding labels' logits, fitted on validation with both populations weighted
    # equally (one model for every image: the population is not known from a PNG).
    union = [lab for lab in normal_labels if any(lab in names[p] for p in POPULATIONS)]
    idx = [labels.index(lab) for lab in union]
    ok = np.isfinite(ab_va)
    w = np.array([1.0 / max(1, int(((pop_va == p) & ok).sum())) for p in pop_va])
    beta = fit_logistic(_logit(s_va[ok][:, idx]), ab_va[ok], weights=w[ok] * ok.sum())

    candidates: dict[str, Callable[[np.ndarray, str], np.ndarray]] = {
        "max (chosen)": lambda s, pop: _score(s, labels, names[pop]),
        "summary label only": lambda s, pop: _score(s, labels, [lab for lab in summary if lab in names[pop]]),
        "noisy-OR": lambda s, pop: 1 - np.prod(1 - s[:, [labels.index(lab) for lab in names[pop]]], axis=1),
        "logistic regression (fitted on validation)": lambda s, pop: sigmoid(_logit(s[:, idx]) @ beta[:-1] + beta[-1]),
    }
    out: dict[str, Any] = {}
    for name, fn in candidates.items():
        row: dict[str, Any] = {}
        for pop in POPULATIONS:
            mv, mt = (pop_va == pop) & np.isfinite(ab_va), (pop_te == pop) & np.isfinite(ab_te)
            sv, st = fn(s_va[mv], pop), fn(s_te[mt], pop)
            if not np.any(sv) and not np.any(st):
                continue
            thr = threshold_for_sensitivity(ab_va[mv], sv, NORMAL_TARGET_SENSITIVITY)
            lo, hi = bootstrap_ci(auroc, ab_te[mt], st, n_boot=n_boot)
            flagged = st >= thr
            yt = ab_te[mt]
            row[pop] = {"auroc_validation": _r(auroc(ab_va[mv], sv)), "auroc_test": _r(auroc(yt, st)),
                        "auroc_test_ci95": [_r(lo), _r(hi)],
                        "test_sensitivity": _r(float(np.mean(flagged[yt == 1]))),
                        "test_specificity": _r(float(np.mean(~flagged[yt == 0])))}
        out[name] = row
    return out


# --------------------------------------------------------------------------------------------- the model folder


def held_out_scores(data_root: Path, model: Classifier, records: Sequence[Record], *, batch: int = 32) -> HeldOut:
    """Score the validation and test images exactly as ``cxrtriage predict`` does (reader, preprocessing, ONNX)."""
    recs = [r for r in records if r.split in ("val", "test")]
    parts: list[np.ndarray] = []
    for i in range(0, len(recs), batch):
        x = np.stack([model.preprocess(read_image(data_root / r.path)).array for r in recs[i:i + batch]])
        parts.append(model.run(x).scores.astype(np.float64))
        if i % (batch * 10) == 0:
            log.info("scored %d of %d held-out images", i + len(x), len(recs))
    return HeldOut(probs=np.concatenate(parts), y=label_matrix(recs, model.labels).astype(np.float64),
                   split=np.array([r.split for r in recs]),
                   population=np.array([population_of_source(r.source) for r in recs]),
                   study=np.array(study_ids(recs)), labels=tuple(model.labels))


def records_from_splits(data_root: Path, splits_csv: Path) -> list[Record]:
    """The recipe's records with the splits a model folder's ``splits/splits.csv`` gives them (the patients it was
    trained on are never held out): every image listed there must exist in the data."""
    if not splits_csv.is_file():
        raise ConfigError(f"{splits_csv}: not found; the model folder must hold the patient splits it was trained with")
    _, records = classifier_records(data_root, seed=0)
    by_path = {r.path: r for r in records}
    out: list[Record] = []
    with open(splits_csv, newline="") as f:
        for row in csv.DictReader(f):
            r = by_path.get(row["path"])
            if r is None:
                raise ConfigError(f"{splits_csv}: image {row['path']} is not in {data_root}; pass --data with the data "
                                  "the model was trained on")
            out.append(dataclasses.replace(r, split=row["split"]))
    return out


def add_operating_points(data_root: Path, out: Path, *, records: Sequence[Record] | None = None,
                         n_boot: int = N_BOOT) -> Path:
    """Compute label validation and study-level operating points for the model in ``out`` and write them into its
    manifest (re-sealed, loaded back and checked). ``records``: the recipe's records with their splits (default: those
    of ``out/splits/splits.csv``)."""
    path = out / "manifest.json"
    if records is None:
        records = records_from_splits(data_root, out / "splits" / "splits.csv")
    model = load_model(path, task="classification", intra_op_threads=None)
    assert isinstance(model, Classifier)
    policy = load_policy()
    h = held_out_scores(data_root, model, records)
    fields = operating_points_from_scores(h, model.manifest, policy, n_boot=n_boot)
    data = {k: v for k, v in read_manifest_data(path).items() if k not in fields}
    written = write_sealed_manifest(path, _insert_after(data, "calibration", fields))
    load_manifest(written)
    return written


def _insert_after(data: Mapping[str, Any], key: str, new: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` with the ``new`` fields placed right after ``key`` (so the manifest reads in order)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        out[k] = v
        if k == key:
            out.update(new)
    out.update({k: v for k, v in new.items() if k not in out})
    return out
