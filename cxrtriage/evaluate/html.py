"""A self-contained HTML evaluation page (Jinja2 template, plots embedded as base64 PNG)."""

from __future__ import annotations

import base64
import datetime as dt
import math
from typing import Any

from cxrtriage import __version__
from cxrtriage.evaluate.plots import label_figure, overview_figure
from cxrtriage.evaluate.runner import TRUTH_CATEGORIES, Evaluation, evaluation_to_dict


def _num(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{float(v):.{digits}f}"


def evaluation_images(ev: Evaluation) -> dict[str, Any]:
    """PNG bytes of the overview ROC plot and of each label's ROC + reliability figure."""
    labels = {lab: label_figure(lab, *ev.curves[lab], m) for lab, m in ev.labels.items() if lab in ev.curves and m.n}
    overview = overview_figure(ev.curves, ev.labels) if labels else None
    return {"overview": overview, "labels": labels}


def render_html(ev: Evaluation, *, images: dict[str, Any] | None = None, by: tuple[str, ...] = (), max_rows: int = 25) -> str:
    """The whole HTML page as text; ``images`` defaults to ``evaluation_images(ev)``."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    imgs = evaluation_images(ev) if images is None else images
    b64 = {
        "overview": base64.b64encode(imgs["overview"]).decode("ascii") if imgs.get("overview") else None,
        "labels": {k: base64.b64encode(v).decode("ascii") for k, v in imgs.get("labels", {}).items()},
    }
    env = Environment(loader=PackageLoader("cxrtriage.evaluate", "templates"), autoescape=select_autoescape(["html"]))
    op_kinds = list(dict.fromkeys(op.kind for m in ev.labels.values() for op in m.operating_points))
    return env.get_template("evaluate.html").render(
        ev=evaluation_to_dict(ev),
        images=b64,
        num=_num,
        by=list(by) or list(ev.subgroups),
        op_kinds=op_kinds,
        truth_categories=TRUTH_CATEGORIES,
        max_rows=max_rows,
        created=dt.datetime.now().astimezone().replace(microsecond=0).isoformat(),
        version=__version__,
    )
