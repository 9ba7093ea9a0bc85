"""`cxrtriage watch`: a hot folder; every file dropped into it is scored once, across restarts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrtriage.cli.predict import (
    BatchOpt,
    DeidOpt,
    DeviceOpt,
    DicomOpt,
    FullResolutionOpt,
    HeatmapGateOpt,
    HeatmapMethodOpt,
    HeatmapsOpt,
    LungsOpt,
    ModalityOpt,
    OutOpt,
    PdfOpt,
    PolicyOpt,
    PopulationOpt,
    ReportOpt,
    RulesOpt,
    SegmenterOpt,
    SiteOpt,
    StrictOpt,
    ThreadsOpt,
    WorkersOpt,
)
from cxrtriage.cli.serve import ModelOpt


def watch_cmd(
    folder: Annotated[Path, typer.Argument(metavar="DIR", help="The folder to watch (walked recursively).")],
    out: OutOpt,
    poll: Annotated[float, typer.Option("--poll", help="Seconds between two looks at DIR.")] = 2.0,
    settle: Annotated[float, typer.Option("--settle", help="A file is ready once its size and mtime stayed the same this "
                                                           "many seconds (0 with the *.part rename convention).")] = 5.0,
    model: ModelOpt = None,
    batch_size: BatchOpt = 16,
    device: DeviceOpt = "auto",
    strict_device: StrictOpt = False,
    workers: WorkersOpt = None,
    threads: ThreadsOpt = None,
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
    modality: ModalityOpt = "DOC",
    heatmaps: HeatmapsOpt = False,
    heatmap_method: HeatmapMethodOpt = "gradcam",
    heatmap_gate: HeatmapGateOpt = False,
    full_resolution: FullResolutionOpt = False,
) -> None:
    """Watch DIR and score every file dropped into it, once: results appended to OUT as for `cxrtriage serve`.

    A file named *.part, *.partial or *.tmp (or hidden) is being written and is left alone until it is renamed; any other file is read once its size and mtime have not changed for --settle seconds. Each file is scored exactly once, across restarts (OUT/journal.jsonl records path, size and mtime); a file that changes later is scored again and its new row replaces the old one. DIR is never modified. Stop with Ctrl-C or SIGTERM.
    """  # noqa: E501
    from cxrtriage.cli.app import use_plain_log
    from cxrtriage.cli.render import Interrupted, console, err_console, exit_on_error, signal_name
    from cxrtriage.errors import EXIT_INTERRUPTED, InputError
    from cxrtriage.node.watch import WatchConfig, run_watch
    from cxrtriage.pipeline.config import PredictConfig

    with exit_on_error():
        if not folder.is_dir():
            raise InputError(f"{folder}: not found or not a folder; give the folder to watch")
        predict = PredictConfig(
            inputs=(folder,), out_dir=out, model=model, batch_size=batch_size, device=device,
            strict_device=strict_device, workers=workers, intra_op_threads=threads, rules=rules, policy=policy,
            site=site, lungs=lungs, segmenter=segmenter, report=report, pdf=pdf, dicom=dicom, deidentify=deidentify,
            modality=modality, heatmaps=heatmaps, heatmap_method=heatmap_method,
            heatmap_gate=heatmap_gate,
            population=population, reduced_decode=not full_resolution,
        )
        config = WatchConfig(predict=predict, poll_seconds=poll, settle_seconds=settle)
        use_plain_log()

        def ready(committed: int) -> None:
            console.print(f"cxrtriage watch: watching {folder}, results in {out} ({committed} file(s) scored before; "
                          "Ctrl-C to stop)", highlight=False, soft_wrap=True)

        try:
            run_watch(config, on_ready=ready)
        except Interrupted as exc:  # the normal way to stop a watch: say so, not "the run stopped before the end"
            err_console.print(f"cxrtriage watch: stopped by {signal_name(exc.signum)}; the files not scored yet are "
                              "scored at the next start", highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_INTERRUPTED + exc.signum) from exc


def register(app: typer.Typer) -> None:
    app.command("watch")(watch_cmd)
