"""`cxrtriage predict`: score chest radiographs with a classifier and write results.csv / results.jsonl."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from cxrtriage.pipeline import PredictSummary, ProgressUpdate
    from cxrtriage.pipeline_segment import SegmentSummary

FAILED_INPUTS_EXIT = 1

InputsArg = Annotated[
    list[Path], typer.Argument(metavar="INPUT", help="DICOM/PNG/JPEG/TIFF/NIfTI files or folders (walked recursively).")
]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder (created if needed).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", min=1, max=1024, help="Images per inference batch.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto|cpu|cuda|tensorrt|openvino|directml|coreml|rocm.")]
StrictOpt = Annotated[bool, typer.Option("--strict-device", help="Fail instead of falling back to CPU.")]
WorkersOpt = Annotated[
    int | None,
    typer.Option("--workers", "-w", min=0, max=64,
                 help="Decode processes (0 = decode in the main process). Default: half the CPU cores, at least 1."),
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option("--threads", min=1, help="onnxruntime intra-op threads. Default: one per core. With a small model on few cores, "
                                          "cores minus --workers keeps inference off the decoders' cores."),
]
FailOpt = Annotated[bool, typer.Option("--fail-on-error", help="Exit 1 when any input failed (default: exit 0).")]
RulesOpt = Annotated[Path | None, typer.Option("--rules", help="Selection rules TOML. Default: the built-in frontal-CXR rules.")]


def predict_cmd(
    inputs: InputsArg,
    out: OutOpt,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Model name in the models folder, or path to an .onnx file or its manifest. "
                                           "Default: cxr-classifier."),
    ] = None,
    batch_size: BatchOpt = 16,
    device: DeviceOpt = "auto",
    strict_device: StrictOpt = False,
    workers: WorkersOpt = None,
    threads: ThreadsOpt = None,
    fail_on_error: FailOpt = False,
    rules: RulesOpt = None,
) -> None:
    """Score every input file: one row per file in OUT/results.csv and OUT/results.jsonl.

    Files that are not frontal chest radiographs are `excluded`, files that cannot be read are `failed` (with the reason); neither stops the run.

    Exit status: 0 when the run completed, 1 with --fail-on-error when an input failed, 2-5 when the run could not happen (inputs, model, options, output).
    """  # noqa: E501
    from cxrtriage.cli.render import console, err_console, exit_on_error, print_error
    from cxrtriage.pipeline import PredictConfig, run_predict

    with exit_on_error():
        config = PredictConfig(
            inputs=tuple(inputs), out_dir=out, model=model, batch_size=batch_size, device=device,
            strict_device=strict_device, workers=workers, intra_op_threads=threads,
            fail_on_error=fail_on_error, rules=rules,
        )
        with progress_display(err_console, "scoring") as update:
            summary = run_predict(config, on_progress=update)
        console.print(summary_table(summary, "predict summary", [summary.results_csv, summary.results_jsonl]))
        if summary.failed and config.fail_on_error:
            print_error(f"{summary.failed} of {summary.total} input(s) failed; see the 'reason' column of {summary.results_csv}")
            raise typer.Exit(FAILED_INPUTS_EXIT)


@contextmanager
def progress_display(err_console: Console, description: str) -> Iterator[Callable[[ProgressUpdate], None]]:
    """A rich progress display fed by the pipeline's ProgressUpdate callbacks (total unknown while streaming).

    It appears with the first finished file, so that an error before any file (model, output folder)
    prints as one line.
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
                    counts=f"scored {u.scored} · excluded {u.excluded} · failed {u.failed} · {rate:.1f} img/s")

    try:
        yield update
        prog.update(task, total=prog.tasks[0].completed)
    finally:
        if started:
            prog.stop()


def summary_table(s: PredictSummary | SegmentSummary, title: str, written: list[Path]) -> Table:
    from rich.table import Table

    t = Table(title=title, title_justify="left", show_header=False)
    t.add_column("", style="bold")
    t.add_column("", overflow="fold")
    t.add_row("files", str(s.total))
    t.add_row("scored", f"[green]{s.scored}[/]")
    t.add_row("excluded", f"[yellow]{s.excluded}[/]" if s.excluded else "0")
    t.add_row("failed", f"[red]{s.failed}[/]" if s.failed else "0")
    t.add_row("time", f"{s.seconds:.1f} s")
    t.add_row("throughput", f"{s.images_per_s:.1f} images/s")
    t.add_row("model", f"{s.model_name} {s.model_version} on {s.device}")
    t.add_row("written", "\n".join(str(p) for p in written))
    return t


def register(app: typer.Typer) -> None:
    app.command("predict")(predict_cmd)
