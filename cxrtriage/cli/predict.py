"""`cxrtriage predict`: score chest radiographs with a classifier and write results.csv / results.jsonl."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cxrtriage.cli.ray_predict import RAY_HELP
from cxrtriage.errors import EXIT_FAILED_INPUTS

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from cxrtriage.pipeline.engine import ProgressUpdate
    from cxrtriage.pipeline.hooks.base import PredictSummary
    from cxrtriage.pipeline.segment import SegmentSummary

FAILED_INPUTS_EXIT = EXIT_FAILED_INPUTS

InputsArg = Annotated[
    list[Path], typer.Argument(metavar="INPUT", help="DICOM/PNG/JPEG/TIFF/NIfTI files or folders (walked recursively).")
]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder (created if needed; one run at a time).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", min=1, max=1024, help="Images per inference batch.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto|cpu|cuda|tensorrt|openvino|directml|coreml|rocm.")]
StrictOpt = Annotated[bool, typer.Option("--strict-device", help="Stop (exit 4) when --device cannot run here, instead "
                                                                  "of falling back to the CPU with a warning.")]
WorkersOpt = Annotated[
    int | None,
    typer.Option("--workers", "-w", min=0, max=64,
                 help="Decode processes (0 = one file at a time, in a child forked from the main process: no "
                      "parallel decoding, no __main__ guard needed). Default: half the CPU cores this process may use "
                      "(its affinity: taskset, a container's cpuset), 2 on 2-3 cores, at "
                      "most 4. With the model on a GPU the cores only decode: raise it on a many-core GPU machine "
                      "(4 left 12 of 16 cores idle on one: docs/speed.md). Decode processes run at the lowest "
                      "CPU priority (nice 19), so inference goes first. "
                      "In both modes a decoder that crashes (segfault) on a hostile file fails only that file."),
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option("--threads", min=1, help="onnxruntime intra-op threads. Default: one per core. With a small model on few cores, "
                                          "cores minus --workers keeps inference off the decoders' cores."),
]
FailOpt = Annotated[bool, typer.Option("--fail-on-error", help="Exit 1 when any input failed (default: exit 0).")]
RulesOpt = Annotated[Path | None, typer.Option("--rules", help="Selection rules TOML. Default: the built-in frontal-CXR rules.")]
PolicyOpt = Annotated[
    Path | None,
    typer.Option("--policy", metavar="FILE.toml", help="Triage policy (which findings are critical/urgent; docs/triage.md). "
                                                       "Default: the packaged policy."),
]
SiteOpt = Annotated[
    Path | None,
    typer.Option("--site", metavar="SITE.toml",
                 help="Site calibration from `cxrtriage calibrate`, for this exact model version. With it, the score_<label> "
                      "columns hold the SITE-calibrated scores, the site thresholds decide the priority, and the model's own "
                      "calibrated scores are kept in model_score_<label> columns (only with --site)."),
]
PopulationOpt = Annotated[
    str | None,
    typer.Option("--population", metavar="NAME",
                 help="Population of the patients whose age the files do not tell (PNG/JPEG, DICOM without PatientAge "
                      "or birth date), e.g. pediatric or adult (the model's populations: `cxrtriage models info`). Its "
                      "validated labels and study-level thresholds decide. An age in DICOM always wins. Default: the "
                      "model's population estimate from the image when it is confident (its manifest's "
                      "population_estimate; the row's population_source says image-estimate), else unknown, the most "
                      "cautious ones. 'unknown' turns the image estimate off."),
]
LungsOpt = Annotated[
    bool | None,
    typer.Option("--lungs/--no-lungs",
                 help="Segment the lungs: OUT/masks/<stem>.png, mask_path, lung_area_px, lung_area_mm2 columns and the "
                      "lung quality checks. Default: on with --report, else off (faster)."),
]
SegmenterOpt = Annotated[
    str | None,
    typer.Option("--segmenter", metavar="NAME|PATH", help="Lung segmenter for --lungs. Default: lung-segmenter."),
]
ReportOpt = Annotated[
    bool, typer.Option("--report", help="After scoring, write HTML (+PDF) study reports and OUT/report/index.html "
                                        "(turns --lungs on unless --no-lungs).")
]
PdfOpt = Annotated[bool, typer.Option("--pdf/--no-pdf", help="With --report: a PDF beside each HTML report.")]
DicomOpt = Annotated[
    bool, typer.Option("--dicom", help="Write DICOM results into each source study under OUT/dicom/ (SR, secondary "
                                       "capture, lung SEG, encapsulated PDF); implies --report.")
]
DEIDENTIFY_HELP = (
    "The HTML/PDF reports and their index show stable pseudonyms instead of patient name, ID and "
    "UIDs, no birth or study date, accession number or study description, and each input as 'image N' instead of "
    "its path or file name. Needs CXRTRIAGE_PSEUDONYM_KEY, a secret of your site (at least 16 characters): refused "
    "without it. NOT covered: results.csv/.jsonl, worklist.csv, run.json and the mask and heat-map file names keep "
    "paths and file names; DICOM results (--dicom) keep the source identity, as they go back into the patient's own "
    "study; pictures are shown as they are (text burned into the pixels stays)."
)
DeidOpt = Annotated[bool, typer.Option("--deidentify", help="With --report: " + DEIDENTIFY_HELP)]
SendOpt = Annotated[
    str | None, typer.Option("--send", metavar="HOST:PORT", help="C-STORE the DICOM results to this PACS; implies --dicom.")
]
AetOpt = Annotated[str, typer.Option("--aet", help="Our (calling) AE title for --send.")]
CalledAetOpt = Annotated[str, typer.Option("--called-aet", help="The PACS (called) AE title for --send.")]
# The sizes are the heat-map hook's (OVERLAY_SIDE, MAP_SIDE in cxrtriage.pipeline.hooks.heatmaps; not imported:
# --help stays fast; tests/cli/test_cli_help.py checks that they agree)
HeatmapsOpt = Annotated[
    bool, typer.Option("--heatmaps", help="For every finding at or above its balanced threshold, an overlay JPEG "
                                          "OUT/heatmaps/<stem>__<label>__<method>.jpg (the radiograph and the map "
                                          "over it side by side, each at most 640 px on the long side; column "
                                          "heatmaps) and beside it the raw map, <stem>__<label>__<method>.npy "
                                          "(float16, 0..1, the image's shape scaled to at most 224 px on the long "
                                          "side: resize it to the image to overlay it). A finding without positive "
                                          "evidence gets no file. Computed from the same forward pass (no extra "
                                          "model run). Maps are shown ungated; column outside_lungs gives each map's "
                                          "share of evidence outside the lung fields and column shortcut names the "
                                          "findings at or above 50% (a possible shortcut). Needs a lung mask: "
                                          "--lungs, else the images with a map are segmented for it.")
]
HeatmapGateOpt = Annotated[
    bool, typer.Option("--heatmap-gate", help="With --heatmaps: multiply each map by the dilated lung mask (the old "
                                              "default). Hides the evidence outside the lungs, where shortcuts live; the "
                                              "share outside the lungs is still measured on the ungated map.")
]
HeatmapMethodOpt = Annotated[
    str, typer.Option("--heatmap-method", help="gradcam (default), gradcampp, layercam, xgradcam, hirescam or eigencam; "
                                               "for scorecam/occlusion use `cxrtriage explain`.")
]
RayOpt = Annotated[str | None, typer.Option("--ray", metavar="ADDRESS", help=RAY_HELP)]
ResumeOpt = Annotated[
    bool,
    typer.Option("--resume",
                 help="Continue the run that OUT holds: each finished batch is journaled in OUT/journal.jsonl (path, size, "
                      "mtime, row), and re-running the same command after a crash or kill scores only the inputs not in it "
                      "(or changed since); results.csv then equals an uninterrupted run's. Without --resume, a run into a "
                      "folder that holds an earlier run replaces its results as a whole (and says so)."),
]
FullResolutionOpt = Annotated[
    bool, typer.Option("--full-resolution", help="Work on every image in full. By default JPEG 2000 and 8-bit JPEG "
                                                 "images are decoded at the lowest resolution that still gives the "
                                                 "models (and heat-map overlays) all the pixels they use, and other "
                                                 "images are block-averaged down to it after their decode.")
]
ModalityOpt = Annotated[
    str, typer.Option("--modality", help="Modality of the encapsulated PDF (DOC, or OT for viewers that need it).")
]


def predict_cmd(
    inputs: InputsArg,
    out: OutOpt,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Model name in the models folder, or path to an .onnx file or its manifest. "
                                           "Default: cxr-classifier."),
    ] = None,
    batch_size: BatchOpt = 32,  # cxrtriage.pipeline.config.PREDICT_BATCH_SIZE (not imported: --help stays fast)
    device: DeviceOpt = "auto",
    strict_device: StrictOpt = False,
    workers: WorkersOpt = None,
    threads: ThreadsOpt = None,
    fail_on_error: FailOpt = False,
    rules: RulesOpt = None,
    policy: PolicyOpt = None,
    site: SiteOpt = None,
    population: PopulationOpt = None,
    lungs: LungsOpt = None,
    segmenter: SegmenterOpt = None,
    report: ReportOpt = False,
    pdf: PdfOpt = True,
    dicom: DicomOpt = False,
    deidentify: DeidOpt = False,
    send: SendOpt = None,
    aet: AetOpt = "CXRTRIAGE",
    called_aet: CalledAetOpt = "ANY-SCP",
    modality: ModalityOpt = "DOC",
    heatmaps: HeatmapsOpt = False,
    heatmap_method: HeatmapMethodOpt = "gradcam",
    heatmap_gate: HeatmapGateOpt = False,
    full_resolution: FullResolutionOpt = False,
    ray: RayOpt = None,
    resume: ResumeOpt = False,
) -> None:
    """Score every input file: one row per file in OUT/results.csv and OUT/results.jsonl, a triage priority per image, the studies most urgent first in OUT/worklist.csv, and the run's provenance in OUT/run.json.

    Files that are not frontal chest radiographs are `excluded`, files that cannot be read are `failed` (with the reason); neither stops the run. Images that fail a quality check (column `quality`) keep their scores but are `not_assessed`. Decision support only: every image must still be read.

    A study is a DICOM StudyInstanceUID; PNG/JPEG and other non-DICOM files have none, so the files of one folder are one study in the worklist: give each patient a folder of their own.

    OUT is locked while the run writes into it (a second run into OUT is refused, exit 5); OUT may lie inside an input folder, which then skips it: outputs are never read as inputs. When OUT holds an earlier run, this run replaces its results as a whole (a warning says so), unless --resume continues it.

    Exit status: 0 when the run completed; 1 only with --fail-on-error, when an input failed or a report could not be written; 2-5 when the run could not happen (2 inputs, 3 model, 4 configuration: an option, a policy, site or rules file, a --device that cannot run here with --strict-device; 5 output, e.g. OUT locked by another run); 70 an internal error (a bug: the traceback is saved to a file, --verbose prints it); 130 Ctrl-C (SIGINT), 143 SIGTERM, 129 SIGHUP.
    """  # noqa: E501
    from cxrtriage.cli.render import console, err_console, exit_on_error, print_error, print_warning

    if ray is None and workers != 0:
        from cxrtriage.pipeline.startup import prestart

        # The decode workers' forkserver imports the decoders while this process imports the pipeline, the model and
        # onnxruntime (~1 s of imports between them, side by side on two cores instead of one after the other)
        prestart(1)
    from cxrtriage.pipeline.config import PredictConfig
    from cxrtriage.pipeline.predict import run_predict

    with exit_on_error():
        config = PredictConfig(
            inputs=tuple(inputs), out_dir=out, model=model, batch_size=batch_size, device=device,
            strict_device=strict_device, workers=workers, intra_op_threads=threads,
            fail_on_error=fail_on_error, rules=rules, policy=policy, site=site, population=population,
            lungs=lungs, segmenter=segmenter,
            report=report, pdf=pdf, dicom=dicom, deidentify=deidentify, send=send, aet=aet, called_aet=called_aet,
            modality=modality, heatmaps=heatmaps, heatmap_method=heatmap_method, heatmap_gate=heatmap_gate,
            reduced_decode=not full_resolution, resume=resume,
        )
        if ray is not None:
            from cxrtriage.cli.ray_predict import predict_on_ray

            summary = predict_on_ray(config, ray, err_console)
        else:
            with progress_display(err_console, "scoring") as update:
                summary = run_predict(config, on_progress=update)
        console.print(summary_table(summary, "predict summary", written_paths(summary), run_rows(summary)))
        report_errors = list(summary.report.errors) if summary.report is not None else []
        for err in report_errors:
            print_warning(err)
        if config.fail_on_error and (summary.failed or report_errors):
            if summary.failed:
                print_error(f"{summary.failed} of {summary.total} input(s) failed; see the 'reason' column of "
                            f"{summary.results_csv}")
            if report_errors:
                index = summary.report.index if summary.report is not None else None
                print_error(f"{len(report_errors)} report error(s); see above and {index or 'the log'}")
            raise typer.Exit(FAILED_INPUTS_EXIT)


@contextmanager
def progress_display(err_console: Console, description: str, *,
                     done_word: str = "scored") -> Iterator[Callable[[ProgressUpdate], None]]:
    """A rich progress display fed by the pipeline's ProgressUpdate callbacks (total unknown while streaming).

    It appears with the first finished file, so that an error before any file (model, output folder)
    prints as one line. ``done_word`` names the files done as the command's summary does ("segmented").
    """
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    prog = Progress(
        SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed} files"),
        TextColumn("{task.fields[counts]}"), TimeElapsedColumn(), console=err_console, transient=False,
    )
    task = prog.add_task(description, total=None, counts="")
    started = False

    def update(u: ProgressUpdate) -> None:
        nonlocal started
        if not started:
            prog.start()
            started = True
        rate = u.scored / max(u.elapsed, 1e-9)
        prog.update(task, completed=u.done,
                    counts=f"{done_word} {u.scored} · excluded {u.excluded} · failed {u.failed} · {rate:.1f} img/s")

    try:
        yield update
        prog.update(task, total=prog.tasks[0].completed)
    finally:
        if started:
            prog.stop()


def summary_table(s: PredictSummary | SegmentSummary, title: str, written: list[Path],
                  extra: Sequence[tuple[str, str]] = ()) -> Table:
    from rich.table import Table

    t = Table(title=title, title_justify="left", show_header=False)
    t.add_column("", style="bold")
    t.add_column("", overflow="fold")
    segmenting = hasattr(s, "segment_csv")  # SegmentSummary, imported for type checking only
    t.add_row("files", str(s.total))
    t.add_row("segmented" if segmenting else "scored", f"[green]{s.scored}[/]")
    t.add_row("excluded", f"[yellow]{s.excluded}[/]" if s.excluded else "0")
    t.add_row("failed", failed_cell(s.failed, s.failures, s.results_csv if hasattr(s, "results_csv") else s.segment_csv))
    t.add_row("time", f"{s.seconds:.1f} s (the whole run: model loading, decoding, writing"
                      + (")" if segmenting else " and reports)"))
    t.add_row("throughput", f"{s.images_per_s:.1f} images/s {'segmented' if segmenting else 'scored'} over that time")
    t.add_row("model", f"{s.model_name} {s.model_version} on {s.device}")
    for key, value in extra:
        t.add_row(key, value)
    t.add_row("written", "\n".join(str(p) for p in written))
    return t


def failed_cell(n: int, failures: Sequence[tuple[str, str]], table: Path) -> str:
    """The summary's 'failed' cell: the count, the first failed inputs with their reasons, and where the rest are."""
    from rich.markup import escape

    if not n:
        return "0"
    lines = [f"[red]{n}[/]"] + [f"{escape(path)}: {escape(reason)}" for path, reason in failures]
    more = n - len(failures)
    where = f"the 'reason' column of {table.name}"
    if not failures:  # a Ray run counts them only
        lines.append(f"(which, and why: {where})")
    else:
        lines.append(f"and {more} more: {where}" if more > 0 else f"(also in {where})")
    return "\n".join(lines)


