"""`cxrtriage calibrate`: fit site thresholds and score calibration on a labelled local set, write site.toml."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from cxrtriage.evaluate.calibrate import CalibrationRun


def calibrate_command(
    results: Annotated[Path, typer.Option(
        "--results", help="results.csv (or .jsonl) of `cxrtriage predict` run WITHOUT --site.")],
    labels: Annotated[Path, typer.Option(
        "--labels", help="LABELS.csv of the same images (see `cxrtriage evaluate --help`).")],
    out: Annotated[Path, typer.Option("--out", help="Site calibration file to write (TOML), e.g. site.toml.")],
    target_sensitivity: Annotated[float, typer.Option(
        "--target-sensitivity", min=0.5, max=0.999, help="Sensitivity the site rule_out threshold must reach.")] = 0.95,
    method: Annotated[str, typer.Option(
        "--method", help="Score calibration: platt (2 parameters) or isotonic (needs more data).")] = "platt",
    model: Annotated[str | None, typer.Option(
        "--model", help="Check that the results come from this model (name or path).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")] = False,
) -> None:
    """Fit a site calibration: per label, a monotone map from the model's score to a site score (Platt or
    isotonic), the highest site threshold reaching --target-sensitivity (rule_out) and the Youden threshold
    (balanced). Apply it with `cxrtriage predict --site FILE`; it is refused for any other model version."""
    from cxrtriage.cli.render import exit_on_error
    from cxrtriage.evaluate.calibrate import calibrate_results

    with exit_on_error():
        run = calibrate_results(results, labels, out=out, target_sensitivity=target_sensitivity, method=method, model=model,
                                force=force)
        _render(run)


def _render(run: CalibrationRun) -> None:
    from rich.table import Table

    from cxrtriage.cli.render import console, print_warning

    site = run.site
    t = Table(title=f"Site calibration ({site.method}, target sensitivity {site.target_sensitivity:.2f}) -> {run.path}",
              title_justify="left")
    for col in ("label", "n", "pos", "rule_out thr", "sens [95% CI]", "spec", "balanced thr", "sens", "spec"):
        t.add_column(col, justify="left" if col == "label" else "right")
    for f in run.fits:
        c = f.calibration
        if c is None:
            t.add_row(f.label, "", "", "not calibrated", "", "", "", "", "")
            continue
        st = c.stats
        ci = st.get("rule_out_sensitivity_ci95", [math.nan, math.nan])
        t.add_row(c.label, str(c.n), str(c.n_positive), f"{c.rule_out:.4f}",
                  f"{st.get('rule_out_sensitivity', math.nan):.3f} [{ci[0]:.2f}, {ci[1]:.2f}]",
                  f"{st.get('rule_out_specificity', math.nan):.3f}", f"{c.balanced:.4f}",
                  f"{st.get('balanced_sensitivity', math.nan):.3f}", f"{st.get('balanced_specificity', math.nan):.3f}")
    console.print(t)
    console.print(f"{run.n_used} labelled images used; {len(run.unmatched_labels)} labels rows unmatched", highlight=False)
    for j, why in run.unmatched_labels[:5]:
        print_warning(f"labels row {j + 2}: {why}")
    for f in run.fits:
        for w in f.warnings:
            print_warning(w)


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate_command)
