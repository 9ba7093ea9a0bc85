"""Root Typer app: it only assembles the commands, one module per command (or group)."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import re
import sys
import warnings
from pathlib import Path

import typer

from cxrtriage import __version__
from cxrtriage.errors import CxrTriageError

app = typer.Typer(
    name="cxrtriage",
    help=(
        "Chest X-ray inference and triage for decision support (never autonomous diagnosis).\n\n"
        "Typical use: `cxrtriage predict SCANS/ --out results/` reads every DICOM/PNG/JPEG under SCANS/, "
        "scores the frontal chest radiographs with the default model, and writes results.csv, "
        "results.jsonl and a worklist. Run `cxrtriage COMMAND --help` for each command."
    ),
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals may hold patient data
    add_completion=False,
)

# Each module defines `register(app: typer.Typer) -> None`.
COMMAND_MODULES = (
    "predict",
    "serve",
    "watch",
    "inspect_cmd",
    "models",
    "segment",
    "explain",
    "report",
    "evaluate",
    "calibrate",
    "monitor",
    "train",
)


# pydicom and highdicom quote raw values in their messages ("Invalid value for VR DA: '1945-06-07'", UIDs, names).
_DICOM_LIBRARIES = ("pydicom", "highdicom")
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


class DicomLibraryFilter(logging.Filter):
    """Messages of the DICOM libraries go to the log at debug level, without the values they quote.

    cxrtriage handles what they warn about (invalid source values are left out of the DICOM results and noted by
    attribute name), so they are no news for the user, and their text would put patient data on the terminal.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".", 1)[0] not in _DICOM_LIBRARIES:
            return True
        record.msg = _QUOTED.sub("(value not shown)", record.getMessage())
        record.args = ()
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


def use_plain_log() -> None:
    """Log one plain line per event, with date and time, never wrapped: the log of a long-running service (``serve``,
    ``watch``), read with grep and kept in files. Its own progress (``cxrtriage.node``) is logged at INFO, with
    ``--verbose`` at DEBUG; the DICOM libraries' messages stay filtered as for every command."""
    verbose = logging.getLogger().isEnabledFor(logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%Y-%m-%d %H:%M:%S"))
    handler.addFilter(DicomLibraryFilter())
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler], force=True)
    logging.getLogger("cxrtriage.node").setLevel(logging.DEBUG if verbose else logging.INFO)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cxrtriage {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details to stderr."),
) -> None:
    from cxrtriage.cli.render import ConsoleLogHandler

    handler = ConsoleLogHandler()
    handler.addFilter(DicomLibraryFilter())
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[handler],
        force=True,
    )
    # pydicom logs every warning it issues (above); its Python warning is the same text, values included.
    for library in _DICOM_LIBRARIES:
        warnings.filterwarnings("ignore", module=rf"{library}(\.|$)")


for _name in COMMAND_MODULES:
    importlib.import_module(f"cxrtriage.cli.{_name}").register(app)


def _main_as_module() -> None:
    """Under the console script, name ``__main__`` as the module ``cxrtriage.__main__`` (what ``python -m cxrtriage``
    runs). Why: multiprocessing's forkserver and spawn children re-run a main *script* (by path) before their first
    task, but skip a main module named ``*.__main__``; the console script only imports and calls `main`, so nothing
    is lost, and each decode worker is spared importing the whole CLI again (~0.1 s of CPU per worker per run)."""
    m = sys.modules.get("__main__")
    script = getattr(m, "__file__", None) or ""
    if (m is not None and getattr(m, "__spec__", None) is None and getattr(m, "main", None) is main
            and Path(script).name == "cxrtriage"):  # the generated script, not someone's own that may set things up
        m.__spec__ = importlib.util.find_spec("cxrtriage.__main__")


_NO_WORKERS = ("--workers=0", "-w0", "-w=0")


def predict_with_workers(args: list[str]) -> bool:
    """Whether the command line (without the program name) is a ``predict`` that will start decode workers: not
    ``--help``, not ``--ray``, not ``--workers 0``. A miss only means the workers start at the usual time."""
    if not args or args[0] != "predict":
        return False
    for i, a in enumerate(args):
        if a in ("-h", "--help", "--ray") or a.startswith("--ray=") or a in _NO_WORKERS:
            return False
        if a in ("--workers", "-w") and i + 1 < len(args) and args[i + 1] == "0":
            return False
    return True


def main() -> None:
    """Console-script entry point: every way a command can end maps to one line and a documented exit code
    (``cxrtriage.errors``): a known error its class's code, a signal 128 + its number, a bug 70."""
    from cxrtriage.cli.render import Interrupted, install_signal_handlers, print_error, report_internal_error, report_interrupt

    install_signal_handlers()
    _main_as_module()  # first: the forkserver below takes the main module's name when it starts
    if predict_with_workers(sys.argv[1:]):
        # Start the decode workers' forkserver before Typer parses the command line. Why: a short run waits for the
        # forkserver's imports (the decoders: ~0.5 s), and Typer's parsing (its pydantic coercion, every command's
        # options) came first, ~0.2 s. `predict_cmd` asks again (a no-op then) for the callers of `app` itself.
        from cxrtriage.pipeline.startup import prestart

        prestart(1)
    try:
        app()
    except CxrTriageError as exc:
        print_error(str(exc))
        sys.exit(exc.exit_code)
    except Interrupted as exc:  # one that came before or after a command's own handling (exit_on_error)
        sys.exit(report_interrupt(exc.signum))
    except Exception as exc:  # a bug outside exit_on_error (e.g. a command without it)
        sys.exit(report_internal_error(exc))