def written_paths(s: PredictSummary) -> list[Path]:
    """The run's outputs that exist, in the order a user opens them."""
    out = s.results_csv.parent
    paths = [s.results_csv, s.results_jsonl, out / "worklist.csv"]
    if s.run_json is not None:
        paths.append(s.run_json)
    paths += [p for p in (out / "masks", out / "heatmaps", out / "results.parquet") if p.is_dir()]
    if s.report is not None and s.report.index is not None:
        paths.append(s.report.index)
        if s.report.summary is not None and s.report.summary.dicom_files:
            paths.append(out / "dicom")
    return [p for p in paths if p.exists()]


def _counts(counts: dict[str, int]) -> str:
    style = {"critical": "bold red", "urgent": "red", "routine": "yellow", "not_assessed": "magenta", "normal": "green"}
    return " · ".join(f"[{style.get(k, 'default')}]{k} {n}[/]" for k, n in counts.items()) or "none"


def run_rows(s: PredictSummary) -> list[tuple[str, str]]:
    """Triage, quality, lungs and report rows of the predict summary (from the hooks' outcomes and run.json)."""
    from cxrtriage.pipeline.hooks.triage import TriageOutcome

    rows: list[tuple[str, str]] = []
    if s.resumed:
        rows.append(("resumed", f"{s.resumed} input(s) finished by the earlier run, taken from its journal"))
    sections = s.run.sections if s.run is not None else {}
    triage = s.outcomes.get("triage")
    if isinstance(triage, TriageOutcome) and triage.scores_only:
        # first and plain: a worklist of not_assessed studies must not be read as a triaged one
        rows.append(("triage", "[bold magenta]none: scores only[/] (every image not_assessed)"))
        for note in triage.notes:
            rows.append(("note", f"[yellow]{note}[/]"))
    elif isinstance(triage, TriageOutcome):
        rows.append(("priority (images)", _counts(triage.images_by_priority)))
        rows.append(("priority (studies)", _counts(triage.studies_by_priority)))
        policy = (s.run.policy if s.run is not None else None) or {}
        where = policy.get("path", "default")
        rows.append(("policy", f"{triage.policy_name}" + ("" if where == "default" else f" ({where})")))
        rows.append(("site", triage.site_file or "none (model's own scores and thresholds)"))
        if triage.populations:
            rows.append(("population (images)", ", ".join(f"{k} {n}" for k, n in triage.populations.items())))
        if triage.population_sources:
            rows.append(("population from", ", ".join(f"{k} {n}" for k, n in triage.population_sources.items())))
        for note in triage.notes:
            rows.append(("note", f"[yellow]{note}[/]"))
    quality = sections.get("quality")
    if isinstance(quality, dict):
        failed = int(quality.get("failed", 0))
        by = ", ".join(f"{k} {n}" for k, n in (quality.get("failed_by_check") or {}).items())
        text = f"[magenta]{failed} image(s) failed ({by}): not_assessed[/]" if failed else "all scored images passed"
        rows.append(("quality", text))
    heat = sections.get("heatmaps")
    if isinstance(heat, dict):
        outside = heat.get("outside_lungs") if isinstance(heat.get("outside_lungs"), dict) else {}
        text = f"{heat.get('overlays_written', 0)} overlay(s) ({heat.get('method')}"
        text += ", gated by the lung mask)" if heat.get("lung_gated") else ", ungated)"
        if outside:
            n, level = int(outside.get("maps_at_or_above_level", 0)), float(outside.get("shortcut_level", 0.5))
            text += (f"; [bold orange1]{n} map(s) with {100 * level:.0f}% or more of their evidence outside the lungs: "
                     "possible shortcut (column shortcut)[/]" if n else
                     f"; no map with {100 * level:.0f}% or more of its evidence outside the lungs")
        rows.append(("heat maps", text))
    seg = sections.get("segmenter")
    if isinstance(seg, dict):
        rows.append(("lungs", f"masks by {seg.get('name')} {seg.get('version')} on {seg.get('device')}"))
    if s.report is not None:
        rep = s.report.summary
        text = "not written"
        if rep is not None:
            n_html = sum(1 for x in rep.studies if x.html)
            n_pdf = sum(1 for x in rep.studies if x.pdf)
            text = f"{n_html} HTML, {n_pdf} PDF study report(s)"
            if rep.dicom_files:
                text += f", {len(rep.dicom_files)} DICOM file(s)"
            elif s.run is not None and s.run.options.get("dicom"):
                # --dicom/--send and nothing to write: said, so that nobody waits for objects at the PACS
                text += ", [yellow]no DICOM file[/]: DICOM results (and --send) are for scored DICOM inputs only"
            if rep.sent:
                text += f", sent {sum(1 for r in rep.sent if r.ok)}/{len(rep.sent)}"
        if s.report.errors:
            text += f" · [red]{len(s.report.errors)} error(s)[/]"
        rows.append(("reports", text))
    return rows


def register(app: typer.Typer) -> None:
    app.command("predict")(predict_cmd)
