"""`cxrtriage segment`: lung masks (PNG label maps) and lung areas (px, mm²) for each input file."""

from __future__ import annotations

from typing import Annotated

import typer

from cxrtriage.cli.predict import (
    FAILED_INPUTS_EXIT,
    BatchOpt,
    DeviceOpt,
    FailOpt,
    InputsArg,
    OutOpt,
    RulesOpt,
    StrictOpt,
    ThreadsOpt,
    WorkersOpt,
)


def segment_cmd(
    inputs: InputsArg,
    out: OutOpt,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Segmenter name in the models folder, or path to an .onnx file or its "
                                           "manifest. Default: lung-segmenter."),
    ] = None,
    batch_size: BatchOpt = 8,
    device: DeviceOpt = "auto",
    strict_device: StrictOpt = False,
    workers: WorkersOpt = None,
    threads: ThreadsOpt = None,
    fail_on_error: FailOpt = False,
    rules: RulesOpt = None,
) -> None:
    """Segment the lungs of every input file.

    Writes OUT/masks/<file stem>.png (label map at the original size: 0 = background, 1.. = lung labels) and OUT/segment.csv (lung area in pixels, and in mm² when the pixel spacing is known, per label too).
    """  # noqa: E501
    from cxrtriage.cli.predict import progress_display, summary_table
    from cxrtriage.cli.render import console, err_console, exit_on_error, print_error
    from cxrtriage.pipeline.config import SegmentConfig
    from cxrtriage.pipeline.segment import run_segment

    with exit_on_error():
        config = SegmentConfig(
            inputs=tuple(inputs), out_dir=out, model=model, batch_size=batch_size, device=device,
            strict_device=strict_device, workers=workers, intra_op_threads=threads,
            fail_on_error=fail_on_error, rules=rules,
        )
        with progress_display(err_console, "segmenting", done_word="segmented") as update:
            summary = run_segment(config, on_progress=update)
        console.print(summary_table(summary, "segment summary", [summary.segment_csv, summary.masks_dir]))
        if summary.failed and config.fail_on_error:
            print_error(f"{summary.failed} of {summary.total} input(s) failed; see the 'reason' column of {summary.segment_csv}")
            raise typer.Exit(FAILED_INPUTS_EXIT)


def register(app: typer.Typer) -> None:
    app.command("segment")(segment_cmd)
