"""`cxrtriage models validate`: score the user's own labelled images, evaluate, and write what was measured into a new
version of the model's manifest and card, so that an imported model gets an honest card from local data."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrtriage.errors import ConfigError
from cxrtriage.evaluate.run import EvaluateConfig, run_evaluate
from cxrtriage.evaluate.runner import Evaluation, LabelMetrics, label_metrics_dict
from cxrtriage.files import atomic_write
from cxrtriage.model.manifest import load_manifest, read_manifest_data, write_sealed_manifest
from cxrtriage.model.registry import resolve_manifest_path
from cxrtriage.model.verify import open_checked_session
from cxrtriage.pipeline.config import PredictConfig
from cxrtriage.pipeline.hooks.base import PredictSummary
from cxrtriage.pipeline.predict import run_predict

CARD_SECTION = "## Local validation"


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
    lines += ["", "These figures hold for this data set only; subgroups and populations not in it stay unknown.", ""]
    return "\n".join(lines)


def validate_model(model: str | Path, labels: Path, images: Sequence[Path], out: Path, *, by: tuple[str, ...] = (),
                   n_boot: int = 1000, workers: int | None = None) -> ValidateResult:
    """Run ``predict`` of ``images`` with ``model`` into ``out``, evaluate against ``labels``, and write the measured
    metrics into a new, sealed version of the model's manifest (the previous one kept under ``history/``) and card."""
    manifest_path = resolve_manifest_path(model)
    before = load_manifest(manifest_path)
    if not images:
        raise ConfigError("give the labelled images (files or folders) to validate on")
    summary = run_predict(PredictConfig(inputs=tuple(images), out_dir=out, model=str(manifest_path), workers=workers))
    ev_run = run_evaluate(EvaluateConfig(results=summary.results_csv, labels=labels, by=by, model=manifest_path,
                                         n_boot=n_boot, json_out=out / "evaluation.json"))
    ev = ev_run.evaluation
    if not ev.labels:
        raise ConfigError(f"{labels}: no label could be evaluated ({ev.not_evaluated or 'no matched images'}); the "
                          "manifest is left unchanged")
    date = dt.date.today().isoformat()
    metrics = validation_metrics(ev, labels_file=labels, n_images=summary.total, date=date)
    data = read_manifest_data(manifest_path)
    history = manifest_path.parent / "history" / f"manifest-{before.version}-{before.short_integrity}.json"
    history.parent.mkdir(exist_ok=True)
    shutil.copyfile(manifest_path, history)
    base = before.version.split("-validated.")[0]
    data["version"] = f"{base}-validated.{date.replace('-', '')}"
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
                          summary, ev)
