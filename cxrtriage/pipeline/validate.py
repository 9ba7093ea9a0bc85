"""`cxrtriage models validate`: score the user's own labelled images, evaluate, and write what was measured into a new
version of the model's manifest and card, so that an imported model gets an honest card from local data.

A label without operating points (a model imported from a plain ONNX or PyTorch file has none) gets them here, set on
the same labelled images (``measure_operating_points``): ``rule_out`` at the target sensitivity, ``balanced`` at
Youden's point. Thresholds a manifest already has are never moved (a site file does that: ``cxrtriage calibrate``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrtriage.errors import ConfigError, ModelError
from cxrtriage.evaluate.calibrate import MIN_POSITIVES
from cxrtriage.evaluate.metrics import between_cases, rule_out_threshold, stats_at, youden_threshold
from cxrtriage.evaluate.run import EvaluateConfig, run_evaluate
from cxrtriage.evaluate.runner import Evaluation, LabelMetrics, label_metrics_dict
from cxrtriage.files import atomic_write
from cxrtriage.model import Classifier, load_classifier
from cxrtriage.model.manifest import (
    LabelThresholds,
    OperatingPoint,
    load_manifest,
    read_manifest_data,
    write_sealed_manifest,
)
from cxrtriage.model.registry import resolve_manifest_path
from cxrtriage.model.verify import open_checked_session
from cxrtriage.pipeline.config import PredictConfig
from cxrtriage.pipeline.hooks.base import PredictSummary
from cxrtriage.pipeline.predict import run_predict
from cxrtriage.triage import check_policy, load_policy

CARD_SECTION = "## Local validation"
# As `cxrtriage calibrate`: at the rule-out point at most one positive in 20 is called below it.
DEFAULT_TARGET_SENSITIVITY = 0.95
IN_SAMPLE_NOTE = ("set and measured on the same images, so their sensitivity and specificity are optimistic (more so "
                  "with few positives); measure them on other labelled images (`cxrtriage models validate` again, or "
                  "`cxrtriage evaluate`) before relying on them")


@dataclass(frozen=True, slots=True)
class SetOperatingPoints:
    """The operating points ``measure_operating_points`` set for labels that had none, why the others got none, and
    what to keep in mind about them (few positives)."""

    target_sensitivity: float
    thresholds: dict[str, LabelThresholds] = field(default_factory=dict)
    not_set: dict[str, str] = field(default_factory=dict)  # label -> why
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The ``metrics.local_validation.operating_points_set`` entry of the manifest."""
        return {
            "target_sensitivity": self.target_sensitivity,
            "rule": (f"rule_out: the highest threshold with sensitivity >= {self.target_sensitivity:g}, never above "
                     "balanced; balanced: Youden's J (each moved halfway down to the next lower score)"),
            "labels": sorted(self.thresholds),
            "not_set": dict(self.not_set),
            "warnings": list(self.warnings),
            "note": IN_SAMPLE_NOTE,
        }


@dataclass(frozen=True, slots=True)
class ValidateResult:
    """What ``validate_model`` measured and wrote."""

    manifest: Path
    version_before: str
    version_after: str
    integrity_before: str
    integrity_after: str
    history: Path
    summary: PredictSummary
    evaluation: Evaluation
    operating_points: SetOperatingPoints | None = None  # None: every label had operating points already


def measure_operating_points(ev: Evaluation, labels: Sequence[str], *,
                             target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY) -> SetOperatingPoints:
    """Operating points for ``labels`` from the evaluated cases of ``ev`` (``Evaluation.curves``): ``rule_out`` the
    highest threshold whose sensitivity reaches ``target_sensitivity`` but never above ``balanced``, Youden's point
    (``metrics.rule_out_threshold``: rule-out is never the less sensitive of the two), each with the
    sensitivity and specificity it gives on those cases. A label without both positives and negatives gets none."""
    if not 0.0 < target_sensitivity < 1.0:
        raise ConfigError(f"--target-sensitivity must be between 0 and 1 (exclusive), got {target_sensitivity}")
    out = SetOperatingPoints(target_sensitivity)
    warnings: list[str] = []
    for lab in labels:
        if lab not in ev.labels or lab not in ev.curves:
            out.not_set[lab] = ev.not_evaluated.get(lab, "not evaluated")
            continue
        y, s = ev.curves[lab]
        n_pos = int(y.sum())
        n_neg = int(y.size) - n_pos
        if n_pos == 0 or n_neg == 0:
            out.not_set[lab] = (f"{n_pos} positive(s) and {n_neg} negative(s) among the labelled, scored images; "
                                "both are needed")
            continue
        # halfway down to the next lower score: results.csv rounds scores, and predict must call the same cases
        youden = youden_threshold(y, s)
        ro = between_cases(s, rule_out_threshold(y, s, target_sensitivity, balanced=youden))
        ba = between_cases(s, youden)
        st_ro, st_ba = stats_at(y, s, ro), stats_at(y, s, ba)
        out.thresholds[lab] = LabelThresholds(OperatingPoint(ro, st_ro.sensitivity, st_ro.specificity),
                                              OperatingPoint(ba, st_ba.sensitivity, st_ba.specificity))
        if n_pos < MIN_POSITIVES:
            warnings.append(f"{lab}: only {n_pos} positive(s); with fewer than {MIN_POSITIVES}, one missed case moves "
                            f"sensitivity by {100 / n_pos:.0f} points, so the {target_sensitivity:.0%} rule-out target "
                            "is not established")
    return dataclasses.replace(out, warnings=tuple(warnings))


