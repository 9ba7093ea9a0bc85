"""Training recipe for the default multi-label CXR classifier (SlimResNet, GAP + one linear head)."""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from cxrtriage.errors import ConfigError
from cxrtriage.evaluate.metrics import auroc
from cxrtriage.files import atomic_write
from cxrtriage.preprocess import PreprocessRecipe
from cxrtriage.train.common import cosine_lr, file_logger, log, random_affine, random_intensity, seed_everything
from cxrtriage.train.data import Record, cached_arrays, classifier_records, label_matrix, tiny_subset, write_splits
from cxrtriage.train.finalize import finalize_classifier
from cxrtriage.train.lungcrop import LungCrop, lung_boxes
from cxrtriage.train.nets import SlimResNet, predict_logits
from cxrtriage.train.nets import build_model as build_model  # re-exported: it lived here and callers import it from here


@dataclass(frozen=True, slots=True)
class ClassifierConfig:
    """Every knob of the recipe (saved beside the model as train_config.json)."""

    size: int = 224
    epochs: int = 20
    samples_per_epoch: int = 2400
    source_share: tuple[tuple[str, float], ...] = (("kermany224", 0.5), ("nih14", 0.4), ("ieee_lungs", 0.1))
    batch: int = 32
    lr: float = 2e-3
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    widths: tuple[int, ...] = (32, 64, 128, 256)
    depths: tuple[int, ...] = (1, 1, 2, 1)
    stem: int = 24
    dropout: float = 0.2
    seed: int = 0
    tiny: bool = False
    init_from: str | None = None  # checkpoint (model.pt) to fine-tune from; None = train from scratch
    select_by: str = "mean"  # "mean" (mean val AUROC over source/label pairs) or "SOURCE:LABEL" (one val AUROC)
    lung_crop: str | None = None  # segmenter (folder or model.onnx) whose lung box, widened, crops every image first
    lung_crop_margin: float = 0.1  # share of the lung box's height / width added on each side

    @classmethod
    def tiny_config(cls, seed: int = 0) -> ClassifierConfig:
        return cls(size=64, epochs=1, samples_per_epoch=32, batch=8, widths=(8, 16, 32, 64), depths=(1, 1, 1, 1), stem=8,
                   seed=seed, tiny=True)

    def recipe(self) -> PreprocessRecipe:
        return PreprocessRecipe(size=self.size)


SOURCES = ("nih14", "kermany224", "ieee_lungs")


def parse_source_shares(text: str) -> tuple[tuple[str, float], ...]:
    """``"nih14=0.7,ieee_lungs=0.15,kermany224=0.15"`` → ((source, share), ...); shares must sum to 1."""
    out: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, val = part.partition("=")
        name = name.strip()
        try:
            share = float(val) if sep else float("nan")
        except ValueError:
            share = float("nan")
        if name not in SOURCES or not math.isfinite(share) or share < 0 or name in out:
            raise ConfigError(f"--source-shares: bad item {part!r}; write SOURCE=SHARE with SOURCE one of {list(SOURCES)} "
                              "(each once) and SHARE a number >= 0, e.g. nih14=0.7,ieee_lungs=0.15,kermany224=0.15")
        out[name] = share
    if not out or abs(sum(out.values()) - 1.0) > 1e-3:
        raise ConfigError(f"--source-shares: shares {out} must sum to 1 (they sum to {sum(out.values()):.3f}); fix the numbers")
    return tuple(out.items())


def check_selection(select_by: str, labels: tuple[str, ...]) -> None:
    """``select_by`` is "mean" or "SOURCE:LABEL" with a known source and a model label."""
    if select_by == "mean":
        return
    src, _, lab = select_by.partition(":")
    if src not in SOURCES or lab not in labels:
        raise ConfigError(f"--select-by {select_by!r}: write 'mean' or SOURCE:LABEL with SOURCE one of {list(SOURCES)} "
                          f"and LABEL one of {list(labels)}, e.g. nih14:abnormal")


