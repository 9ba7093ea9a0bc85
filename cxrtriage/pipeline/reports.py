"""The reports step at the end of a predict run (``--report``/``--dicom``/``--send``).

The report writers (`cxrtriage.report.batch`: fpdf, highdicom, pydicom, jinja2) are imported when a run writes
reports, not with the pipeline: the only function-level import in the pipeline (`tests/test_architecture.py`). Why:
importing them took ~0.4 s of the ~1.7 s that a plain ``cxrtriage predict`` of a few files takes on two cores, and most
runs write no reports.
"""

from __future__ import annotations

from collections.abc import Collection, MutableMapping
from pathlib import Path

from cxrtriage.pipeline.config import PredictConfig
from cxrtriage.pipeline.hooks.base import ReportOutcome
from cxrtriage.report.send import Destination, parse_destination, send_errors


def report_destination(config: PredictConfig) -> Destination | None:
    """The ``--send`` destination, parsed before any file is scored (``ConfigError`` on a typo)."""
    if config.send is None:
        return None
    return parse_destination(config.send, called_aet=config.called_aet, calling_aet=config.aet)


def run_reports(config: PredictConfig, out_dir: Path, destination: Destination | None) -> ReportOutcome:
    """``build_reports`` on the finished run; a failure becomes an error in the outcome, never an exception."""
    from cxrtriage.report.batch import build_reports  # see the module's docstring

    try:
        summary = build_reports(out_dir, deidentify=config.deidentify, pdf=config.pdf, dicom=config.dicom_on,
                                send=destination, modality=config.modality)
    except Exception as exc:  # the scores and the worklist are written; a report problem must not hide them
        # said once, by whoever shows the outcome's errors (the CLI, the node's log): not logged here too
        return ReportOutcome(None, (f"reports not written ({type(exc).__name__}: {exc})",))
    return ReportOutcome(summary, (*summary.errors, *send_errors(summary.sent)))


def run_batch_reports(config: PredictConfig, out_dir: Path, paths: Collection[str],
                      labels: MutableMapping[str, str]) -> ReportOutcome:
    """The reports of the studies that ``paths`` (new images, by their path in the results) belong to: their HTML/PDF
    anew, DICOM results for these images, and the index (``serve``, ``watch``; nothing is sent from here)."""
    from cxrtriage.report.batch import build_reports  # see the module's docstring

    try:
        summary = build_reports(out_dir, deidentify=config.deidentify, pdf=config.pdf, dicom=config.dicom_on,
                                send=None, modality=config.modality, only=set(paths), labels=labels)
    except Exception as exc:  # the scores and the worklist are written; a report problem must not hide them
        return ReportOutcome(None, (f"reports not written ({type(exc).__name__}: {exc})",))  # the node logs it
    return ReportOutcome(summary, tuple(summary.errors))
