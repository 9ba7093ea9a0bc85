"""`cxrtriage train classifier|segmenter`: reproducible training recipes (needs the `train` extra: torch)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

train_app = typer.Typer(help="Train the default models from ../shared/data (PyTorch; install with `pip install -e .[train]`).",
                        no_args_is_help=True)

_DATA = typer.Option(Path("../shared/data"), "--data", help="Data root holding nih14/, kermany224/, ieee_lungs/.")
_EPOCHS = typer.Option(None, "--epochs", min=1, help="Override the recipe's number of epochs.")
_SEED = typer.Option(0, "--seed", help="Seed for splits, initialisation, sampling and augmentation.")
_TINY = typer.Option(False, "--tiny", help="Smoke run: a handful of real images, 1 epoch, small input size.")
_OUT_CLS = typer.Option(Path("models/cxr-classifier"), "--out", help="Model folder to write.")
_OUT_SEG = typer.Option(Path("models/lung-segmenter"), "--out", help="Model folder to write.")
_LOG = typer.Option(None, "--log", help="Progress log file (default: OUT/train_log.txt).")


def _check(data: Path) -> None:
    from cxrtriage.errors import ConfigError

    for sub in ("nih14", "kermany224", "ieee_lungs"):
        if not (data / sub).is_dir():
            raise ConfigError(f"{data / sub}: training data folder not found; pass --data pointing at the shared data root")
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise ConfigError("PyTorch is not installed; install the training extra: pip install -e '.[train]'")


@train_app.command("classifier")
def classifier(
    data: Path = _DATA,
    out: Path = _OUT_CLS,
    epochs: int | None = _EPOCHS,
    seed: int = _SEED,
    tiny: bool = _TINY,
    log: Path | None = _LOG,
) -> None:
    """Train the multi-label classifier; writes model.onnx, manifest.json, MODEL_CARD.md, splits/ and plots to OUT."""
    from cxrtriage.cli.render import console

    _check(data)
    from cxrtriage.train.classifier import train_classifier

    t0 = time.time()
    manifest = train_classifier(data, out, epochs=epochs, seed=seed, tiny=tiny, log_file=log)
    console.print(f"wrote {manifest} (wall time {time.time() - t0:.0f} s)")


@train_app.command("segmenter")
def segmenter(
    data: Path = _DATA,
    out: Path = _OUT_SEG,
    epochs: int | None = _EPOCHS,
    seed: int = _SEED,
    tiny: bool = _TINY,
    log: Path | None = _LOG,
) -> None:
    """Train the right/left lung U-Net; writes model.onnx, manifest.json, MODEL_CARD.md and splits/ to OUT."""
    from cxrtriage.cli.render import console

    _check(data)
    from cxrtriage.train.segmenter import train_segmenter

    t0 = time.time()
    manifest = train_segmenter(data, out, epochs=epochs, seed=seed, tiny=tiny, log_file=log)
    console.print(f"wrote {manifest} (wall time {time.time() - t0:.0f} s)")


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
