"""Evaluation plots as PNG bytes (matplotlib, Agg backend): ROC curves with operating points, reliability diagrams."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from cxrtriage.evaluate.metrics import roc_curve
from cxrtriage.evaluate.runner import LabelMetrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_MARKERS = {"rule_out": "v", "balanced": "o"}


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` x ``height`` inches at 100 dpi, constrained layout (shared with the monitor's plots)."""
    # The object-oriented API with an explicit Agg canvas: no global pyplot state, no display needed.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _roc_axes(ax: Any, y: NDArray[np.float64], s: NDArray[np.float64], m: LabelMetrics, *, label: str | None = None) -> None:
    if 0 < m.n_positive < m.n:
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, lw=1.6, label=label or f"AUROC {m.auroc:.3f}")
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")


def label_figure(label: str, y: NDArray[np.float64], s: NDArray[np.float64], m: LabelMetrics) -> bytes:
    """ROC curve with the operating points in effect, and the reliability diagram with case counts."""
    fig = new_figure(9.0, 3.6)
    ax_roc, ax_rel = fig.subplots(1, 2)
    _roc_axes(ax_roc, y, s, m)
    for op in m.operating_points:
        st = op.stats
        if math.isfinite(st.sensitivity) and math.isfinite(st.specificity):
            ax_roc.plot(1 - st.specificity, st.sensitivity, _MARKERS.get(op.kind, "s"), ms=7,
                        label=f"{op.kind} ({op.source}) t={op.threshold:.3g}")
    if ax_roc.get_legend_handles_labels()[0]:
        ax_roc.legend(loc="lower right", fontsize=8)
    ax_roc.set_title(f"{label}: ROC (n={m.n}, {m.n_positive} positive)", fontsize=10)

    rel = m.reliability
    centres = (rel.bin_edges[:-1] + rel.bin_edges[1:]) / 2
    width = np.diff(rel.bin_edges)
    ax_rel.plot([0, 1], [0, 1], ls=":", c="grey", lw=0.8, label="perfect calibration")
    ok = rel.counts > 0
    ax_rel.plot(rel.mean_predicted[ok], rel.observed[ok], "o-", lw=1.4, label=f"observed (ECE {m.ece:.3f})")
    ax_rel.set_xlim(0, 1)
    ax_rel.set_ylim(0, 1.01)
    ax_rel.set_xlabel("mean predicted score")
    ax_rel.set_ylabel("observed frequency")
    ax_rel.set_title(f"{label}: reliability", fontsize=10)
    ax_cnt = ax_rel.twinx()
    ax_cnt.bar(centres, rel.counts, width=width * 0.9, alpha=0.15, color="k")
    ax_cnt.set_ylabel("images per bin", fontsize=8)
    ax_cnt.tick_params(labelsize=7)
    ax_rel.legend(loc="upper left", fontsize=8)
    return png_bytes(fig)


def overview_figure(curves: Mapping[str, tuple[NDArray[np.float64], NDArray[np.float64]]],
                    metrics: Mapping[str, LabelMetrics]) -> bytes:
    """All labels' ROC curves on one plot."""
    fig = new_figure(6.0, 5.0)
    ax = fig.subplots()
    for lab, (y, s) in curves.items():
        m = metrics[lab]
        if 0 < m.n_positive < m.n:
            _roc_axes(ax, y, s, m, label=f"{lab} {m.auroc:.3f}")
    ax.set_title("ROC by label (AUROC)", fontsize=10)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=7)
    return png_bytes(fig)
