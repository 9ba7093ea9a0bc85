"""`cxrtriage inspect`: show what is read from each input file and whether it would be scored (no patient data)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from cxrtriage.io.inspect import InspectReport


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)


def inspect(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (walked recursively) to inspect.",
                                                show_default=False)],
    rules: Annotated[Path | None, typer.Option("--rules", help="Selection rules TOML file "
                                               "(default: frontal CR/DX chest).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object per file instead of tables.")] = False,
    model: Annotated[str | None, typer.Option("--model", help="Classifier whose input size decides how far `predict` "
                                              "reduces JPEG 2000 / JPEG decoding (default: cxr-classifier).")] = None,
) -> None:
    """Show what cxrtriage reads from each file (kind, size, photometric, bits, transfer syntax, modality LUT,
    MONOCHROME1 inversion, VOI window, pixel spacing and its source, value range, notes) and whether it would be
    scored, excluded or failed, and why; and the image quality checks `predict` runs on it (a failed one makes a
    scored image not_assessed). Patient names and IDs are never shown."""
    from cxrtriage.cli.render import console, exit_on_error
    from cxrtriage.errors import InputError, ModelError
    from cxrtriage.io import DEFAULT_RULES, discover, load_rules
    from cxrtriage.io.inspect import inspect_file
    from cxrtriage.measure.quality import image_checks
    from cxrtriage.model.registry import resolve_manifest
    from cxrtriage.preprocess import PixelNeeds

    with exit_on_error():
        selection = load_rules(rules) if rules is not None else DEFAULT_RULES
        try:  # what `predict` (without --heatmaps/--lungs) asks of the decoder: the classifier's input
            needs: PixelNeeds | None = PixelNeeds((resolve_manifest(model).preprocessing,))
        except ModelError as exc:
            if model is not None:
                raise
            needs = None
            console.print(f"[yellow]note:[/] default classifier not found ({exc}); decode for predict not shown")
        seen = 0
        for path in discover(paths):
            seen += 1
            report = inspect_file(path, selection, max_scale=needs, image_checks=lambda image: (
                f"{c.name}: {'ok' if c.passed else 'FAILED'}" + ("" if c.passed else f" ({c.message})")
                for c in image_checks(image)))
            if as_json:
                typer.echo(json.dumps(report.to_dict(), default=str))
            else:
                console.print(_render(report))
        if not seen:  # as predict, segment and explain say of the same folder
            raise InputError(f"no input files found in {', '.join(str(p) for p in paths)}")


_STATUS_STYLE = {"scored": "bold green", "excluded": "bold yellow", "failed": "bold red"}


def _render(r: InspectReport) -> object:
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column(overflow="fold")

    def row(label: str, value: object) -> None:
        if value not in (None, "", ()):
            table.add_row(label, Text(str(value)))

    decision = Text(r.status, style=_STATUS_STYLE.get(r.status, ""))
    decision.append(f"  {r.reason}", style="")
    table.add_row("decision", decision)
    row("kind", f"{r.kind} ({r.fmt})" if r.fmt else r.kind)
    row("size", f"{r.size} (columns x rows)" if r.rows else r.size)
    if r.sop_class:
        row("SOP class", r.sop_class)
    row("modality", r.modality)
    row("body part", r.body_part)
    row("view", r.view)
    row("laterality", r.laterality)
    row("presentation intent", r.presentation_intent)
    row("photometric", r.photometric)
    bits = []
    if r.bits_stored:
        bits.append(f"{r.bits_stored} stored")
    if r.bits_allocated:
        bits.append(f"{r.bits_allocated} allocated")
    if r.pixel_representation is not None:
        bits.append("signed" if r.pixel_representation == 1 else "unsigned")
    row("bits", ", ".join(bits))
    if r.transfer_syntax_uid:
        assumed = " [assumed: no TransferSyntaxUID in file meta]" if r.transfer_syntax_assumed else ""
        row("transfer syntax", f"{r.transfer_syntax or '?'} ({r.transfer_syntax_uid}){assumed}")
    row("decoder", r.decoder)
    row("decode for predict", r.reduced_decode)
    row("modality LUT", r.modality_lut)
    if r.kind == "dicom" and r.read_error is None:
        row("MONOCHROME1 inverted", "yes" if r.monochrome1_inverted else "no")
    row("VOI window", r.voi)
    if r.read_error is None and r.kind != "unknown":
        spacing = (f"{r.pixel_spacing_mm[0]:g} x {r.pixel_spacing_mm[1]:g} mm (row x column) from {r.spacing_source}"
                   if r.pixel_spacing_mm else "unknown")
        row("pixel spacing", spacing)
    if r.value_range is not None:
        row("value range", f"{r.value_range[0]:g} .. {r.value_range[1]:g} (nominal)")
    if r.pixel_min is not None and r.pixel_max is not None:
        row("pixels", f"min {r.pixel_min:g}, max {r.pixel_max:g}")
    row("study key", r.study_key)
    if r.read_error:
        table.add_row("read error", Text(r.read_error, style="red"))
    for i, line in enumerate(r.quality):
        table.add_row("quality" if i == 0 else "", Text(line, style="" if line.endswith(": ok") else "red"))
    for i, note in enumerate(r.notes):
        table.add_row("notes" if i == 0 else "", Text(note))
    return Panel(table, title=Text(r.path, style="bold"), title_align="left", border_style=_STATUS_STYLE.get(r.status, ""))
