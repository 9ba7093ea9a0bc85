"""`cxrtriage serve`: a DICOM node (Storage SCP) that scores every chest radiograph study sent to it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

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

if TYPE_CHECKING:
    from cxrtriage.node.serve import ServeInfo

ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="Model name in the models folder, or path to an .onnx file or its manifest. "
                                       "Default: cxr-classifier."),
]


def serve_cmd(
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: spool, journal, results, worklist, reports "
                                                          "(created if needed; one node per folder).")],
    aet: Annotated[str, typer.Option("--aet", help="Our AE title (the senders' called AE title; ours when forwarding).")]
    = "CXRTRIAGE",
    port: Annotated[int, typer.Option("--port", "-p", help="TCP port to listen on (0: any free port, printed).")] = 11112,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface).")] = "0.0.0.0",
    allow_aet: Annotated[
        list[str] | None,
        typer.Option("--allow-aet", help="Accept associations only from this calling AE title (repeat for several). "
                                         "Default: from any."),
    ] = None,
    max_associations: Annotated[int, typer.Option("--max-associations", help="Associations at once; more are rejected "
                                                                             "(transient, the sender retries).")] = 10,
    max_pdu: Annotated[int, typer.Option("--max-pdu", help="Largest PDU we receive, in bytes (0: no limit).")] = 0,
    study_timeout: Annotated[float, typer.Option("--study-timeout", help="A study is complete, and scored, when none of "
                                                                         "its instances arrived for this many seconds.")]
    = 30.0,
    forward: Annotated[
        str | None,
        typer.Option("--forward", metavar="HOST:PORT", help="Send each study's DICOM results (SR, SC, SEG, encapsulated "
                                                            "PDF) there with C-STORE, through a persistent outbox with "
                                                            "retries (implies --dicom)."),
    ] = None,
    called_aet: Annotated[str, typer.Option("--called-aet", help="The AE title of the --forward destination.")] = "ANY-SCP",
    retry_seconds: Annotated[float, typer.Option("--retry-seconds", help="First retry of a failed forward; the wait "
                                                                         "doubles after each failure.")] = 10.0,
    retry_max_seconds: Annotated[float, typer.Option("--retry-max-seconds", help="Longest wait between two tries of a "
                                                                                 "forward.")] = 600.0,
    min_free_mb: Annotated[int, typer.Option("--min-free-mb", help="Refuse instances (out of resources, A700) when less "
                                                                   "disk space than this is left in OUT.")] = 500,
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
    """Receive studies over DICOM (C-STORE; C-ECHO answered) and score each one once it is complete.

    Accepted: CR, DX (for presentation and for processing) and secondary capture images; any other SOP class is refused (0122H). Each instance is written to OUT/spool and flushed to disk before the sender is told it is stored; a full disk is refused (A700H), never acknowledged. A study is complete when none of its instances arrived for --study-timeout seconds; it then goes through the same stages as `predict` (selection, scoring, triage; --lungs, --heatmaps, --report, --dicom when asked), and OUT/results.jsonl (appended), OUT/results.csv and OUT/worklist.csv (rewritten atomically) are brought up to date. The same SOP Instance UID sent twice is scored once. Anything a crash left in the spool is scored first at the next start.

    Log lines name studies and instances by UID, with counts, never by patient name or ID. Stop with Ctrl-C or SIGTERM (exit 130/143): nothing acknowledged is lost.
    """  # noqa: E501
    from cxrtriage.cli.app import use_plain_log
    from cxrtriage.cli.render import Interrupted, console, err_console, exit_on_error, signal_name
    from cxrtriage.errors import EXIT_INTERRUPTED
    from cxrtriage.node.scp import ScpSettings
    from cxrtriage.node.serve import ServeConfig, run_serve
    from cxrtriage.pipeline.config import PredictConfig
    from cxrtriage.report.send import parse_destination

    with exit_on_error():
        destination = (parse_destination(forward, called_aet=called_aet, calling_aet=aet)
                       if forward is not None else None)
        predict = PredictConfig(
            inputs=(ServeConfig.spool_of(out),), out_dir=out, model=model, batch_size=batch_size, device=device,
            strict_device=strict_device, workers=workers, intra_op_threads=threads, rules=rules, policy=policy,
            site=site, lungs=lungs, segmenter=segmenter, report=report, pdf=pdf, dicom=dicom or forward is not None,
            deidentify=deidentify, modality=modality, heatmaps=heatmaps, heatmap_method=heatmap_method,
            heatmap_gate=heatmap_gate,
            population=population, reduced_decode=not full_resolution,
        )
        config = ServeConfig(
            predict=predict,
            scp=ScpSettings(aet=aet, host=host, port=port, allowed_aets=tuple(allow_aet or ()),
                            max_associations=max_associations, max_pdu=max_pdu),
            study_timeout=study_timeout, forward=destination, retry_seconds=retry_seconds,
            retry_max_seconds=retry_max_seconds, min_free_mb=min_free_mb,
        )
        use_plain_log()  # a node's log is its progress display: one greppable line per event

        def ready(info: ServeInfo) -> None:
            recovered = f"; {info.recovered} instance(s) left by the previous run are scored first" if info.recovered else ""
            console.print(f"cxrtriage serve: listening on {info.host}:{info.port} as '{info.aet}', results in "
                          f"{info.out_dir}{recovered} (Ctrl-C to stop)", highlight=False, soft_wrap=True)

        try:
            run_serve(config, on_ready=ready)
        except Interrupted as exc:  # the normal way to stop a serve: say so, not "the run stopped before the end"
            err_console.print(f"cxrtriage serve: stopped by {signal_name(exc.signum)}; every instance acknowledged is in "
                              "the spool, and those not scored yet are scored at the next start", highlight=False,
                              soft_wrap=True)
            raise typer.Exit(EXIT_INTERRUPTED + exc.signum) from exc


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)
