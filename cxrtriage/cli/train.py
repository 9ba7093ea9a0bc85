"""`cxrtriage train classifier|segmenter`: reproducible training recipes (needs the `train` extra: torch)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import typer

# --help is rich markup: "[train]" is escaped, or it is taken for a style tag and vanishes
train_app = typer.Typer(help="Train the default models from ../shared/data (needs the train extra, PyTorch: "
                             "pip install -e '.\\[train]').",
                        no_args_is_help=True)

_DATA = typer.Option(Path("../shared/data"), "--data", help="Data root holding nih14/, kermany224/, ieee_lungs/.")
_EPOCHS = typer.Option(None, "--epochs", min=1, help="Override the recipe's number of epochs.")
_SEED = typer.Option(0, "--seed", help="Seed for splits, initialisation, sampling and augmentation.")
_TINY = typer.Option(False, "--tiny", help="Smoke run: a handful of real images, 1 epoch, small input size.")
DEFAULT_CLS_OUT = Path("models/cxr-classifier")
DEFAULT_SEG_OUT = Path("models/lung-segmenter")
_NEW_OUT = ("Model folder to write. Default: {0} in the current folder, but only while it holds no model: run from the "
            "project root, that is the shipped model, which training replaces only when --out names it on purpose.")
_NEW_CLS = typer.Option(None, "--out", help=_NEW_OUT.format(DEFAULT_CLS_OUT), show_default=False)
_NEW_SEG = typer.Option(None, "--out", help=_NEW_OUT.format(DEFAULT_SEG_OUT), show_default=False)
_OUT_CLS = typer.Option(DEFAULT_CLS_OUT, "--out", help="Model folder to write.")
_MODEL_DIR = typer.Option(Path("models/cxr-classifier"), "--model",
                          help="Model folder (manifest.json, model.onnx, splits/splits.csv) to update.")
_LOG = typer.Option(None, "--log", help="Progress log file (default: OUT/train_log.txt).")
_LR = typer.Option(None, "--lr", help="Override the peak learning rate (default: the recipe's 0.002; e.g. 0.0005 to fine-tune).")
_WARMUP = typer.Option(None, "--warmup-epochs", help="Override the linear warm-up length in epochs (default 1.0).")
_SHARES = typer.Option(None, "--source-shares",
                       help="Per-epoch sampling shares, e.g. nih14=0.7,ieee_lungs=0.15,kermany224=0.15 (must sum to 1; "
                            "default kermany224=0.5,nih14=0.4,ieee_lungs=0.1).")
_INIT = typer.Option(None, "--init-from",
                     help="Fine-tune from this model.pt (e.g. models/cxr-classifier/model.pt); its splits/splits.csv must "
                          "match this run's patient splits. Default: train from scratch.")
_SELECT = typer.Option("mean", "--select-by",
                       help="Validation metric that picks the best epoch: 'mean' (mean AUROC over source/label pairs) or "
                            "SOURCE:LABEL, e.g. nih14:abnormal. Never the test split.")
_LUNG_CROP = typer.Option(None, "--lung-crop",
                          help="Experiment (issue 15): crop every image to the lung bounding box this segmenter finds "
                               "(a model folder such as models/lung-segmenter, or its model.onnx) before preprocessing. "
                               "predict does not apply this step yet, so such a model is for measurement only.")
_SIZE = typer.Option(None, "--size", help="Override the recipe's input size in pixels (default 224; e.g. 320 to measure "
                                           "whether adult findings gain from detail).")
_LUNG_MARGIN = typer.Option(0.1, "--lung-crop-margin", help="With --lung-crop: share of the lung box's height and width "
                                                            "added on each side (default 0.1).")


def new_model_folder(out: Path | None, default: Path) -> Path:
    """The folder a training run writes: ``--out`` as given, else ``default`` while it holds no model.

    Why: the default is the shipped model's folder when run from the project root, and a training run there would
    replace the shipped model (weights, manifest, card) without anyone having asked for it. An explicit ``--out`` is
    taken as given: the documented recipe rebuilds the shipped models with ``--out models/<name>``.
    """
    from cxrtriage.errors import ConfigError

    if out is not None:
        return out
    found = [n for n in ("manifest.json", "model.onnx", "model.pt") if (default / n).exists()]
    if found:
        raise ConfigError(
            f"{default.resolve()}: holds a model already ({', '.join(found)}), which training without --out would "
            f"replace; pass --out with a new folder (e.g. --out {default.parent / (default.name + '-retrained')}), or "
            f"--out {default} to replace that model on purpose"
        )
    return default


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
    out: Path | None = _NEW_CLS,
    epochs: int | None = _EPOCHS,
    seed: int = _SEED,
    tiny: bool = _TINY,
    log: Path | None = _LOG,
    lr: float | None = _LR,
    warmup_epochs: float | None = _WARMUP,
    source_shares: str | None = _SHARES,
    init_from: Path | None = _INIT,
    select_by: str = _SELECT,
    lung_crop: Path | None = _LUNG_CROP,
    lung_crop_margin: float = _LUNG_MARGIN,
    size: int | None = _SIZE,
) -> None:
    """Train the multi-label classifier; writes model.onnx, manifest.json, MODEL_CARD.md, splits/ and plots to OUT."""
    from cxrtriage.cli.render import console, exit_on_error

    with exit_on_error():
        out = new_model_folder(out, DEFAULT_CLS_OUT)
        _check(data)
    from cxrtriage.train.classifier import parse_source_shares, train_classifier

    shares = parse_source_shares(source_shares) if source_shares is not None else None
    t0 = time.time()
    manifest = train_classifier(data, out, epochs=epochs, seed=seed, tiny=tiny, log_file=log, lr=lr,
                                warmup_epochs=warmup_epochs, source_shares=shares, init_from=init_from, select_by=select_by,
                                lung_crop=lung_crop, lung_crop_margin=lung_crop_margin, size=size)
    console.print(f"wrote {manifest} (wall time {time.time() - t0:.0f} s)")


@train_app.command("operating-points")
def operating_points(
    data: Path = _DATA,
    model: Path = _MODEL_DIR,
) -> None:
    """Recompute a trained classifier's per-population label validation and study-level operating points without
    retraining: its ONNX model scores the validation and test images of its patient splits exactly as `predict`
    does; the manifest is updated (and re-sealed) and MODEL_CARD.md re-rendered. The training recipe runs the same
    step, so the result is what a retrain with the same weights would write."""
    from cxrtriage.train.operating import add_operating_points

    _recompute(add_operating_points, data, model)


@train_app.command("population-estimate")
def population_estimate(
    data: Path = _DATA,
    model: Path = _MODEL_DIR,
) -> None:
    """Recompute a trained classifier's population estimate from the image (pediatric vs adult) without retraining:
    its ONNX model computes the pooled feature maps of every image of its patient splits exactly as `predict` does; a
    logistic regression is fitted on the train split, its threshold set on the validation split and its figures
    measured on the test split; the manifest's population_estimate section is rewritten (and re-sealed) and
    MODEL_CARD.md re-rendered. About 1-2 minutes on one CPU core."""
    from cxrtriage.train.population import add_population_estimate

    _recompute(add_population_estimate, data, model)


def _recompute(step: Callable[[Path, Path], Path], data: Path, model: Path) -> None:
    """Run one manifest-recomputing ``step`` of the training recipe on a trained classifier, then re-render its card."""
    from cxrtriage.cli.render import console, exit_on_error

    with exit_on_error():
        _check(data)
        from cxrtriage.train.finalize import write_classifier_card

        t0 = time.time()
        manifest = step(data, model)
        card = write_classifier_card(data, model)
        console.print(f"wrote {manifest} and {card} (wall time {time.time() - t0:.0f} s)")


@train_app.command("segmenter")
def segmenter(
    data: Path = _DATA,
    out: Path | None = _NEW_SEG,
    epochs: int | None = _EPOCHS,
    seed: int = _SEED,
    tiny: bool = _TINY,
    log: Path | None = _LOG,
    aug: str | None = typer.Option(None, "--aug", help="Override the augmentation: 'basic' (the 1.0.0 recipe) or 'heavy' "
                                   "(acquisition-like artefacts and stronger geometry, see the model card)."),
    size: int | None = typer.Option(None, "--size", min=64, help="Override the input size in pixels (default 256)."),
    single: bool = typer.Option(False, "--single", help="Train one U-Net (the 1.0.0 recipe, which --epochs/--aug/--size "
                                "change) instead of the default two-member ensemble."),
) -> None:
    """Train the right/left lung segmenter; writes model.onnx, manifest.json, MODEL_CARD.md and splits/ to OUT.

    The default recipe trains two U-Nets on the same split (the 1.0.0 recipe, and one with heavy augmentation for
    120 epochs) and exports them as one model that averages their class probabilities: ~25 min on 2 cores."""
    from cxrtriage.cli.render import console, exit_on_error

    with exit_on_error():
        out = new_model_folder(out, DEFAULT_SEG_OUT)
        _check(data)
    from cxrtriage.train.segmenter import train_segmenter

    t0 = time.time()
    manifest = train_segmenter(data, out, epochs=epochs, seed=seed, tiny=tiny, log_file=log, aug=aug, size=size,
                               single=single)
    console.print(f"wrote {manifest} (wall time {time.time() - t0:.0f} s)")


@train_app.command("reference")
def reference(
    data: Path = _DATA,
    out: Path = _OUT_CLS,
) -> None:
    """Recompute a trained classifier's validation score distribution (the manifest's `reference`, which
    `cxrtriage monitor` compares results with) without retraining. Leaves manifest.json unsealed: check and
    re-seal it with `cxrtriage models seal OUT`."""
    from cxrtriage.cli.render import console, exit_on_error

    with exit_on_error():
        _check(data)
        from cxrtriage.train.finalize import add_reference

        t0 = time.time()
        path = add_reference(data, out)
    console.print(f"wrote the reference into {path} ({time.time() - t0:.0f} s); it is NOT sealed: run "
                  f"`cxrtriage models seal {out} --dry-run`, then `cxrtriage models seal {out}`", highlight=False)


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
