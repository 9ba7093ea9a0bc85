"""A self-contained HTML monitoring page (Jinja2 template, plots embedded as base64 PNG, as ``evaluate --html``)."""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from typing import Any

from cxrtriage import __version__
from cxrtriage.monitor.drift import MIN_N, PSI_ALERT, PSI_WARN, Q_ALERT, Q_WARN
from cxrtriage.monitor.plots import priority_mix, psi_over_time, score_cdfs
from cxrtriage.monitor.profile import profile_of
from cxrtriage.monitor.report import MonitorReport
from cxrtriage.results import ImageRecord


def _num(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{float(v):.{digits}f}"


def _p(v: float | None) -> str:
    if v is None:
        return "–"
    return "< 1e-6" if v < 1e-6 else (f"{v:.1e}" if v < 0.001 else f"{v:.3f}")


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


def monitor_images(report: MonitorReport, records: Sequence[ImageRecord]) -> dict[str, str]:
    """The page's plots as base64 PNG: score CDFs (all results), PSI per period and the priority mix per period."""
    current = profile_of(records, report.labels, name="all")
    overall = report.slices[0]
    psi = {lab: (m.psi if (m := overall.metric(f"score:{lab}")) is not None else None) for lab in report.labels}
    images = {"cdfs": _b64(score_cdfs(report.labels, current.scores, report.reference.scores, psi,
                                      reference_name=report.reference.kind + " reference"))}
    periods = [s for s in report.slices if s.dimension == report.period]
    if periods:
        images["psi_time"] = _b64(psi_over_time(periods, report.labels))
        images["priority_time"] = _b64(priority_mix(periods, report.reference.categories("priority")))
    return images


def render_html(report: MonitorReport, records: Sequence[ImageRecord]) -> str:
    """The whole page as text."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(loader=PackageLoader("cxrtriage.monitor", "templates"), autoescape=select_autoescape(["html"]))
    category_metrics = list(dict.fromkeys(m.name for s in report.slices for m in s.metrics if not m.is_score))
    return env.get_template("monitor.html").render(
        r=report, d=report.to_dict(), images=monitor_images(report, records), num=_num, p=_p,
        category_metrics=category_metrics,
        judged=sum(m.q_value is not None for sl in report.slices for m in sl.metrics),
        levels={"psi_warn": PSI_WARN, "psi_alert": PSI_ALERT, "q_warn": Q_WARN, "q_alert": Q_ALERT,
                "min_n": report.min_n, "default_min_n": MIN_N},
        version=__version__,
    )