def check_splits_match(records: list[Record], splits_csv: Path) -> int:
    """Every image listed in the checkpoint's ``splits.csv`` must have the same split now (no test patient trained on).

    Returns the number of rows checked; raises ConfigError on the first mismatch or a missing file.
    """
    if not splits_csv.is_file():
        raise ConfigError(f"{splits_csv}: the --init-from checkpoint has no splits/splits.csv beside it, so its patient "
                          "splits cannot be checked; fine-tune only from a model folder written by `cxrtriage train classifier`")
    now = {r.path: r.split for r in records}
    n = 0
    with open(splits_csv, newline="") as f:
        for row in csv.DictReader(f):
            if now.get(row["path"]) != row["split"]:
                raise ConfigError(f"{splits_csv}: image {row['path']} is in split {row['split']!r} there but "
                                  f"{now.get(row['path'])!r} now; use the same --seed and data as the checkpoint's run")
            n += 1
    return n


def save_checkpoint(config: dict[str, Any], state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """Write a classifier's model.pt: its architecture ``config`` and weights (what `load_init` and the export read)."""
    torch.save({"config": config, "state_dict": state_dict}, path)


def load_init(model: SlimResNet, path: Path) -> None:
    """Load a model.pt state_dict into ``model``; its architecture config must match exactly."""
    if not path.is_file():
        raise ConfigError(f"--init-from {path}: file not found; pass a model.pt written by `cxrtriage train classifier`")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "config" not in ckpt or "state_dict" not in ckpt:
        raise ConfigError(f"--init-from {path}: not a cxrtriage classifier checkpoint (needs 'config' and 'state_dict')")
    want = {k: list(v) if isinstance(v, tuple) else v for k, v in model.config.items()}
    got = {k: list(v) if isinstance(v, tuple) else v for k, v in ckpt["config"].items()}
    if want != got:
        raise ConfigError(f"--init-from {path}: architecture {got} differs from this recipe's {want}; use a checkpoint of "
                          "the same recipe (--tiny checkpoints only fit --tiny runs)")
    model.load_state_dict(ckpt["state_dict"])


def selection_score(logits: np.ndarray, y: np.ndarray, sources: np.ndarray, labels: tuple[str, ...],
                    select_by: str = "mean") -> float:
    """Mean validation AUROC over (source, label) pairs with >= 5 positives and >= 5 negatives.

    ``select_by="SOURCE:LABEL"`` gives that single pair's AUROC instead (NaN when it lacks either class).
    """
    if select_by != "mean":
        src, _, lab = select_by.partition(":")
        yy = y[sources == src, labels.index(lab)]
        ok = np.isfinite(yy)
        if not (yy[ok] == 1).any() or not (yy[ok] == 0).any():
            return float("nan")
        return float(auroc(yy[ok], logits[sources == src, labels.index(lab)][ok]))
    vals = []
    for src in np.unique(sources):
        m = sources == src
        for j in range(len(labels)):
            yy = y[m, j]
            ok = np.isfinite(yy)
            if (yy[ok] == 1).sum() >= 5 and (yy[ok] == 0).sum() >= 5:
                vals.append(auroc(yy[ok], logits[m, j][ok]))
    return float(np.mean(vals)) if vals else float("nan")


def train_classifier(data_root: Path, out: Path, *, epochs: int | None = None, seed: int = 0, tiny: bool = False,
                     log_file: Path | None = None, lr: float | None = None, warmup_epochs: float | None = None,
                     source_shares: tuple[tuple[str, float], ...] | None = None, init_from: Path | None = None,
                     select_by: str = "mean", lung_crop: Path | None = None, lung_crop_margin: float = 0.1,
                     size: int | None = None) -> Path:
    """Train, pick the best epoch on validation, save model.pt and the split lists; then export (finalize).

    Defaults reproduce the shipped recipe. ``init_from`` fine-tunes from an existing model.pt (its splits.csv must
    match this run's splits); ``source_shares`` sets the per-epoch sampling mix; ``select_by`` picks the validation
    metric for checkpoint selection ("mean" or e.g. "nih14:abnormal"). ``lung_crop`` (a segmenter) cuts every image
    to its lung bounding box widened by ``lung_crop_margin`` per side before preprocessing (issue 15 experiment: the
    manifest written does not describe this step and `predict` does not apply it, so the model is for measurement).
    ``size`` overrides the input size (e.g. 320 for the issue 15 resolution experiment; the network is fully
    convolutional with global average pooling, so only the cost changes).
    """
    t0 = time.time()
    cfg = ClassifierConfig.tiny_config(seed) if tiny else ClassifierConfig(seed=seed)
    overrides: dict[str, Any] = {"select_by": select_by}
    if epochs is not None:
        overrides["epochs"] = epochs
    if lr is not None:
        if not lr > 0:
            raise ConfigError(f"--lr {lr}: the learning rate must be > 0")
        overrides["lr"] = lr
    if warmup_epochs is not None:
        if warmup_epochs < 0:
            raise ConfigError(f"--warmup-epochs {warmup_epochs}: must be >= 0")
        overrides["warmup_epochs"] = warmup_epochs
    if source_shares is not None:
        overrides["source_share"] = tuple(source_shares)
    if init_from is not None:
        overrides["init_from"] = str(init_from)
    if size is not None:
        if not 32 <= size <= 1024:
            raise ConfigError(f"--size {size}: the input size must be within 32..1024 pixels")
        overrides["size"] = size
    if lung_crop is not None:
        if not 0.0 <= lung_crop_margin <= 1.0:
            raise ConfigError(f"--lung-crop-margin {lung_crop_margin}: must be within 0..1 (a share of the lung box)")
        LungCrop(str(lung_crop), lung_crop_margin)  # refuses a missing segmenter before any folder is written
        overrides["lung_crop"] = str(lung_crop)
        overrides["lung_crop_margin"] = lung_crop_margin
    cfg = ClassifierConfig(**{**asdict(cfg), **overrides})
    if init_from is not None and init_from.resolve().parent == out.resolve():
        raise ConfigError(f"--out {out}: is the folder of the --init-from checkpoint; write the fine-tuned model elsewhere")
    out.mkdir(parents=True, exist_ok=True)
    handler = file_logger(log_file or (out / "train_log.txt"))
    try:
        # CXRTRIAGE_TRAIN_THREADS: fewer threads when the machine is shared (as for the segmenter; results may differ
        # in the last bits, so the count is recorded in train_config.json)
        g = seed_everything(cfg.seed, threads=int(os.environ.get("CXRTRIAGE_TRAIN_THREADS", "2")))
        labels, records = classifier_records(data_root, seed=cfg.seed)
        check_selection(cfg.select_by, labels)
        if init_from is not None:
            n_checked = check_splits_match(records, init_from.parent / "splits" / "splits.csv")
            log.info("init checkpoint %s: its splits.csv (%d images) matches this run's patient splits", init_from, n_checked)
        if cfg.tiny:
            records = tiny_subset(records)
        write_splits(records, out / "splits" / "splits.csv")
        recipe = cfg.recipe()
        log.info("classifier: %d images, labels %s, config %s", len(records), labels, asdict(cfg))
        boxes = None
        if cfg.lung_crop is not None:
            crop = LungCrop(cfg.lung_crop, cfg.lung_crop_margin)
            boxes = lung_boxes(data_root, [r.path for r in records], crop)
            log.info("lung crop: boxes from %s (margin %.2f) in %.0fs; the manifest written does not describe this "
                     "step, so predict will not apply it", crop.segmenter_onnx(), crop.margin, time.time() - t0)
        x_all, _ = cached_arrays(data_root, records, recipe, boxes=boxes)
        log.info("preprocessed/cached %d images in %.0fs", len(records), time.time() - t0)
        y_all = label_matrix(records, labels)
        split = np.array([r.split for r in records])
        source = np.array([r.source for r in records])
        tr, va = np.where(split == "train")[0], np.where(split == "val")[0]

        model = SlimResNet(len(labels), cfg.widths, cfg.depths, cfg.stem, cfg.dropout)
        init_val: dict[str, float] | None = None
        if init_from is not None:
            load_init(model, init_from)
            lv0 = predict_logits(model, x_all[va])
            init_val = {"val_score": selection_score(lv0, y_all[va], source[va], labels, cfg.select_by),
                        "val_mean": selection_score(lv0, y_all[va], source[va], labels)}
            log.info("epoch 0 (init checkpoint): val %s %.4f, val mean AUROC %.4f", cfg.select_by, init_val["val_score"],
                     init_val["val_mean"])
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps_per_epoch = max(1, cfg.samples_per_epoch // cfg.batch)
        total = steps_per_epoch * cfg.epochs
        warm = int(cfg.warmup_epochs * steps_per_epoch)
        rng = np.random.default_rng(cfg.seed)
        pools = {s: tr[source[tr] == s] for s, _ in cfg.source_share}
        best_epoch = 0
        best, best_state, history = -1.0, None, []
        step = 0
        for ep in range(cfg.epochs):
            te = time.time()
            idx = np.concatenate([rng.choice(pools[s], int(round(share * cfg.samples_per_epoch)), replace=True)
                                  for s, share in cfg.source_share if len(pools[s])])
            rng.shuffle(idx)
            model.train()
            losses = []
            for b in range(steps_per_epoch):
                bi = idx[b * cfg.batch : (b + 1) * cfg.batch]
                if len(bi) == 0:
                    break
                xb = torch.from_numpy(x_all[bi].astype(np.float32))[:, None]
                yb = torch.from_numpy(y_all[bi])
                xb, _ = random_affine(xb, g)
                xb = random_intensity(xb, g)
                for group in opt.param_groups:
                    group["lr"] = cosine_lr(step, total, cfg.lr, warm)
                logits, _feats = model(xb)
                mask = torch.isfinite(yb)
                loss = F.binary_cross_entropy_with_logits(logits[mask], yb[mask])
                opt.zero_grad()
                loss.backward()
                opt.step()
                losses.append(float(loss.detach()))
                step += 1
            lv = predict_logits(model, x_all[va])
            score = selection_score(lv, y_all[va], source[va], labels, cfg.select_by)
            val_mean = score if cfg.select_by == "mean" else selection_score(lv, y_all[va], source[va], labels)
            history.append({"epoch": ep + 1, "loss": float(np.mean(losses)), "val_score": score, "val_mean": val_mean,
                            "seconds": time.time() - te})
            log.info("epoch %d/%d loss %.4f val %s %.4f, val mean AUROC %.4f (%.0fs, total %.0fs)", ep + 1, cfg.epochs,
                     np.mean(losses), cfg.select_by, score, val_mean, time.time() - te, time.time() - t0)
            if not np.isfinite(score) or score > best:
                best = score if np.isfinite(score) else best
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                best_epoch = ep + 1
        assert best_state is not None
        save_checkpoint(model.config, best_state, out / "model.pt")
        train_seconds = time.time() - t0
        atomic_write(out / "train_config.json", json.dumps({
            "config": asdict(cfg), "labels": list(labels), "best_epoch": best_epoch, "best_val_score": best,
            "history": history, "init_val": init_val, "train_seconds": round(train_seconds, 1), "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "preprocessing": recipe.to_dict(),
        }, indent=2))
        log.info("training done: best epoch %d (val %.4f), %.0fs", best_epoch, best, train_seconds)
        manifest = finalize_classifier(data_root, out, records=records, x_all=x_all)
        log.info("finalized %s, total wall %.0fs", manifest, time.time() - t0)
    finally:  # also on error: later runs in this process must not keep writing to this log
        log.removeHandler(handler)
        handler.close()
    return manifest
