"""Training recipe for the default multi-label CXR classifier (SlimResNet, GAP + one linear head)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from cxrtriage.evaluate.metrics import auroc
from cxrtriage.preprocess import PreprocessRecipe
from cxrtriage.train.common import cosine_lr, file_logger, log, random_affine, random_intensity, seed_everything
from cxrtriage.train.data import Record, cached_arrays, classifier_records, write_splits
from cxrtriage.train.nets import SlimResNet


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

    @classmethod
    def tiny_config(cls, seed: int = 0) -> ClassifierConfig:
        return cls(size=64, epochs=1, samples_per_epoch=32, batch=8, widths=(8, 16, 32, 64), depths=(1, 1, 1, 1), stem=8,
                   seed=seed, tiny=True)

    def recipe(self) -> PreprocessRecipe:
        return PreprocessRecipe(size=self.size)


def tiny_subset(records: list[Record], per_group: int = 3) -> list[Record]:
    """A handful of real images per (source, split), with both classes where possible (for --tiny)."""
    out: list[Record] = []
    for src in ("nih14", "kermany224", "ieee_lungs"):
        for split in ("train", "val", "test"):
            rs = [r for r in records if r.source == src and r.split == split]
            pos = [r for r in rs if r.labels.get("abnormal") == 1][:per_group]
            neg = [r for r in rs if r.labels.get("abnormal") == 0][:per_group]
            out += pos + neg
    return out


def label_matrix(records: list[Record], labels: tuple[str, ...]) -> np.ndarray:
    """[N, L] float32 with 1/0 where defined and NaN where the source does not define the label."""
    y = np.full((len(records), len(labels)), np.nan, dtype=np.float32)
    for i, r in enumerate(records):
        for j, lab in enumerate(labels):
            if lab in r.labels:
                y[i, j] = r.labels[lab]
    return y


def build_model(cfg: dict[str, Any]) -> SlimResNet:
    """Rebuild the network from the ``config`` stored in model.pt."""
    return SlimResNet(int(cfg["n_labels"]), tuple(cfg["widths"]), tuple(cfg["depths"]), int(cfg["stem"]), float(cfg["dropout"]))


@torch.no_grad()
def predict_logits(model: SlimResNet, x: np.ndarray, batch: int = 64) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(x), batch):
        xb = torch.from_numpy(x[i : i + batch].astype(np.float32))[:, None]
        out.append(model(xb)[0].numpy())
    return np.concatenate(out) if out else np.zeros((0, model.head.out_features), np.float32)


def selection_score(logits: np.ndarray, y: np.ndarray, sources: np.ndarray, labels: tuple[str, ...]) -> float:
    """Mean validation AUROC over (source, label) pairs with >= 5 positives and >= 5 negatives."""
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
                     log_file: Path | None = None) -> Path:
    """Train, pick the best epoch on validation, save model.pt and the split lists; then export (finalize)."""
    t0 = time.time()
    cfg = ClassifierConfig.tiny_config(seed) if tiny else ClassifierConfig(seed=seed)
    if epochs is not None:
        cfg = ClassifierConfig(**{**asdict(cfg), "epochs": epochs})
    out.mkdir(parents=True, exist_ok=True)
    handler = file_logger(log_file or (out / "train_log.txt"))
    g = seed_everything(cfg.seed)
    labels, records = classifier_records(data_root, seed=cfg.seed)
    if cfg.tiny:
        records = tiny_subset(records)
    write_splits(records, out / "splits" / "splits.csv")
    recipe = cfg.recipe()
    log.info("classifier: %d images, labels %s, config %s", len(records), labels, asdict(cfg))
    x_all, _ = cached_arrays(data_root, records, recipe)
    log.info("preprocessed/cached %d images in %.0fs", len(records), time.time() - t0)
    y_all = label_matrix(records, labels)
    split = np.array([r.split for r in records])
    source = np.array([r.source for r in records])
    tr, va = np.where(split == "train")[0], np.where(split == "val")[0]

    model = SlimResNet(len(labels), cfg.widths, cfg.depths, cfg.stem, cfg.dropout)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, cfg.samples_per_epoch // cfg.batch)
    total = steps_per_epoch * cfg.epochs
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    rng = np.random.default_rng(cfg.seed)
    pools = {s: tr[source[tr] == s] for s, _ in cfg.source_share}
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
        score = selection_score(lv, y_all[va], source[va], labels)
        history.append({"epoch": ep + 1, "loss": float(np.mean(losses)), "val_score": score, "seconds": time.time() - te})
        log.info("epoch %d/%d loss %.4f val mean AUROC %.4f (%.0fs, total %.0fs)", ep + 1, cfg.epochs, np.mean(losses), score,
                 time.time() - te, time.time() - t0)
        if not np.isfinite(score) or score > best:
            best = score if np.isfinite(score) else best
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best_epoch = ep + 1
    assert best_state is not None
    torch.save({"config": model.config, "state_dict": best_state}, out / "model.pt")
    train_seconds = time.time() - t0
    (out / "train_config.json").write_text(json.dumps({
        "config": asdict(cfg), "labels": list(labels), "best_epoch": best_epoch, "best_val_score": best,
        "history": history, "train_seconds": round(train_seconds, 1), "torch": torch.__version__,
        "preprocessing": recipe.to_dict(),
    }, indent=2))
    log.info("training done: best epoch %d (val %.4f), %.0fs", best_epoch, best, train_seconds)
    from cxrtriage.train.finalize import finalize_classifier

    manifest = finalize_classifier(data_root, out, records=records, x_all=x_all)
    log.info("finalized %s, total wall %.0fs", manifest, time.time() - t0)
    log.removeHandler(handler)
    return manifest