def _scorer(manifest_path: Path, workers: int | None) -> Classifier | None:
    """The classifier ``validate`` scores with: None (``predict``'s own) when the model can be triaged as it is, else
    one whose manifest holds no operating points, so that ``predict`` scores without triage (``scores_only``).

    Why: a model with some labels lacking operating points is refused by triage (its priorities would rest on part of
    its findings), yet validating it is how those labels get them. The manifest on disk is not changed by this."""
    manifest = load_manifest(manifest_path)
    try:
        check_policy(load_policy(None), manifest)
        return None
    except ModelError:
        clf = load_classifier(manifest_path, spinning=workers == 0)
        return Classifier(dataclasses.replace(manifest, thresholds={}, study=None), clf.session)


def thresholds_data(points: Mapping[str, LabelThresholds]) -> dict[str, Any]:
    """``points`` as the manifest's ``thresholds`` entries."""
    def op(p: OperatingPoint) -> dict[str, Any]:
        return {"threshold": p.threshold, "sensitivity": p.sensitivity, "specificity": p.specificity}

    return {lab: {"rule_out": op(t.rule_out), "balanced": op(t.balanced)} for lab, t in points.items()}


def _label_summary(m: LabelMetrics) -> dict[str, Any]:
    d = label_metrics_dict(m)
    d.pop("reliability", None)  # the curve stays in the evaluation JSON; the manifest keeps the figures
    return d


def validation_metrics(ev: Evaluation, *, labels_file: Path, n_images: int, date: str) -> dict[str, Any]:
    """The ``metrics.local_validation`` entry: per label AUROC/AUPRC with 95% CIs, ECE, the operating points in
    force with sensitivity/specificity (95% CIs), and the same per subgroup."""
    return {
        "date": date, "labels_file": labels_file.name, "images": n_images, "matched_scored": ev.n_matched_scored,
        "bootstrap_resamples": ev.n_boot,
        "labels": {lab: _label_summary(m) for lab, m in ev.labels.items()},
        "not_evaluated": dict(ev.not_evaluated),
        "subgroups": {col: {v: {lab: _label_summary(m) for lab, m in d.items()} for v, d in vals.items()}
                      for col, vals in ev.subgroups.items()},
    }


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def card_section(metrics: dict[str, Any], version: str) -> str:
    lines = [f"{CARD_SECTION} ({metrics['date']}, version {version})", "",
             f"`cxrtriage models validate` on {metrics['matched_scored']} scored image(s) labelled in "
             f"`{metrics['labels_file']}` ({metrics['bootstrap_resamples']} bootstrap resamples for the 95% CIs).", "",
             "| label | n | positives | AUROC (95% CI) | AUPRC | ECE | operating points: threshold, sens, spec |",
             "|---|---|---|---|---|---|---|"]
    for lab, d in metrics["labels"].items():
        ci = d.get("auroc_ci95") or [None, None]
        ops = "; ".join(f"{op.get('kind')} {_fmt(op.get('threshold'))}, {_fmt(op.get('sensitivity'))}, "
                        f"{_fmt(op.get('specificity'))}" for op in d.get("operating_points", []))
        lines.append(f"| {lab} | {d.get('n')} | {d.get('n_positive')} | {_fmt(d.get('auroc'))} ({_fmt(ci[0])}-"
                     f"{_fmt(ci[1])}) | {_fmt(d.get('auprc'))} | {_fmt(d.get('ece'))} | {ops} |")
    for lab, why in metrics["not_evaluated"].items():
        lines.append(f"| {lab} | - | - | not evaluated: {why} | | | |")
    for col, vals in metrics["subgroups"].items():
        lines += ["", f"AUROC by {col}: " + "; ".join(
            f"{v}: " + ", ".join(f"{lab} {_fmt(d.get('auroc'))}" for lab, d in labs.items()) for v, labs in vals.items())]
    lines += _set_points_lines(metrics.get("operating_points_set"))
    lines += ["", "These figures hold for this data set only; subgroups and populations not in it stay unknown.", ""]
    return "\n".join(lines)


