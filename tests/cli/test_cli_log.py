"""The log of an interactive command reads as the CLI's own lines: 'warning: ...', 'error: ...', and with --verbose
timed progress lines; the message is never read as markup and never folded into a narrow column."""

from __future__ import annotations

import logging
import re

import pytest
from rich.console import Console

from cxrtriage.cli import render
from cxrtriage.cli.render import ConsoleLogHandler


@pytest.fixture()
def captured(monkeypatch: pytest.MonkeyPatch) -> Console:
    console = Console(stderr=True, record=True, width=80, force_terminal=False)
    monkeypatch.setattr(render, "err_console", console)
    return console


def _emit(level: int, msg: str, *args: object) -> None:
    handler = ConsoleLogHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.emit(logging.LogRecord("cxrtriage.x", level, __file__, 1, msg, args, None))


def test_warnings_and_errors_read_as_the_clis_own_lines(captured: Console) -> None:
    long = "out/report: the earlier run's reports were removed; 1 file(s) that cxrtriage did not write stay " * 2
    _emit(logging.WARNING, "%s(%s)", long, "[bold]notes[1].txt")
    _emit(logging.ERROR, "cannot write %s", "x.csv")
    text = captured.export_text()
    lines = text.splitlines()
    assert lines[0].startswith("warning: out/report: the earlier run's") and len(lines[0]) > 80  # one line, not folded
    assert "([bold]notes[1].txt)" in lines[0]  # shown as it is, not read as markup
    assert lines[1] == "error: cannot write x.csv"
    assert "WARNING" not in text and "ERROR" not in text


def test_verbose_progress_lines_carry_the_time_of_day(captured: Console) -> None:
    _emit(logging.INFO, "loaded %s on cpu", "model.onnx")
    assert re.fullmatch(r"\d\d:\d\d:\d\d loaded model\.onnx on cpu\n", captured.export_text())
