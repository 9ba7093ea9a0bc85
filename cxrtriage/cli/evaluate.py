"""`cxrtriage evaluate`: model performance on a labelled set, from results.csv and LABELS.csv."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from cxrtriage.evaluate.runner import Evaluation
    from cxrtriage.model.manifest import ModelManifest
    from cxrtriage.triage.site import SiteCalibration


def _num(v: float | None, digits: int = 3) -> str:
    return "–" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _ci(v: float, ci: tuple[float, float], digits: int = 3) -> str:
    if not math.isfinite(v):
        return "–"
    text = f"{v:.{digits}f}"
    return f"{text} ({ci[0]:.{digits}f}-{ci[1]:.{digits}f})" if math.isfinite(ci[0]) and math.isfinite(ci[1]) else text


def _unique(rows: Sequence[Mapping[str, Any]], key: str) -> list[str]:
    return sorted({str(r.get(key, "") or "").strip() for r in rows} - {""})


def resolve_results_model(rows: Sequence[Mapping[str, Any]], model: str | None, results: Path) -> ModelManifest:
    """The manifest of the model that produced ``rows`` (``--model``, else the results' model_name), checked by sha256."""
    from cxrtriage.errors import ConfigError
    from cxrtriage.model.registry import resolve_manifest

    names, shas = _unique(rows, "model_name"), _unique(rows, "model_sha256")
    if len(names) > 1 or len(shas) > 1:
        raise ConfigError(f"{results}: results come from several models ({names or shas}); evaluate one model at a time")
    if model is None and not names:
        raise ConfigError(f"{results}: results name no model (empty model_name); pass --model NAME_OR_PATH")
    manifest = resolve_manifest(model if model is not None else names[0])
    if shas and shas[0].lower() != manifest.sha256.lower():
        raise ConfigError(
            f"{results}: results were produced by model sha256 {shas[0][:12]}…, but {manifest.path} describes sha256 "
            f"{manifest.sha256[:12]}… (model '{manifest.name}' {manifest.version}); pass --model pointing at the model "
            "that produced these results"
        )
    return manifest


def resolve_results_site(rows: Sequence[Mapping[str, Any]], site: Path | None, results: Path,
                         manifest: ModelManifest) -> SiteCalibration | None:
    """The site file the results were made with (``--site`` overrides the path they record), or None."""
    from cxrtriage.errors import ConfigError
    from cxrtriage.triage.site import load_site

    recorded = _unique(rows, "site_file")
    if len(recorded) > 1:
        raise ConfigError(f"{results}: results were made with several site files {recorded}; evaluate them separately")
    if site is None and not recorded:
        return None
    if site is None:
        cand = Path(recorded[0])
        for p in (cand, results.parent / cand, results.parent / cand.name):
            if p.is_file():
                site = p
                break
        else:
            raise ConfigError(
                f"{results}: results were scored with site file '{recorded[0]}', which is not found; its thresholds are "
                "needed to read the site-calibrated scores: pass --site PATH"
            )
    elif not recorded:
        raise ConfigError(
            f"{results}: results were scored without a site file, so their scores are on the model's scale; --site "
            "cannot be applied afterwards: re-run predict with --site, or drop --site here"
        )
    return load_site(site, manifest=manifest)


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
        t.add_row(lab, str(m.n), str(m.n_positive), _ci(m.auroc, m.auroc_ci), _ci(m.auprc, m.auprc_ci), _num(m.ece))
    console.print(t)
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
    worst = [x for ms in ev.misses.values() for x in ms if x.missed]
    if worst:
        mt = Table(title="Worst misses: positives below rule-out, negatives at/above balanced (all in --json/--html)",
                   title_justify="left")
        for col in ("label", "case", "score", "file", *by):
            mt.add_column(col, justify="right" if col == "score" else "left")
        shown: dict[tuple[str, str], int] = {}
        for miss in worst:
            key = (miss.label, miss.kind)
            shown[key] = shown.get(key, 0) + 1
            if shown[key] <= 2:
                kind = "missed positive" if miss.kind.endswith("positive") else "false alarm"
                mt.add_row(miss.label, kind, _num(miss.score, 4), Path(miss.path).name, *[miss.groups.get(c, "") for c in by])
        console.print(mt)
    for u in ev.unmatched_labels[:5]:
        print_warning(f"labels row {u['row']} ({u['image']}): {u['reason']}")
    for w in ev.warnings:
        print_warning(w)


def evaluate_command(
    results: Annotated[Path, typer.Option("--results", help="results.csv (or results.jsonl) written by `cxrtriage predict`.")],
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
    top: Annotated[int, typer.Option("--top", min=1, help="Worst misses listed per label and kind.")] = 5,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap.")] = 0,
) -> None:
    """Evaluate scored results against labels: AUROC/AUPRC with 95% CIs, sensitivity/specificity/PPV/NPV at the
    model's (or site's) thresholds, calibration (ECE, reliability plots), subgroups, triage priority vs truth and
    the worst misses. Unmatched rows are reported, never dropped silently."""
    from cxrtriage.cli.render import exit_on_error

    with exit_on_error():
        _evaluate(results, labels, by, json_out, html_out, plots, policy, model, site, n_boot, top, seed)


def _evaluate(results: Path, labels: Path, by: str, json_out: Path | None, html_out: Path | None, plots: Path | None,
              policy: Path | None, model: str | None, site: Path | None, n_boot: int, top: int, seed: int) -> None:
    from cxrtriage.cli.render import console
    from cxrtriage.errors import InputError, OutputError
    from cxrtriage.evaluate.data import match_labels, read_labels, read_results
    from cxrtriage.evaluate.runner import evaluate_results, evaluation_to_dict
    from cxrtriage.triage.policy import load_policy

    rows = read_results(results)
    manifest = resolve_results_model(rows, model, results)
    site_cal = resolve_results_site(rows, site, results, manifest)
    pol = load_policy(policy, labels=manifest.labels)
    table = read_labels(labels, manifest.labels)
    if not table.label_columns:
        raise InputError(
            f"{labels}: no column is named like a label of model '{manifest.name}' {list(manifest.labels)}; "
            f"columns are {list(table.rows[0]) if table.rows else []}"
        )
    match = match_labels(rows, table)
    cols = tuple(c.strip() for c in by.split(",") if c.strip())
    with console.status("evaluating…"):
        ev = evaluate_results(rows, table, match, manifest=manifest, policy=pol, site=site_cal,
                              recompute_priority=policy is not None, by=cols, n_boot=n_boot, seed=seed, top_k=top,
                              results_path=str(results))
    _print(ev, cols)
    try:
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            json_out.write_text(json.dumps(evaluation_to_dict(ev), indent=2), encoding="utf-8")
            console.print(f"JSON: {json_out}", highlight=False)
        if html_out is not None or plots is not None:
            from cxrtriage.evaluate.html import evaluation_images, render_html

            images = evaluation_images(ev)
            if plots is not None:
                plots.mkdir(parents=True, exist_ok=True)
                if images["overview"]:
                    (plots / "roc_all.png").write_bytes(images["overview"])
                for lab, png in images["labels"].items():
                    safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in lab)
                    (plots / f"roc_reliability_{safe}.png").write_bytes(png)
                console.print(f"plots: {plots}", highlight=False)
            if html_out is not None:
                html_out.parent.mkdir(parents=True, exist_ok=True)
                html_out.write_text(render_html(ev, images=images, by=cols), encoding="utf-8")
                console.print(f"HTML: {html_out}", highlight=False)
    except OSError as exc:
        raise OutputError(f"{exc.filename}: cannot write ({exc.strerror}); check the folder and its permissions") from exc


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_command)
