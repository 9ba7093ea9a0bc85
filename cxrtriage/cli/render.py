"""Shared console objects and small rendering helpers for the CLI commands, and how a command ends.

A command ends with exactly one of the exit codes listed in ``cxrtriage.errors``: a ``CxrTriageError`` prints
one red line and exits with its class's code; a signal (Ctrl-C, SIGTERM, SIGHUP) stops the run cleanly (worker
processes stopped, partial files kept as ``*.partial``, the output folder unlocked) and exits 128 + the signal
number; any other exception is a bug: one line says so and where its traceback was saved, and the exit code is 70.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import tempfile
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from rich.console import Console
from rich.markup import escape

from cxrtriage.errors import EXIT_INTERNAL_ERROR, EXIT_INTERRUPTED

console = Console()
err_console = Console(stderr=True)


def print_error(message: str) -> None:
    """Print one red error line on stderr; the message is plain text (its ``[...]`` parts, field names, lists, paths
    like ``scan[1].dcm`` or ``cxrtriage[ray]``, are shown, not read as markup)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True, markup=True)


def print_warning(message: str) -> None:
    """Print one yellow warning line on stderr; the message is plain text, like ``print_error``'s."""
    err_console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


class ConsoleLogHandler(logging.Handler):
    """The log of an interactive command, in the CLI's own words: a warning is a ``warning:`` line and an error an
    ``error:`` line, as `print_warning` and `print_error` write them; with ``--verbose``, each progress line starts
    with its time of day.

    Why not rich's log handler: its time and level columns took 28 of 80 columns and folded each message into a
    narrow block, and the same run said ``WARNING  ...`` for one thing and ``warning: ...`` for another.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            if record.levelno >= logging.ERROR:
                print_error(message)
            elif record.levelno >= logging.WARNING:
                print_warning(message)
            else:
                err_console.print(f"[dim]{dt.datetime.fromtimestamp(record.created):%H:%M:%S}[/] {escape(message)}",
                                  highlight=False, soft_wrap=True)
        except Exception:
            self.handleError(record)


class Interrupted(BaseException):
    """A signal asked the run to stop. Like ``KeyboardInterrupt`` it is no ``Exception``, so that it unwinds
    through every ``finally`` (decode workers killed, results left as ``*.partial``, the output lock released);
    unlike it, click does not turn it into "Aborted!" and exit status 1."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_STOP_SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s is not None)


def install_signal_handlers() -> None:
    """Make SIGINT, SIGTERM and SIGHUP raise `Interrupted` in the main thread (call it from the main thread).

    A signal this process was started with ignored stays ignored (``nohup`` ignores SIGHUP, a shell ignores
    SIGINT for a background job). A second signal while the run is stopping is not caught again: it ends the
    process at once (the worker processes still end with it, see ``cxrtriage.pipeline.decode``).
    """
    mine = [s for s in _STOP_SIGNALS if signal.getsignal(s) != signal.SIG_IGN]

    def stop(signum: int, frame: FrameType | None) -> None:
        for s in mine:
            signal.signal(s, signal.SIG_DFL)
        raise Interrupted(signum)

    for s in mine:
        signal.signal(s, stop)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def report_interrupt(signum: int) -> int:
    """Say that the run was interrupted, and return its exit code (128 + the signal number)."""
    name = signal_name(signum)
    print_error(f"interrupted by {name}: the run stopped before the end; files it had not finished are left as "
                "*.partial in the output folder (not complete results); run it again to finish")
    return EXIT_INTERRUPTED + signum


def _save_traceback(text: str) -> str:
    """Write ``text`` to a new file readable by this user only (tracebacks may name patient files); its path,
    or why it could not be written."""
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    path = os.path.join(tempfile.gettempdir(), f"cxrtriage-traceback-{stamp}-{os.getpid()}.txt")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as f:
            f.write(text)
    except OSError as exc:
        return f"not saved ({exc.strerror or exc})"
    return path


def report_internal_error(exc: BaseException) -> int:
    """Say, in one line, that ``exc`` is a bug and where its traceback went; return the internal-error exit code.

    The traceback goes to a file (and, with ``--verbose``, to stderr too): never lost, never a wall of text
    in front of a user who can do nothing about it.
    """
    text = "".join(traceback.format_exception(exc))
    verbose = logging.getLogger().isEnabledFor(logging.INFO)
    where = _save_traceback(text)
    if verbose or where.startswith("not saved"):
        err_console.print(text, markup=False, highlight=False, soft_wrap=True)
    first = (f"{type(exc).__name__}: {exc}".splitlines() or [type(exc).__name__])[0][:300]
    shown = "printed above" if verbose else "run again with --verbose to print it"
    print_error(f"internal error, a bug in cxrtriage and not a problem of your files ({first}); traceback saved to "
                f"{where} ({shown}); please report it with that file")
    return EXIT_INTERNAL_ERROR


@contextmanager
def exit_on_error() -> Iterator[None]:
    """Inside a command: end as described in this module (one line and a documented exit code).

    (``main()`` does the same for the console script; this makes commands behave the same
    when invoked in-process, e.g. through ``typer.testing.CliRunner``.)
    """
    import typer

    from cxrtriage.errors import CxrTriageError

    try:
        yield
    except CxrTriageError as exc:
        print_error(str(exc))
        raise typer.Exit(exc.exit_code) from exc
    except _cli_exits():
        raise  # the command's own exit (e.g. --fail-on-error) or a usage error: Typer reports it
    except Interrupted as exc:
        raise typer.Exit(report_interrupt(exc.signum)) from exc
    except KeyboardInterrupt as exc:  # Ctrl-C where no handler is installed (library use, tests)
        raise typer.Exit(report_interrupt(signal.SIGINT)) from exc
    except Exception as exc:
        raise typer.Exit(report_internal_error(exc)) from exc


def _cli_exits() -> tuple[type[BaseException], ...]:
    """The exceptions by which Typer/click end a command on purpose (Typer >= 0.24 vendors click, older ones
    use click itself)."""
    import typer

    found: list[type[BaseException]] = [typer.Exit, typer.Abort]
    try:
        from typer.exceptions import TyperException
    except ImportError:
        pass
    else:
        found.append(TyperException)
    try:
        import click
    except ImportError:
        pass
    else:
        found += [click.exceptions.Exit, click.exceptions.Abort, click.exceptions.ClickException]
    return tuple(found)
