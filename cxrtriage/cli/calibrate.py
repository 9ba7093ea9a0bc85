"""`cxrtriage calibrate`: fit site thresholds and score calibration on a labelled local set, write site.toml."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer


def _identity(rows: Sequence[Mapping[str, Any]], results: Path) -> tuple[str, str, str]:
    from cxrtriage.errors import ConfigError

    def one(key: str) -> str:
        vals = sorted({str(r.get(key, "") or "").strip() for r in rows if str(r.get("status", "")) == "scored"} - {""})
        if len(vals) != 1:
            raise ConfigError(
                f"{results}: scored rows must all name one model in '{key}', found {vals or 'none'}; calibrate on the "
                "results of one model version written by `cxrtriage predict`"
            )
        return vals[0]

    return one("model_name"), one("model_version"), one("model_sha256")


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

    with exit_on_error():
        _calibrate(results, labels, out, target_sensitivity, method, model, force)


def _calibrate(results: Path, labels: Path, out: Path, target_sensitivity: float, method: str, model: str | None,
               force: bool) -> None:
    from rich.table import Table

    from cxrtriage.cli.render import console, print_warning
    from cxrtriage.errors import ConfigError, InputError
    from cxrtriage.evaluate.calibrate import fit_site
    from cxrtriage.evaluate.data import match_labels, read_labels, read_results, score_labels
    from cxrtriage.triage.policy import scores_from_row
    from cxrtriage.triage.site import write_site

    if method not in ("platt", "isotonic"):
        raise ConfigError(f"--method {method!r}: choose 'platt' or 'isotonic'")
    if out.exists() and not force:
        raise ConfigError(f"{out}: already exists; choose another --out or pass --force to overwrite it")
    rows = read_results(results)
    used_site = sorted({str(r.get("site_file", "") or "").strip() for r in rows} - {""})
    if used_site:
        raise ConfigError(
            f"{results}: these results were scored with site file {used_site[0]}; calibrate on results of "
            "`cxrtriage predict` run WITHOUT --site, so that the map starts from the model's own scores"
        )
    name, version, sha = _identity(rows, results)
    if model is not None:
        from cxrtriage.model.registry import resolve_manifest

        man = resolve_manifest(model)
        if (man.name, man.version, man.sha256.lower()) != (name, version, sha.lower()):
            raise ConfigError(
                f"{results}: results come from model '{name}' {version} (sha256 {sha[:12]}…), not from --model "
                f"'{man.name}' {man.version} (sha256 {man.sha256[:12]}…)"
            )
    model_labels = score_labels(rows)
    table = read_labels(labels, model_labels)
    if not table.label_columns:
        raise InputError(f"{labels}: no column is named like a model label {model_labels}")
    match = match_labels(rows, table)
    pairs = [(i, j) for i, j in match.pairs if str(rows[i].get("status", "")) == "scored"]
    scores: dict[str, list[float]] = {lab: [] for lab in table.label_columns}
    truth: dict[str, list[float]] = {lab: [] for lab in table.label_columns}
    for i, j in pairs:
        s = scores_from_row(rows[i], table.label_columns)
        for lab in table.label_columns:
            scores[lab].append(s[lab])
            truth[lab].append(float(table.truth[lab][j]))
    site, fits = fit_site(
        scores, truth, model_name=name, model_version=version, model_sha256=sha, method=method,
        target_sensitivity=target_sensitivity,
        source={"results": str(results), "labels": str(labels), "labels_rows": len(table), "matched_scored": len(pairs),
                "unmatched_labels_rows": len(match.unmatched_labels)},
    )
    if not site.labels:
        raise ConfigError(
            "no label could be calibrated: " + " | ".join(w for f in fits for w in f.warnings) + "; nothing was written"
        )
    write_site(out, site, comment=f"model {name} {version}; {len(pairs)} labelled, scored images from {labels.name}")

    t = Table(title=f"Site calibration ({method}, target sensitivity {target_sensitivity:.2f}) -> {out}", title_justify="left")
    for col in ("label", "n", "pos", "rule_out thr", "sens [95% CI]", "spec", "balanced thr", "sens", "spec"):
        t.add_column(col, justify="left" if col == "label" else "right")
    for f in fits:
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
    console.print(f"{len(pairs)} labelled images used; {len(match.unmatched_labels)} labels rows unmatched", highlight=False)
    for j, why in match.unmatched_labels[:5]:
        print_warning(f"labels row {j + 2}: {why}")
    for f in fits:
        for w in f.warnings:
            print_warning(w)


def register(app: typer.Typer) -> None:
    app.command("calibrate")(calibrate_command)
