"""What `--help` says is what the commands do: exit codes, the files --heatmaps writes, install commands, and no text
lost to rich markup."""

from __future__ import annotations

import re
import signal
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
import typer.main
from typer.testing import CliRunner

from cxrtriage import errors
from cxrtriage.cli.app import app
from cxrtriage.cli.render import _STOP_SIGNALS
from cxrtriage.pipeline.hooks.heatmaps import HEATMAP_DIR, MAP_SIDE, OVERLAY_SIDE

ROOT = Path(__file__).resolve().parents[2]

# What rich reads as a style tag in help text (and drops): "[" + a letter, '/', '@' or '#', up to "]", unless escaped
_TAG = re.compile(r"(?<!\\)\[[a-zA-Z#/@][^\[\]]*\]")


@pytest.fixture(autouse=True)
def _wide_help(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # rich's width: at 80 columns it cuts long words of the help short ("…")


def _help(*command: str) -> str:
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    return re.sub(r"[\s│]+", " ", result.output)  # one line: rich wraps the text and frames the options


def _commands(cmd: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from _commands(sub, (*path, name))


def test_no_help_text_is_taken_for_rich_markup() -> None:
    # `pip install -e .[train]` showed as `pip install -e .`: a bracket that rich takes for a tag must be escaped
    lost = [(" ".join(path) or "cxrtriage", name, m.group())
            for path, cmd in _commands(typer.main.get_command(app))
            for name, text in [("help", cmd.help or ""), *((p.name or "", getattr(p, "help", None) or "")
                                                           for p in cmd.params)]
            for m in _TAG.finditer(text)]
    assert not lost, f"escape these brackets (\\[) in the help text: {lost}"


def test_train_help_gives_the_readme_install_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "pip install -e '.[train]'" in readme
    assert "pip install -e '.[train]'" in _help("train")
    text = _help("models", "import")
    assert "[preprocessing] recipe fields" in text and "labels = [...]" in text


def test_predict_help_lists_every_exit_status_the_command_can_end_with() -> None:
    text = _help("predict")
    status = text[text.index("Exit status:"):]
    for code in (errors.EXIT_OK, errors.EXIT_FAILED_INPUTS, errors.InputError.exit_code, errors.ModelError.exit_code,
                 errors.ConfigError.exit_code, errors.OutputError.exit_code, errors.EXIT_INTERNAL_ERROR):
        assert re.search(rf"\b{code}\b", status), code
    for sig in _STOP_SIGNALS:  # each signal the CLI turns into 128 + its number (cxrtriage.cli.render)
        name = signal.Signals(sig).name
        assert re.search(rf"\b{errors.EXIT_INTERRUPTED + sig} [^,;]*\b{name}\b", status), name
    assert "--device that cannot run here with --strict-device" in status  # exit 4, as in the README's table
    assert "Stop (exit 4) when --device cannot run here" in text


@pytest.mark.parametrize("command", [("predict",), ("serve",), ("watch",)])
def test_heatmaps_help_says_what_is_written(command: tuple[str, ...]) -> None:
    text = _help(*command)
    helptext = text[text.index("--heatmaps "):text.index("--heatmap-method")]
    # the overlay: a JPEG with the hook's panel size; the raw map beside it: float16 at the hook's map size
    assert f"OUT/{HEATMAP_DIR}/<stem>__<label>__<method>.jpg" in helptext and ".png" not in helptext
    assert f"each at most {OVERLAY_SIDE} px on the long side" in helptext
    assert "<stem>__<label>__<method>.npy (float16, 0..1, the image's shape scaled to at most " \
           f"{MAP_SIDE} px on the long side" in helptext
