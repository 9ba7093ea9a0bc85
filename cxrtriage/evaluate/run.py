"""`evaluate` as one call: read results and labels, find their model and site file, evaluate, write JSON/HTML/plots."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrtriage.errors import ConfigError, InputError, OutputError
from cxrtriage.evaluate.data import match_labels, read_labels
from cxrtriage.evaluate.runner import Evaluation, evaluate_results, evaluation_to_dict
from cxrtriage.files import atomic_write, safe_name
from cxrtriage.model.manifest import ModelManifest
from cxrtriage.model.registry import manifest_for_results
from cxrtriage.results import read_results, recorded_manifest
from cxrtriage.triage.policy import TriagePolicy, covered_tiers, load_policy
from cxrtriage.triage.site import site_for_results

OVERVIEW_PLOT = "roc_all.png"


@dataclass(frozen=True, slots=True)
class EvaluateConfig:
    """What to evaluate and where to write it (one field per ``cxrtriage evaluate`` option)."""

    results: Path
    labels: Path
    by: tuple[str, ...] = ()
    json_out: Path | None = None
    html_out: Path | None = None
    plots: Path | None = None
    policy: Path | None = None
    model: str | Path | None = None
    site: Path | None = None
    n_boot: int = 1000
    top: int = 5
    seed: int = 0


@dataclass(frozen=True, slots=True)
class EvaluateRun:
    """The evaluation and the files written for it (None / empty where not asked for)."""

    evaluation: Evaluation
    by: tuple[str, ...]
    json_path: Path | None = None
    html_path: Path | None = None
    plots_dir: Path | None = None
    plot_files: tuple[Path, ...] = ()


def plot_name(label: str) -> str:
    """The file name of one label's ROC + reliability figure."""
    return f"roc_reliability_{safe_name(label)}.png"


def write_plots(folder: Path, images: Mapping[str, Any]) -> tuple[Path, ...]:
    """Write the overview and per-label PNGs of ``evaluation_images`` into ``folder`` (created even when empty)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{folder}: cannot create the plots folder ({exc.strerror}); check its parent and permissions") from exc
    written = []
    if images["overview"]:
        written.append(atomic_write(folder / OVERVIEW_PLOT, images["overview"]))
    for label, png in images["labels"].items():
        written.append(atomic_write(folder / plot_name(label), png))
    return tuple(written)


def check_inputs(config: EvaluateConfig) -> None:
    """``InputError`` when the labels file is missing, ``ConfigError`` when the --policy file is: before the model,
    the site file and the policy are loaded (and warn about themselves), so that a typo gets its one line and nothing
    else. (A --site file that is not there is refused by ``site_for_results``, which says more.)"""
    if not config.labels.is_file():
        what = "is a folder, not a CSV file" if config.labels.is_dir() else "labels file not found"
        raise InputError(f"{config.labels}: {what}; pass --labels with the LABELS.csv of the scored images")
    if config.policy is not None and not config.policy.is_file():
        raise ConfigError(f"{config.policy}: policy file not found; pass --policy with an existing TOML file")


def uncovered_levels(policy: TriagePolicy, manifest: ModelManifest) -> list[str]:
    """One warning per priority level of ``policy`` that no label of the model reaches: no image can get it, so the
    labels' positives of that level (a column such as ``pneumothorax``) all count as missed in its study-level row."""
    covered = set(covered_tiers(policy, manifest))
    return [f"no {lvl.priority.value} finding of policy '{policy.name}' ({', '.join(lvl.findings)}) is a label of "
            f"model '{manifest.name}': no image can be {lvl.priority.value} under this policy, so every "
            f"{lvl.priority.value} finding in the labels counts as missed"
            for lvl in policy.levels if lvl.priority.value not in covered]


def run_evaluate(config: EvaluateConfig, *, manifest: ModelManifest | None = None) -> EvaluateRun:
    """Evaluate ``config.results`` against ``config.labels`` and write the requested JSON, HTML and plots.

    The model is ``config.model`` or the one the results name, checked by sha256; the site file is the one
    the results were scored with (``config.site`` when it has moved). ``manifest``, when given, is used instead of
    the one found, e.g. the manifest ``models validate`` is about to write, with the operating points it measured:
    it must describe the same ONNX file (sha256) as the one found.

    Raises:
        InputError: a file cannot be read, or the labels have no column named like a model label.
        ConfigError: the results, model, site file, policy or ``by`` columns do not fit together.
        ModelError: the model cannot be found.
        OutputError: an output cannot be written.
    """
    results = read_results(config.results)
    check_inputs(config)  # before the model, site and policy are looked up (and say anything about themselves)
    found = manifest_for_results(results.distinct("model_name"), results.distinct("model_sha256"), config.model,
                                 where=config.results, integrities=results.distinct("model_integrity"),
                                 recorded=recorded_manifest(config.results))
    if manifest is not None and manifest.sha256.lower() != found.sha256.lower():
        raise ConfigError(f"{config.results}: the manifest given for model '{manifest.name}' describes sha256 "
                          f"{manifest.sha256[:12]}…, not the model that produced the results ({found.sha256[:12]}…)")
    manifest = manifest or found
    site = site_for_results(results.distinct("site_file"), config.site, results=config.results, manifest=manifest)
    policy = load_policy(config.policy, labels=manifest.labels)
    table = read_labels(config.labels, manifest.labels)
    if not table.label_columns:
        raise InputError(
            f"{config.labels}: no column is named like a label of model '{manifest.name}' {list(manifest.labels)}; "
            f"columns are {list(table.rows[0]) if table.rows else []}"
        )
    match = match_labels(results.records, table)
    ev = evaluate_results(results.records, table, match, manifest=manifest, policy=policy, site=site,
                          recompute_priority=config.policy is not None, by=config.by, n_boot=config.n_boot,
                          seed=config.seed, top_k=config.top, results_path=str(config.results))
    ev = dataclasses.replace(ev, warnings=[*uncovered_levels(policy, manifest), *ev.warnings])
    if config.json_out is not None:
        atomic_write(config.json_out, json.dumps(evaluation_to_dict(ev), indent=2))
    plot_files: tuple[Path, ...] = ()
    if config.html_out is not None or config.plots is not None:
        from cxrtriage.evaluate.html import evaluation_images, render_html  # matplotlib/jinja2: only when asked for

        images = evaluation_images(ev)
        if config.plots is not None:
            plot_files = write_plots(config.plots, images)
        if config.html_out is not None:
            atomic_write(config.html_out, render_html(ev, images=images, by=config.by))
    return EvaluateRun(ev, config.by, json_path=config.json_out, html_path=config.html_out, plots_dir=config.plots,
                       plot_files=plot_files)
