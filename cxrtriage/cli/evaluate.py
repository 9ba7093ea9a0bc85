"""`cxrtriage evaluate`: model performance on a labelled set, from results.csv and LABELS.csv."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from cxrtriage.evaluate.run import EvaluateRun
    from cxrtriage.evaluate.runner import Evaluation


def _num(v: float | None, digits: int = 3) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _ci(v: float, ci: tuple[float, float], digits: int = 3, note: str = "") -> str:
    """The figure with its interval, or with ``note`` (why there is none, e.g. "too few positives (n=1)")."""
    if not math.isfinite(v):
        return "–"
    text = f"{v:.{digits}f}"
    if note:
        return f"{text}; {note}"
    return f"{text} ({ci[0]:.{digits}f}-{ci[1]:.{digits}f})" if math.isfinite(ci[0]) and math.isfinite(ci[1]) else text


def _print(ev: Evaluation, by: Sequence[str]) -> None:
    from rich.table import Table

    from cxrtriage.cli.render import console, print_warning

    console.print(
        f"[bold]{ev.model['name']} {ev.model['version']}[/] on {ev.labels_path}: {ev.n_matched} of {ev.n_label_rows} "
        f"labels rows matched ({', '.join(f'{v} by {k}' for k, v in ev.matched_by.items()) or 'none'}), "
        f"{ev.n_matched_scored} scored" + (f"; site file {ev.site_file}" if ev.site_file else ""),
        highlight=False,
    )
    t = Table(title="Discrimination and calibration (95% CI)", title_justify="left")
    for col in ("label", "n", "positive", "AUROC", "AUPRC", "ECE"):
        t.add_column(col, justify="left" if col == "label" else "right")
    for lab, m in ev.labels.items():
        # the reason for a missing interval once, under AUROC; AUPRC then shows its figure alone
        t.add_row(lab, str(m.n), str(m.n_positive), _ci(m.auroc, m.auroc_ci, note=m.ci_note), _ci(m.auprc, m.auprc_ci),
                  _num(m.ece))
    console.print(t)
    if any(m.ci_note for m in ev.labels.values()):
        from cxrtriage.evaluate.metrics import MIN_PER_CLASS_FOR_INTERVAL

        console.print(f"no bootstrap interval for a label with fewer than {MIN_PER_CLASS_FOR_INTERVAL} positives or "
                      "negatives: it would claim a precision the data do not have", highlight=False)
    t = Table(title="Operating points (95% CI; red: sensitivity > 5 points below what the model/site promised)",
              title_justify="left")
    for col in ("label", "point", "threshold", "sensitivity", "specificity", "PPV", "NPV"):
        t.add_column(col, justify="left" if col in ("label", "point") else "right")
    for lab, m in ev.labels.items():
        if not m.operating_points:
            t.add_row(lab, "no thresholds", "", "", "", "", "")
        for k, op in enumerate(m.operating_points):
            st = op.stats
            sens = _ci(st.sensitivity, op.sensitivity_ci, 2)
            if op.expected_sensitivity is not None and math.isfinite(st.sensitivity) \
                    and st.sensitivity < op.expected_sensitivity - 0.05:
                sens = f"[red]{sens}[/]"
            t.add_row(lab if k == 0 else "", f"{op.kind} ({op.source})", _num(op.threshold, 4), sens,
                      _ci(st.specificity, op.specificity_ci, 2), _num(st.ppv, 2), _num(st.npv, 2))
    console.print(t)
    if ev.not_evaluated:
        console.print("not evaluated: " + "; ".join(f"{k} ({v})" for k, v in ev.not_evaluated.items()), highlight=False)

    for col in by:
        st_ = Table(title=f"AUROC by {col}", title_justify="left")
        st_.add_column(col)
        for lab in ev.labels:
            st_.add_column(lab, justify="right")
        for v, labs in ev.subgroups.get(col, {}).items():
            st_.add_row(v, *[f"{_num(labs[lab].auroc)} (n={labs[lab].n}, +{labs[lab].n_positive})" for lab in ev.labels])
        console.print(st_)

    pc = ev.priority
    if pc is not None:
        from cxrtriage.evaluate.runner import TRUTH_CATEGORIES

        pt = Table(title=f"Priority vs truth ({pc.source})", title_justify="left")
        pt.add_column("priority")
        for c in TRUTH_CATEGORIES:
            pt.add_column(c, justify="right")
        for p, row in pc.counts.items():
            pt.add_row(p, *[(f"[red]{row[c]}[/]" if p == "normal" and row[c] and c.endswith("finding") else str(row[c]))
                            for c in TRUTH_CATEGORIES])
        console.print(pt)
        console.print(
            f"positives called normal: {pc.positives_called_normal} of {pc.positives_assessed}; "
            f"critical findings flagged critical: {pc.critical_truth_flagged_critical} of {pc.critical_truth}; "
            f"urgent findings flagged urgent or critical: {pc.urgent_truth_flagged_urgent_or_critical} of {pc.urgent_truth}",
            highlight=False,
        )
    if ev.study_tiers:
        tt = Table(title=f"Study-level triage ({ev.n_studies} studies; 95% Wilson CI)", title_justify="left")
        for col in ("tier", "studies", "pos / neg", "sensitivity", "specificity"):
            tt.add_column(col, justify="left" if col in ("tier", "studies") else "right")
        for r in ev.study_tiers:
            tt.add_row(r.tier, r.group, f"{r.n_pos} / {r.n_neg}", _ci(r.sensitivity, r.sensitivity_ci),
                       _ci(r.specificity, r.specificity_ci))
        console.print(tt)
        console.print("normal: sensitivity = abnormal studies not called normal, specificity = normal studies called "
                      "normal; urgent: sensitivity = studies with an urgent finding flagged urgent (or critical), "
                      "specificity = studies without one not flagged so.", highlight=False)
    worst = [x for ms in ev.misses.values() for x in ms if x.missed]
    if worst:
        # Every miss among the --top lowest-scored positives and highest-scored negatives of each label: the same
        # cases as --json/--html (which also list those of them that were not missed).
        mt = Table(title=f"Worst misses (--top {ev.top_k} per label and kind): positives below rule-out, negatives "
                         "at/above balanced", title_justify="left")
        for col in ("label", "case", "score", "file", *by):
            mt.add_column(col, justify="right" if col == "score" else "left")
        for miss in worst:
            kind = "missed positive" if miss.kind.endswith("positive") else "false alarm"
            mt.add_row(miss.label, kind, _num(miss.score, 4), Path(miss.path).name, *[miss.groups.get(c, "") for c in by])
        console.print(mt)
    for u in ev.unmatched_labels[:5]:
        print_warning(f"labels row {u['row']} ({u['image']}): {u['reason']}")
    for w in ev.warnings:
        print_warning(w)


def evaluate_command(
    results: Annotated[Path, typer.Option("--results", help="results.csv (or results.jsonl) written by "
                                          "`cxrtriage predict`, or its --out folder.")],
    labels: Annotated[Path, typer.Option(
        "--labels",
        help="LABELS.csv: an `image` column (file name, path or SOP Instance UID), 0/1 columns named like the model's "
             "labels, other columns = subgroups.",
    )],
    by: Annotated[str, typer.Option("--by", help="Comma-separated subgroup columns of LABELS.csv, e.g. sex,view.")] = "",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write every figure as JSON to this file.")] = None,
    html_out: Annotated[Path | None, typer.Option("--html", help="Write a self-contained HTML page with plots.")] = None,
    plots: Annotated[Path | None, typer.Option("--plots", help="Also write the ROC/reliability PNGs into this folder.")] = None,
    policy: Annotated[Path | None, typer.Option(
        "--policy", help="Recompute priorities with this triage policy TOML (default: the priorities in the results)."
    )] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="Model name or path (default: the model named in the results).")] = None,
    site: Annotated[Path | None, typer.Option(
        "--site", help="Site file the results were scored with, if it is not where the results say.")] = None,
    n_boot: Annotated[int, typer.Option(
        "--n-boot", min=0, help="Bootstrap resamples for AUROC/AUPRC intervals (0: none).")] = 1000,
    top: Annotated[int, typer.Option(
        "--top", min=1, help="Worst misses per label and kind: the N lowest-scored positives and N highest-scored "
                             "negatives (all in --json/--html; the table shows those missed at the thresholds).")] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap.")] = 0,
) -> None:
    """Evaluate scored results against labels: AUROC/AUPRC with 95% CIs, sensitivity/specificity/PPV/NPV at the
    model's (or site's) thresholds, calibration (ECE, reliability plots), subgroups, triage priority vs truth and
    the worst misses. Unmatched rows are reported, never dropped silently."""
    from cxrtriage.cli.render import console, exit_on_error
    from cxrtriage.evaluate.run import EvaluateConfig, run_evaluate
    from cxrtriage.results import results_file

    with exit_on_error():
        results = results_file(results)
    config = EvaluateConfig(
        results=results, labels=labels, by=tuple(c.strip() for c in by.split(",") if c.strip()), json_out=json_out,
        html_out=html_out, plots=plots, policy=policy, model=model, site=site, n_boot=n_boot, top=top, seed=seed,
    )
    with exit_on_error():
        with console.status("evaluating…"):
            run = run_evaluate(config)
        _render(run)


def _render(run: EvaluateRun) -> None:
    from cxrtriage.cli.render import console

    _print(run.evaluation, run.by)
    if run.json_path is not None:
        console.print(f"JSON: {run.json_path}", highlight=False)
    if run.plots_dir is not None:
        console.print(f"plots: {run.plots_dir}", highlight=False)
    if run.html_path is not None:
        console.print(f"HTML: {run.html_path}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_command)
