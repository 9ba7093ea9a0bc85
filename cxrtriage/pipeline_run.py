"""Run provenance (``DIR/run.json``) and the reports step at the end of a predict run."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrtriage import __version__
from cxrtriage.errors import OutputError
from cxrtriage.model import Classifier

if TYPE_CHECKING:
    from cxrtriage.pipeline import PredictConfig, PredictHook
    from cxrtriage.report.batch import ReportSummary
    from cxrtriage.report.send import Destination

log = logging.getLogger(__name__)

RUN_JSON = "run.json"


def utc_now() -> str:
    """ISO 8601 time in UTC, to the second (``2026-11-21T14:03:07+00:00``)."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


def write_json(path: Path, data: Mapping[str, Any]) -> Path:
    """Write ``data`` as indented JSON, atomically (temp file + rename)."""
    tmp = path.with_name(path.name + ".partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write ({exc.strerror}); check the --out folder and its permissions") from exc
    return path


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> None:
    """Add ``extra`` to ``base``; dict values present in both are merged one level deep."""
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(base.get(k), dict):
            base[k].update(v)
        else:
            base[k] = v


def run_record(
    config: PredictConfig,
    model: Classifier,
    *,
    started_at: str,
    finished_at: str,
    counts: Mapping[str, int],
    hooks: Iterable[PredictHook],
) -> dict[str, Any]:
    """The content of ``run.json``: tool, model, thresholds, inputs, counts, device; each hook adds its part
    (policy and site from triage, the segmenter from the lungs, the quality limits)."""
    m = model.manifest
    record: dict[str, Any] = {
        "tool_version": __version__,
        "model": {"name": m.name, "version": m.version, "sha256": m.sha256, "manifest": str(m.path)},
        "operating_point": "balanced",
        "thresholds": {lab: {"rule_out": t.rule_out.threshold, "balanced": t.balanced.threshold}
                       for lab, t in m.thresholds.items()},
        "policy": None,
        "priority_levels": [],
        "site_file": "",
        "started_at": started_at,
        "finished_at": finished_at,
        "cwd": os.getcwd(),
        "inputs": [str(p) for p in config.inputs],
        "counts": dict(counts),
        "device": model.session.device.value,
        "execution_providers": model.session.providers,
        "options": {"batch_size": config.batch_size, "workers": config.workers, "threads": config.intra_op_threads,
                    "rules": str(config.rules) if config.rules else "default", "lungs": config.lungs_on,
                    "report": config.reports_on},
        "hooks": [h.name for h in hooks],
    }
    for h in hooks:
        _merge(record, h.provenance())
    return record


@dataclass(frozen=True, slots=True)
class ReportOutcome:
    """The reports step: what ``build_reports`` wrote, or why it could not run."""

    summary: ReportSummary | None
    errors: tuple[str, ...] = field(default_factory=tuple)

    @property
    def index(self) -> Path | None:
        return self.summary.index if self.summary is not None else None


def report_destination(config: PredictConfig) -> Destination | None:
    """The ``--send`` destination, parsed before any file is scored (``ConfigError`` on a typo)."""
    if config.send is None:
        return None
    from cxrtriage.report.send import parse_destination

    return parse_destination(config.send, called_aet=config.called_aet, calling_aet=config.aet)


def run_reports(config: PredictConfig, out_dir: Path, destination: Destination | None) -> ReportOutcome:
    """``build_reports`` on the finished run; a failure becomes an error in the outcome, never an exception."""
    from cxrtriage.report.batch import build_reports

    try:
        summary = build_reports(out_dir, deidentify=config.deidentify, pdf=config.pdf, dicom=config.dicom_on,
                                send=destination, modality=config.modality)
    except Exception as exc:  # the scores and the worklist are written; a report problem must not hide them
        log.warning("reports failed: %s", exc)
        return ReportOutcome(None, (f"reports not written ({type(exc).__name__}: {exc})",))
    errors = list(summary.errors)
    errors += [f"{r.path.name}: not sent ({r.status})" for r in summary.sent if not r.ok]
    return ReportOutcome(summary, tuple(errors))
