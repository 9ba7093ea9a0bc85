"""`cxrtriage report RESULTS_DIR`: HTML/PDF decision-support reports, a batch index, DICOM results, PACS send."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrtriage.cli.predict import DEIDENTIFY_HELP


def register(app: typer.Typer) -> None:
    app.command("report")(report)


def report(
    results_dir: Annotated[Path, typer.Argument(help="The --out folder of `cxrtriage predict` (holds results.jsonl).")],
    deidentify: Annotated[bool, typer.Option("--deidentify", help=DEIDENTIFY_HELP)] = False,
    dicom: Annotated[bool, typer.Option(
        "--dicom",
        help="Also write DICOM results into each source study: TID 1500 SR, secondary capture, lung SEG, "
             "encapsulated PDF (DIR/dicom/<study>/).",
    )] = False,
    pdf: Annotated[bool, typer.Option("--pdf/--no-pdf", help="Write a PDF beside each HTML report.")] = True,
    send: Annotated[str | None, typer.Option("--send", metavar="HOST:PORT",
                                             help="C-STORE the DICOM results to this PACS.")] = None,
    aet: Annotated[str, typer.Option("--aet", help="Our (calling) AE title for --send.")] = "CXRTRIAGE",
    called_aet: Annotated[str, typer.Option("--called-aet", help="The PACS (called) AE title for --send.")] = "ANY-SCP",
    modality: Annotated[str, typer.Option(
        "--modality", help="Modality of the encapsulated PDF (DOC, or OT for viewers that need it).")] = "DOC",
    model: Annotated[str | None, typer.Option(
        "--model", help="Classifier manifest to read thresholds and the model card from (default: from run.json).")] = None,
    operating_point: Annotated[str | None, typer.Option(
        "--operating-point", help="rule_out or balanced, when run.json does not record the thresholds used.")] = None,
) -> None:
    """Write decision-support reports for a results folder: one HTML (+PDF) per study and DIR/report/index.html.

    Every report says: decision support only, not a diagnosis; a qualified clinician must review.
    Exit code 0 when every report was written, 1 when some outputs or sends failed (listed).
    """
    from rich.markup import escape

    from cxrtriage.cli.render import console, print_warning
    from cxrtriage.outdir import lock_output
    from cxrtriage.report.batch import build_reports
    from cxrtriage.report.send import parse_destination, send_errors

    dest = parse_destination(send, called_aet=called_aet, calling_aet=aet) if send else None
    if dest is not None and not dicom:
        print_warning("--send only sends DICOM results: add --dicom")
    with lock_output(results_dir, "report", create=False):  # not while a predict run still writes there
        summary = build_reports(results_dir, deidentify=deidentify, pdf=pdf, dicom=dicom, send=dest,
                                modality=modality, model=model, operating_point=operating_point)
    n_html = sum(1 for s in summary.studies if s.html)
    n_pdf = sum(1 for s in summary.studies if s.pdf)
    console.print(f"{n_html} HTML and {n_pdf} PDF study reports, index: {summary.index}", highlight=False)
    if dicom:
        console.print(f"{len(summary.dicom_files)} DICOM files under {summary.results_dir / 'dicom'}", highlight=False)
    for r in summary.sent:
        if r.ok:
            console.print(f"[green]sent[/] {escape(r.path.name)} ({escape(r.path.parent.name)}): {r.status}",
                          highlight=False)
    for note in summary.notes:
        if "not found" in note or "unknown" in note:
            print_warning(note)
    for err in [*summary.errors, *send_errors(summary.sent)]:  # the files not sent: one line per cause
        print_warning(err)
    if summary.errors or any(not r.ok for r in summary.sent):
        raise typer.Exit(1)