def _set_points_lines(info: Any) -> list[str]:
    """The card's words for the operating points this validation set (``SetOperatingPoints.to_json``)."""
    if not isinstance(info, dict):
        return []
    lines = [""]
    if info.get("labels"):
        lines.append(f"Operating points set by this validation for {', '.join(info['labels'])} (they had none): "
                     f"{info.get('rule')}. They are now the manifest's thresholds, which triage decides on; "
                     f"{IN_SAMPLE_NOTE}.")
    for lab, why in (info.get("not_set") or {}).items():
        lines.append(f"- {lab}: no operating point set ({why}); predict triages only when every label not ignored by "
                     "the policy has one")
    lines += [f"- {w}" for w in info.get("warnings") or []]
    return lines


def validate_model(model: str | Path, labels: Path, images: Sequence[Path], out: Path, *, by: tuple[str, ...] = (),
                   n_boot: int = 1000, workers: int | None = None,
                   target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY) -> ValidateResult:
    """Run ``predict`` of ``images`` with ``model`` into ``out``, evaluate against ``labels``, and write the measured
    metrics into a new, sealed version of the model's manifest (the previous one kept under ``history/``) and card.

    Labels without operating points get them from these images (``measure_operating_points``), written into the new
    manifest's ``thresholds``; the evaluation (``out/evaluation.json``, the card) reports them. A model with none
    at all is scored without triage (``predict`` decides no priority for it, so none is measured)."""
    manifest_path = resolve_manifest_path(model)
    before = load_manifest(manifest_path)
    if not images:
        raise ConfigError("give the labelled images (files or folders) to validate on")
    if not 0.0 < target_sensitivity < 1.0:  # before the images are scored
        raise ConfigError(f"--target-sensitivity must be between 0 and 1 (exclusive), got {target_sensitivity}")
    summary = run_predict(PredictConfig(inputs=tuple(images), out_dir=out, model=str(manifest_path), workers=workers),
                          model=_scorer(manifest_path, workers))
    config = EvaluateConfig(results=summary.results_csv, labels=labels, by=by, model=manifest_path, n_boot=n_boot,
                            json_out=out / "evaluation.json")
    date = dt.date.today().isoformat()
    version = f"{before.version.split('-validated.')[0]}-validated.{date.replace('-', '')}"
    missing = [lab for lab in before.labels if lab not in before.thresholds]
    points: SetOperatingPoints | None = None
    evaluated_with = None
    if missing:
        # A first pass without bootstrap gives the matched (truth, score) pairs to set the points on; the second
        # evaluates with them in force, so every figure written (per label and subgroup) is at the manifest's points.
        first = run_evaluate(dataclasses.replace(config, n_boot=0, json_out=None)).evaluation
        points = measure_operating_points(first, missing, target_sensitivity=target_sensitivity)
        evaluated_with = dataclasses.replace(before, version=version,
                                             thresholds={**before.thresholds, **points.thresholds})
    ev_run = run_evaluate(config, manifest=evaluated_with)
    ev = ev_run.evaluation
    if not ev.labels:
        raise ConfigError(f"{labels}: no label could be evaluated ({ev.not_evaluated or 'no matched images'}); the "
                          "manifest is left unchanged")
    metrics = validation_metrics(ev, labels_file=labels, n_images=summary.total, date=date)
    if points is not None:
        metrics["operating_points_set"] = points.to_json()
    data = read_manifest_data(manifest_path)
    history = manifest_path.parent / "history" / f"manifest-{before.version}-{before.short_integrity}.json"
    history.parent.mkdir(exist_ok=True)
    shutil.copyfile(manifest_path, history)
    data["version"] = version
    if points is not None and points.thresholds:
        data["thresholds"] = {**data.get("thresholds", {}), **thresholds_data(points.thresholds)}
    data["metrics"] = {**{k: v for k, v in data.get("metrics", {}).items() if k != "validation"},
                       "local_validation": json.loads(json.dumps(metrics))}
    write_sealed_manifest(manifest_path, data)
    after = load_manifest(manifest_path)
    open_checked_session(after)
    if after.model_card is not None and after.model_card.is_file():
        card = after.model_card.read_text(encoding="utf-8")
        card = card.split(f"\n{CARD_SECTION}")[0].rstrip("\n") + "\n\n"
        card = card.replace("UNKNOWN: not validated locally", "Measured locally, see 'Local validation' below (before "
                                                              "that: not validated locally")
        atomic_write(after.model_card, card + card_section(metrics, after.version))
    return ValidateResult(manifest_path, before.version, after.version, before.integrity, after.integrity, history,
                          summary, ev, points)
