"""``monitor`` as one call: read the results and the reference, measure the drift of every slice, write JSON and HTML."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cxrtriage.errors import ConfigError, InputError
from cxrtriage.files import atomic_write
from cxrtriage.model.manifest import ModelManifest
from cxrtriage.model.registry import manifest_for_results
from cxrtriage.monitor.drift import MIN_N, PERIODS, SUBGROUPS, Reference, drift_of
from cxrtriage.monitor.html import render_html  # jinja2 and matplotlib are imported only when a page is rendered
from cxrtriage.monitor.profile import profile_of
from cxrtriage.monitor.reference import POPULATIONS, model_populations, model_reference
from cxrtriage.monitor.report import MonitorReport
from cxrtriage.results import RESULTS_CSV, RESULTS_JSONL, ImageRecord, ResultsTable, read_results, recorded_manifest

MODEL_REFERENCE = "model"


@dataclass(frozen=True, slots=True)
class MonitorConfig:
    """One ``cxrtriage monitor`` run; every field is one command-line option.

    ``results``: results folders or files (``results.jsonl``, ``results.csv``, a growing ``results.jsonl(.partial)``).
    ``reference``: ``"model"`` (the model manifest's validation split, ``population``) or results folders/files.
    """

    results: tuple[Path, ...]
    reference: tuple[str, ...] = (MODEL_REFERENCE,)
    population: str = "all"
    model: str | None = None
    period: str = "month"
    subgroups: tuple[str, ...] = SUBGROUPS
    min_n: int = MIN_N
    json_out: Path | None = None
    html_out: Path | None = None

    def __post_init__(self) -> None:
        if not self.results:
            raise ConfigError("give at least one results folder or file to monitor")
        if not self.reference:
            raise ConfigError("--reference: give 'model' or at least one results folder or file")
        if MODEL_REFERENCE in self.reference and len(self.reference) > 1:
            raise ConfigError("--reference: 'model' stands alone; give either 'model' or results folders/files")
        if self.population not in POPULATIONS:
            raise ConfigError(f"--population must be one of {', '.join(POPULATIONS)}, got '{self.population}'")
        if self.period not in PERIODS:
            raise ConfigError(f"--period must be one of {', '.join(PERIODS)}, got '{self.period}'")
        unknown = [g for g in self.subgroups if g not in SUBGROUPS]
        if unknown:
            raise ConfigError(f"--by: unknown subgroup(s) {', '.join(unknown)}; choose from {', '.join(SUBGROUPS)}")
        if self.min_n < 2:
            raise ConfigError(f"--min-n must be at least 2, got {self.min_n}")


def _table(path: Path) -> ResultsTable:
    """A results file, or the results file of a folder (a growing ``results.jsonl.partial`` of a run in progress too)."""
    if path.is_dir():
        for name in (RESULTS_JSONL, RESULTS_CSV, RESULTS_JSONL + ".partial"):
            if (path / name).is_file():
                return read_results(path / name, growing=True)
        raise InputError(f"{path}: no {RESULTS_JSONL} or {RESULTS_CSV} here; give the --out folder of "
                         "`cxrtriage predict` or a results file")
    return read_results(path, growing=True)


def read_records(paths: Sequence[Path]) -> tuple[list[ImageRecord], list[str], tuple[str, ...], int]:
    """Records of every results folder/file; a row already read from an earlier input (same SOP Instance UID, else
    same path) is dropped, so that overlapping folders count each image once. Rows of one input are all kept: one
    run lists each file once, and two files holding the same instance (a copy in another transfer syntax) were
    each scored.

    Returns (records, notes, model labels, duplicates dropped).
    """
    records: list[ImageRecord] = []
    notes: list[str] = []
    labels: dict[str, None] = {}
    seen: set[str] = set()
    duplicates = 0
    for p in paths:
        table = _table(Path(p))
        notes += table.notes
        labels.update(dict.fromkeys(table.labels))
        keys = [r.sop_instance_uid or r.path for r in table.records]
        for key, r in zip(keys, table.records, strict=True):
            if key in seen:
                duplicates += 1
                continue
            records.append(r)
        seen.update(keys)
    if not records:
        raise InputError(f"no results rows in {', '.join(map(str, paths))}")
    return records, notes, tuple(labels), duplicates


def _manifest(records: Sequence[ImageRecord], explicit: str | None, where: Path) -> ModelManifest:
    names = sorted({r.model_name for r in records if r.model_name})
    shas = sorted({r.model_sha256 for r in records if r.model_sha256})
    if len(shas) > 1:
        raise ConfigError(f"{where}: the results were scored by {len(shas)} different model files "
                          f"({', '.join(s[:12] for s in shas)}); monitor each model's results on their own")
    seals = sorted({r.model_integrity for r in records if r.model_integrity})
    return manifest_for_results(names, shas, explicit, where=where, integrities=seals, recorded=recorded_manifest(where))


def run_monitor(config: MonitorConfig) -> MonitorReport:
    """Compare ``config.results`` with the reference, slice by slice, and write the JSON/HTML asked for.

    Raises:
        InputError: a results file cannot be read or holds no rows.
        ConfigError: an option is invalid, or the results mix several models.
        ModelError: the model (or its manifest's reference) cannot be found or does not match the results.
        OutputError: an output cannot be written.
    """
    records, notes, labels, duplicates = read_records(config.results)
    warnings = list(notes)
    if duplicates:
        warnings.append(f"{duplicates} row(s) seen in more than one input were counted once")
    manifest = _manifest(records, config.model, config.results[0])
    labels = tuple(lab for lab in manifest.labels if lab in labels) or manifest.labels
    if config.reference == (MODEL_REFERENCE,):
        by_population = {p: model_reference(manifest, p) for p in POPULATIONS
                         if p != "all" and p in model_populations(manifest)}
        reference = Reference(model_reference(manifest, config.population), populations=by_population)
        ref_inputs: tuple[str, ...] = (str(manifest.path),)
        if config.population == "all":
            warnings.append("the 'all' validation population mixes adult and pediatric sources (see the reference): a "
                            "site that serves one of them compares with --population adult or pediatric")
    else:
        ref_paths = tuple(Path(p) for p in config.reference)
        ref_records, ref_notes, _, _ = read_records(ref_paths)
        warnings += [f"reference: {n}" for n in ref_notes]
        whole = profile_of(ref_records, labels, name=f"results {', '.join(map(str, ref_paths))}", kind="results")
        reference = Reference(whole, tuple(ref_records))
        ref_inputs = tuple(map(str, ref_paths))
        if whole.model_sha256 and whole.model_sha256 != manifest.sha256:
            warnings.append(f"the reference was scored by another model file ({whole.model_sha256[:12]}) than the "
                            f"results ({manifest.sha256[:12]}): score drift then compares two models")
    drift = drift_of(records, labels, reference, period=config.period, subgroups=config.subgroups, min_n=config.min_n)
    if not any(s.dimension == config.period for s in drift):
        warnings.append("no study dates in the results (DICOM StudyDate): no drift over time")
    report = MonitorReport(
        inputs=tuple(map(str, config.results)), reference=reference.whole, reference_inputs=ref_inputs, labels=labels,
        model=f"{manifest.name} {manifest.version} (sha256 {manifest.short_sha})", slices=drift, period=config.period,
        min_n=config.min_n, duplicates=duplicates, warnings=tuple(warnings),
        created=dt.datetime.now().astimezone().replace(microsecond=0).isoformat(),
        json_path=config.json_out, html_path=config.html_out,
    )
    if config.json_out is not None:
        atomic_write(config.json_out, json.dumps(report.to_dict(), indent=2) + "\n")
    if config.html_out is not None:
        atomic_write(config.html_out, render_html(report, records))
    return report
