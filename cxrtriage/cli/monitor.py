"""`cxrtriage monitor`: drift of results (scores, priorities, quality, exclusions) against the model's validation
distribution or earlier results, overall, over time and by subgroup."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from cxrtriage.monitor.drift import Metric, SliceDrift
    from cxrtriage.monitor.report import MonitorReport

_STYLE = {"alert": "bold red", "warn": "yellow", "ok": "green", "too few": "dim", "no reference": "dim"}


def _cell(m: Metric | None) -> str:
    if m is None:
        return ""
    if m.psi is None:
        return f"[dim]{'n=' + str(m.n) if m.level == 'too few' else '-'}[/]"
    return f"[{_STYLE[m.level]}]{m.psi:.2f}[/]"


def _worst_score(s: SliceDrift) -> str:
    scored = [m for m in s.metrics if m.is_score and m.psi is not None]
    if not scored:
        return "[dim]too few[/]" if any(m.is_score for m in s.metrics) else ""
    top = max(scored, key=lambda m: m.psi or 0.0)
    return f"{_cell(top)} {top.name[6:]}"


def _render(report: MonitorReport) -> None:
    from rich.table import Table

    from cxrtriage.cli.render import console, print_warning

    console.print(f"[bold]{report.model}[/]: {report.slices[0].rows} rows ({report.slices[0].scored} scored) "
                  f"against {report.reference.name}", highlight=False)
    # Ten columns in 80: short headers (named in the title), numbers never folded, words folded at word breaks; the
    # long headers left every cell of a 80-column terminal as "scor…", "prio…".
    narrow = console.width < 130
    headers = (("slice", "rows", "scored", "score PSI", "prio", "qual", "status", "excl", "who", "level") if narrow
               else ("slice", "rows", "scored", "largest score PSI", "priority", "quality", "status", "excluded",
                     "composition", "level"))
    title = "Drift per slice (PSI against the reference; red: alert, yellow: warn; n=: too few to judge)"
    if narrow:
        title += ("; score PSI: the largest of the labels' scores; prio/qual/excl: priority, quality-check and "
                  "exclusion mix; who: the largest of the composition metrics (age band, sex, view, device...)")
    t = Table(title=title, title_justify="left", padding=(0, 1 if not narrow else 0))
    for n, col in enumerate(headers):
        words = n in (0, 3, 8)
        t.add_column(col, justify="left" if words or n == 9 else "right", no_wrap=not words,
                     overflow="fold" if words else "ellipsis", min_width=10 if n == 0 else None)
    # Slices with nothing to judge (a handful of excluded files from odd devices or dates) would bury the ones that
    # matter: the table names them in one line; JSON and HTML keep every slice.
    unjudged = [s for s in report.slices if s.level == "too few" and s.dimension != "all"]
    for s in report.slices:
        if s in unjudged:
            continue
        comp = [m for m in s.metrics if m.name in ("age_band", "sex", "view", "manufacturer", "device_model",
                                                    "institution", "input_kind") and m.psi is not None]
        worst_comp = max(comp, key=lambda m: m.psi or 0.0) if comp else None
        t.add_row(s.label, str(s.rows), str(s.scored), _worst_score(s), _cell(s.metric("priority")),
                  _cell(s.metric("quality")), _cell(s.metric("status")), _cell(s.metric("excluded")),
                  f"{_cell(worst_comp)} {worst_comp.name}" if worst_comp else "",
                  f"[{_STYLE[s.level]}]{s.level}[/]")
    console.print(t)
    if unjudged:
        names = [f"{s.label} ({s.rows})" for s in unjudged]
        console.print(f"[dim]{len(unjudged)} slice(s) with fewer than {report.min_n} values for every metric, not "
                      f"judged (rows): {', '.join(names[:20])}{' ...' if len(names) > 20 else ''}[/]", highlight=False)
    alerts = report.alerts
    if alerts:
        a = Table(title=f"{len(alerts)} alert(s) (PSI, q = p adjusted over the run's {report.judged} judged metrics)",
                  title_justify="left")
        a.add_column("slice")
        a.add_column("against")
        a.add_column("metrics at the alert level")
        by_slice: dict[str, list[str]] = {}
        against: dict[str, str] = {}
        for s, m in alerts:
            by_slice.setdefault(s.label, []).append(f"{m.name} {m.psi:.2f} (q {m.q_value:.0e}, n={m.n})")
            against[s.label] = s.against
        for label, items in by_slice.items():
            a.add_row(label, against[label], ", ".join(items))
        console.print(a)
    else:
        console.print("[green]no alert[/]: no metric of any slice reached PSI >= 0.25 with q <= 0.01")
    if report.warns:
        console.print(f"[yellow]{len(report.warns)} warning(s)[/] (PSI >= 0.10 with q <= 0.05): "
                      + ", ".join(f"{s.label} {m.name}" for s, m in report.warns[:12])
                      + (" ..." if len(report.warns) > 12 else ""), highlight=False)
    for w in report.warnings:
        print_warning(w)
    for label, path in (("JSON", report.json_path), ("HTML", report.html_path)):
        if path is not None:
            console.print(f"{label}: {path}", highlight=False)


def monitor_command(
    results: Annotated[list[Path], typer.Argument(
        metavar="RESULTS", help="Results folders of `cxrtriage predict` (or results.jsonl / results.csv files; a "
                                "results.jsonl still being written is read up to its last complete line).")],
    reference: Annotated[list[str] | None, typer.Option(
        "--reference", "-r", help="'model' (default): the model's validation distribution from its manifest; or an "
                                  "earlier results folder/file (repeat for several).")] = None,
    population: Annotated[str, typer.Option(
        "--population", help="With --reference model: the validation population, all, adult or pediatric.")] = "all",
    model: Annotated[str | None, typer.Option(
        "--model", help="Model name or path (default: the model named in the results).")] = None,
    period: Annotated[str, typer.Option("--period", help="Time slices of the study date: month, quarter or year.")] = "month",
    by: Annotated[str, typer.Option(
        "--by", help="Comma-separated subgroups to slice by (default all): manufacturer, device_model, institution, "
                     "view, age_band, sex, input_kind, population (the triage population; compared with the model's "
                     "validation split of that population).")] = "",
    min_n: Annotated[int, typer.Option(
        "--min-n", min=2, help="Fewest values a slice (and the reference) needs for a metric to be judged.")] = 30,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write every figure as JSON to this file.")] = None,
    html_out: Annotated[Path | None, typer.Option("--html", help="Write a self-contained HTML page with plots.")] = None,
    fail_on_alert: Annotated[bool, typer.Option(
        "--fail-on-alert", help="Exit 1 when any metric of any slice reaches the alert level (for scheduled checks).")] = False,
) -> None:
    """Drift of the results against a reference: each label's score distribution, the priority mix, quality-check
    failures, exclusion reasons and who the images are (age band, sex, view, device), overall, per period of the
    study date and per subgroup (manufacturer, device model, institution, view, age band, sex, DICOM vs PNG/JPEG,
    triage population),
    with a population stability index (PSI) and a KS statistic per slice; alert at PSI >= 0.25 with q <= 0.01, warn
    at PSI >= 0.10 with q <= 0.05 (q: the p-value adjusted over every judged metric of the run; docs/monitor.md)."""
    from cxrtriage.cli.render import exit_on_error
    from cxrtriage.errors import EXIT_FAILED_INPUTS
    from cxrtriage.monitor.drift import SUBGROUPS
    from cxrtriage.monitor.run import MonitorConfig, run_monitor

    with exit_on_error():
        subgroups = tuple(c.strip() for c in by.split(",") if c.strip()) or SUBGROUPS
        config = MonitorConfig(results=tuple(results), reference=tuple(reference or ("model",)), population=population,
                               model=model, period=period, subgroups=subgroups, min_n=min_n, json_out=json_out,
                               html_out=html_out)
        report = run_monitor(config)
        _render(report)
        if fail_on_alert and report.alerts:
            raise typer.Exit(EXIT_FAILED_INPUTS)


def register(app: typer.Typer) -> None:
    app.command("monitor")(monitor_command)
