"""Shared console objects and small rendering helpers for the CLI commands."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console

console = Console()
err_console = Console(stderr=True)


def print_error(message: str) -> None:
    """Print one red error line on stderr."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


def print_warning(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


@contextmanager
def exit_on_error() -> Iterator[None]:
    """Inside a command: turn a CxrTriageError into one red line and its class's exit code.

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
