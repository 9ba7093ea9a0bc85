"""Monitoring plots as PNG bytes (matplotlib, Agg, the house style of ``cxrtriage.evaluate.plots``): score CDFs
against the reference, PSI per period, and the priority mix per period."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from cxrtriage.evaluate.plots import new_figure, png_bytes
from cxrtriage.monitor.drift import PSI_ALERT, PSI_WARN, SliceDrift
from cxrtriage.monitor.stats import ScoreDistribution
from cxrtriage.results import PRIORITY_LEVELS

_PRIORITY_COLOURS = {"critical": "#b42318", "urgent": "#f79009", "routine": "#6172f3", "not_assessed": "#98a2b3",
                     "normal": "#12b76a", "none": "#d0d5dd"}


def score_cdfs(labels: Sequence[str], current: Mapping[str, ScoreDistribution], reference: Mapping[str, ScoreDistribution],
               psi: Mapping[str, float | None], *, reference_name: str) -> bytes:
    """One small plot per label: the cumulative distribution of the current scores against the reference's."""
    cols = min(4, max(1, len(labels)))
    rows = math.ceil(len(labels) / cols)
    fig = new_figure(3.0 * cols, 2.5 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    x = np.linspace(0.0, 1.0, 401)
    for ax, label in zip(axes, labels, strict=False):
        ref, cur = reference.get(label), current.get(label)
        if ref is not None and ref.n:
            ax.plot(x, ref.cdf(x), c="grey", lw=1.4, ls="--", label="reference")
        if cur is not None and cur.n:
            ax.plot(x, cur.cdf(x), lw=1.6, label=f"current (n={cur.n})")
        value = psi.get(label)
        ax.set_title(f"{label}" + (f"  PSI {value:.2f}" if value is not None else ""), fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.tick_params(labelsize=7)
    for ax in axes[len(labels):]:
        ax.axis("off")
    if len(labels):
        axes[0].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Calibrated score, cumulative share of images: current vs {reference_name}", fontsize=9)
    return png_bytes(fig)


def psi_over_time(periods: Sequence[SliceDrift], labels: Sequence[str]) -> bytes:
    """PSI of each label's scores (and of the priority mix) per period, with the warn and alert levels."""
    fig = new_figure(9.0, 3.8)
    ax = fig.subplots()
    names = [s.value for s in periods]
    xs = np.arange(len(names))
    for label in labels:
        ys = [m.psi if (m := s.metric(f"score:{label}")) is not None and m.psi is not None else np.nan for s in periods]
        ax.plot(xs, ys, marker="o", ms=3, lw=1.2, label=label)
    ys = [m.psi if (m := s.metric("priority")) is not None and m.psi is not None else np.nan for s in periods]
    if not all(np.isnan(ys)):
        ax.plot(xs, ys, marker="s", ms=4, lw=2.2, c="k", label="priority mix")
    ax.axhline(PSI_WARN, c="#f79009", ls=":", lw=1)
    ax.axhline(PSI_ALERT, c="#b42318", ls="--", lw=1)
    ax.set_xticks(xs, names, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("PSI vs reference")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_title("Population stability index per period (dotted: warn 0.10, dashed: alert 0.25; points need n >= min)",
                 fontsize=9)
    ax.legend(fontsize=6, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return png_bytes(fig)


def priority_mix(periods: Sequence[SliceDrift], reference: Mapping[str, float] | None) -> bytes:
    """Stacked shares of the priorities per period, the reference's first when it has priorities."""
    cols: list[tuple[str, Mapping[str, float]]] = []
    if reference:
        total = sum(reference.values())
        cols.append(("reference", {k: v / total for k, v in reference.items()}))
    for s in periods:
        m = s.metric("priority")
        if m is not None and m.current:
            cols.append((s.value, m.current))
    fig = new_figure(max(4.0, 0.45 * len(cols) + 2.5), 3.4)
    ax = fig.subplots()
    order = [p.value for p in PRIORITY_LEVELS] + ["none"]
    bottom = np.zeros(len(cols))
    for prio in order:
        ys = np.array([c.get(prio, 0.0) for _, c in cols])
        if ys.any():
            ax.bar(np.arange(len(cols)), ys, bottom=bottom, color=_PRIORITY_COLOURS.get(prio, "#888"), label=prio)
            bottom += ys
    ax.set_xticks(np.arange(len(cols)), [name for name, _ in cols], rotation=45, ha="right", fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of scored images")
    ax.set_title("Priority mix per period", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return png_bytes(fig)
