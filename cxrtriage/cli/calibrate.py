"""`cxrtriage calibrate`: fit site score maps, per-label and study-level thresholds on a labelled local set, write
site.toml."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from cxrtriage.evaluate.calibrate import CalibrationRun


def calibrate_command(
    results: Annotated[Path, typer.Option(
        "--results", help="results.csv (or .jsonl) of `cxrtriage predict` run WITHOUT --site, or its --out folder.")],
    labels: Annotated[Path, typer.Option(
        "--labels", help="LABELS.csv of the same images (see `cxrtriage evaluate --help`).")],
    out: Annotated[Path, typer.Option("--out", help="Site calibration file to write (TOML), e.g. site.toml.")],
    target_sensitivity: Annotated[float, typer.Option(
        "--target-sensitivity", min=0.5, max=0.999,
        help="Study-level sensitivity the 'normal' threshold must keep: this share of the abnormal studies may not be "
             "called normal (also the per-label rule_out target).")] = 0.95,
    max_false_urgent: Annotated[float, typer.Option(
        "--max-false-urgent", min=0.0, max=0.5,
        help="Largest share of the studies WITHOUT an urgent finding (normal studies included) that may be flagged "
             "urgent (also for critical).")] = 0.05,
    policy: Annotated[Path | None, typer.Option(
        "--policy", help="Triage policy whose tiers are fitted (default: the packaged one); use the same with predict.")] = None,
    population: Annotated[str | None, typer.Option(
        "--population",
        help="Write the study thresholds for this population only (e.g. adult); default: for every population.")] = None,
    method: Annotated[str, typer.Option(
        "--method", help="Score calibration: platt (2 parameters) or isotonic (needs more data).")] = "platt",
    model: Annotated[str | None, typer.Option(
        "--model", help="Check that the results come from this model (name or path).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")] = False,
) -> None:
    """Fit a site calibration: per label, a monotone map from the model's score to a site score (Platt or
    isotonic), the highest site threshold reaching --target-sensitivity (rule_out) and the Youden threshold
    (balanced); per study (images grouped by StudyInstanceUID), the study-level thresholds that decide priorities:
    'normal' for --target-sensitivity, 'urgent' for --max-false-urgent, with the sensitivity and specificity they
    achieve on the labelled studies (95% CIs). Apply it with `cxrtriage predict --site FILE`; it is refused for any
    other model version."""
    from cxrtriage.cli.render import exit_on_error
    from cxrtriage.evaluate.calibrate import calibrate_results
    from cxrtriage.results import results_file

    with exit_on_error():
        run = calibrate_results(results_file(results), labels, out=out, target_sensitivity=target_sensitivity,
                                method=method, model=model, force=force, max_false_urgent=max_false_urgent,
                                policy=policy, population=population)
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
    study = run.study
    if study is None:
        print_warning("the model's manifest was not found (pass --model): no study-level thresholds were fitted; "
                      "this site file keeps the per-label rules")
    elif study.tiers is not None:
        t = Table(title=f"Study-level thresholds (site score; population: {study.population}; {study.n_studies} "
                        "studies) and what the whole decision achieves on them (95% CI)", title_justify="left")
        for col in ("tier", "threshold", "target", "studies", "pos / neg", "sensitivity", "specificity"):
            t.add_column(col, justify="left" if col in ("tier", "target", "studies") else "right")
        for r in study.achieved:
            tier = study.tiers[r.tier]
            target = ", ".join(f"{k} {v}" for k, v in tier.target.items())
            t.add_row(r.tier, f"{tier.threshold(study.population):.4f}", target, r.group, f"{r.n_pos} / {r.n_neg}",
                      _pct(r.sensitivity, r.sensitivity_ci), _pct(r.specificity, r.specificity_ci))
        console.print(t)
        console.print("normal: sensitivity = abnormal studies not called normal, specificity = normal studies called "
                      "normal; urgent: sensitivity = studies with an urgent finding flagged urgent, specificity = studies "
                      "without one not flagged urgent.", highlight=False)
    if study is not None:
        for w in study.warnings:
            print_warning(w)
    for j, why in run.unmatched_labels[:5]:
        print_warning(f"labels row {j + 2}: {why}")
    for f in run.fits:
        for w in f.warnings:
            print_warning(w)


def _pct(v: float, ci: tuple[float, float]) -> str:
    return "–" if not math.isfinite(v) else f"{v:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate_command)
