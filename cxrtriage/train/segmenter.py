"""Training recipe for the default lung segmenter (compact U-Net, right/left lung) on ieee_lungs masks."""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from cxrtriage.errors import ConfigError
from cxrtriage.files import atomic_write
from cxrtriage.io.raster import read_raster
from cxrtriage.model.manifest import SCHEMA_VERSION, sha256_file
from cxrtriage.preprocess import PreprocessRecipe, to_model_input
from cxrtriage.preprocess.apply import to_original
from cxrtriage.train.augment import affine_heavy, photometric_heavy
from cxrtriage.train.common import cosine_lr, file_logger, log, random_affine, random_intensity, seed_everything
from cxrtriage.train.data import Record, cached_arrays, segmenter_records, split_lungs, write_splits
from cxrtriage.train.evaluation import dice, dice_summary
from cxrtriage.train.export import export_onnx
from cxrtriage.train.nets import UNet

SEG_LABELS = ("background", "right_lung", "left_lung")
# The default recipe since 1.1.0 (candidate E of issue 15, chosen by a pre-registered patient cross-validation; see
# models/lung-segmenter/experiments.md): two U-Nets trained on the same split, their class probabilities averaged.
# Each member is the SegmenterConfig with these fields replaced: "basic" is the 1.0.0 recipe, "heavy" candidate B.
ENSEMBLE_MEMBERS: tuple[tuple[str, dict[str, Any]], ...] = (("basic", {}), ("heavy", {"aug": "heavy", "epochs": 120}))


@dataclass(frozen=True, slots=True)
class SegmenterConfig:
    size: int = 256
    epochs: int = 60
    batch: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 2.0
    base: int = 16
    stem_stride: int = 2
    seed: int = 0
    tiny: bool = False
    aug: str = "basic"  # "basic": the 1.0.0 recipe; "heavy": augment.affine_heavy + photometric_heavy (issue 15 trials)

    @classmethod
    def tiny_config(cls, seed: int = 0) -> SegmenterConfig:
        return cls(size=64, epochs=1, batch=4, base=4, seed=seed, tiny=True)

    def recipe(self) -> PreprocessRecipe:
        return PreprocessRecipe(size=self.size)


def build_unet(cfg: dict[str, Any]) -> UNet:
    return UNet(int(cfg["n_classes"]), int(cfg["base"]), int(cfg["stem_stride"]))


class MeanProbability(torch.nn.Module):
    """Several segmenters as one: their class probabilities averaged. Returns log(mean probability), which are valid
    logits (softmax gives the mean back, argmax picks the same class), so every user of ``masks`` is unchanged."""

    def __init__(self, members: list[UNet]) -> None:
        super().__init__()
        if not members:
            raise ConfigError("an ensemble needs at least one member model")
        self.members = torch.nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = _channel_softmax(self.members[0](x))
        for m in self.members[1:]:
            total = total + _channel_softmax(m(x))
        # the floor keeps log finite where every member is certain; far below any probability argmax could pick
        return (total / len(self.members)).clamp_min(1e-7).log()


def _channel_softmax(z: torch.Tensor) -> torch.Tensor:
    """Softmax over the class axis written out (max, exp, sum): the same values as ``z.softmax(1)``, but onnxruntime
    runs its Softmax over a non-last axis through transposes, which cost 38 ms per batch of 8 at 256 px (as much as a
    third of a U-Net); these element-wise operations take a few."""
    e = (z - z.amax(1, keepdim=True)).exp()
    return e / e.sum(1, keepdim=True)


@torch.no_grad()
def predict_masks(model: UNet, x: np.ndarray, batch: int = 8) -> np.ndarray:
    model.eval()
    out = [model(torch.from_numpy(x[i : i + batch].astype(np.float32))[:, None]).argmax(1).numpy().astype(np.uint8)
           for i in range(0, len(x), batch)]
    return np.concatenate(out)


def _dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    prob = logits.softmax(1)[:, 1:]
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()[:, 1:]
    inter = (prob * onehot).sum((2, 3))
    denom = prob.sum((2, 3)) + onehot.sum((2, 3))
    return 1 - ((2 * inter + 1) / (denom + 1)).mean()


def _mean_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([np.mean([dice(p, t, k) for k in (1, 2)]) for p, t in zip(pred, truth, strict=True)]))


def resolve_config(*, epochs: int | None = None, seed: int = 0, tiny: bool = False, config: SegmenterConfig | None = None,
                   aug: str | None = None, size: int | None = None) -> SegmenterConfig:
    """The recipe: ``config`` (or the default/tiny one for ``seed``) with ``epochs``/``aug``/``size`` overriding it."""
    cfg = config or (SegmenterConfig.tiny_config(seed) if tiny else SegmenterConfig(seed=seed))
    overrides = {k: v for k, v in (("epochs", epochs), ("aug", aug), ("size", size)) if v is not None}
    if overrides:
        cfg = SegmenterConfig(**{**asdict(cfg), **overrides})
    if cfg.aug not in ("heavy", "basic"):
        raise ConfigError(f"segmenter aug must be 'heavy' or 'basic', got {cfg.aug!r}")
    return cfg


def member_configs(base: SegmenterConfig) -> list[tuple[str, SegmenterConfig]]:
    """The ensemble's members (`ENSEMBLE_MEMBERS`) over ``base`` (its seed, size...); a tiny base keeps its epoch."""
    out = []
    for name, fields in ENSEMBLE_MEMBERS:
        over = {k: v for k, v in fields.items() if not (base.tiny and k == "epochs")}
        out.append((name, resolve_config(config=SegmenterConfig(**{**asdict(base), **over}))))
    return out


def train_segmenter(data_root: Path, out: Path, *, epochs: int | None = None, seed: int = 0, tiny: bool = False,
                    log_file: Path | None = None, config: SegmenterConfig | None = None, aug: str | None = None,
                    size: int | None = None, single: bool = False) -> Path:
    """Train, export and evaluate the default recipe (the `ENSEMBLE_MEMBERS`), or with ``single`` one U-Net:
    ``config`` replaces its recipe, ``epochs``/``aug``/``size`` override it.

    Raises:
        ConfigError: a single U-Net's recipe is changed without ``single``, or the recipe is invalid.
    """
    t0 = time.time()
    if not single and (config is not None or any(v is not None for v in (epochs, aug, size))):
        raise ConfigError("--epochs/--aug/--size change the recipe of one U-Net: add --single (the default recipe "
                          f"trains the {len(ENSEMBLE_MEMBERS)} members of the ensemble, each with its own settings)")
    cfg = resolve_config(epochs=epochs, seed=seed, tiny=tiny, config=config, aug=aug, size=size)
    out.mkdir(parents=True, exist_ok=True)
    handler = file_logger(log_file or (out / "train_log.txt"))
    # CXRTRIAGE_TRAIN_THREADS: fewer threads when the machine is shared (results may differ in the last bits)
    g = seed_everything(cfg.seed, threads=int(os.environ.get("CXRTRIAGE_TRAIN_THREADS", "2")))
    records = segmenter_records(data_root, seed=cfg.seed)
    if tiny:
        records = [r for s in ("train", "val", "test") for r in [x for x in records if x.split == s][:3]]
    if single:
        fit_segmenter(data_root, out, records, cfg, g, t0=t0)
    else:
        fit_ensemble(data_root, out, records, cfg, t0=t0)
    manifest = finalize_segmenter(data_root, out, records=records)
    log.info("finalized %s, total wall %.0fs", manifest, time.time() - t0)
    log.removeHandler(handler)
    return manifest


def fit_segmenter(data_root: Path, out: Path, records: list[Record], cfg: SegmenterConfig, g: torch.Generator, *,
                  t0: float | None = None) -> dict[str, Any]:
    """Train on the records whose split is "train", keep the best epoch by Dice on "val"; writes model.pt,
    train_config.json and splits/splits.csv in ``out`` and returns what train_config.json holds.

    ``records`` carry their splits (the recipe's patient split, or a cross-validation fold's, see
    scripts/segmenter_cv.py); "test" records are never read here except into the shared array cache.
    ``g`` comes from ``seed_everything(cfg.seed)`` called just before, so that a run is reproducible.
    """
    t0 = time.time() if t0 is None else t0
    write_splits(records, out / "splits" / "splits.csv")
    recipe = cfg.recipe()
    log.info("segmenter: %d images, config %s", len(records), asdict(cfg))
    x_all, m_all = cached_arrays(data_root, records, recipe, masks=True)
    assert m_all is not None
    split = np.array([r.split for r in records])
    tr, va = np.where(split == "train")[0], np.where(split == "val")[0]
    model = UNet(len(SEG_LABELS), cfg.base, cfg.stem_stride)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(1, int(np.ceil(len(tr) / cfg.batch)))
    total, warm = steps * cfg.epochs, int(cfg.warmup_epochs * steps)
    rng = np.random.default_rng(cfg.seed)
    best, best_state, best_epoch, history, step = -1.0, None, 0, [], 0
    for ep in range(cfg.epochs):
        te = time.time()
        model.train()
        idx = rng.permutation(tr)
        losses = []
        for b in range(steps):
            bi = idx[b * cfg.batch : (b + 1) * cfg.batch]
            xb = torch.from_numpy(x_all[bi].astype(np.float32))[:, None]
            yb = torch.from_numpy(m_all[bi].astype(np.int64))
            if cfg.aug == "heavy":
                xb, yb2 = affine_heavy(xb, yb, g)
                xb = photometric_heavy(xb, g)
            else:
                xb, yb_basic = random_affine(xb, g, rot_deg=10, scale=0.12, shift=0.06, extra=yb)
                assert yb_basic is not None
                xb, yb2 = random_intensity(xb, g), yb_basic
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, total, cfg.lr, warm)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb2) + _dice_loss(logits, yb2)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
        score = _mean_dice(predict_masks(model, x_all[va]), m_all[va]) if len(va) else float("nan")
        history.append({"epoch": ep + 1, "loss": float(np.mean(losses)), "val_dice": score, "seconds": time.time() - te})
        log.info("epoch %d/%d loss %.4f val Dice %.4f (%.0fs, total %.0fs)", ep + 1, cfg.epochs, np.mean(losses), score,
                 time.time() - te, time.time() - t0)
        if best_state is None or (np.isfinite(score) and score > best):
            best, best_epoch = (score if np.isfinite(score) else best), ep + 1
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    assert best_state is not None
    torch.save({"config": model.config, "state_dict": best_state}, out / "model.pt")
    info = {"config": asdict(cfg), "labels": list(SEG_LABELS), "best_epoch": best_epoch, "best_val_dice": best,
            "history": history, "train_seconds": round(time.time() - t0, 1), "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "preprocessing": recipe.to_dict()}
    atomic_write(out / "train_config.json", json.dumps(info, indent=2))
    log.info("training done: best epoch %d (val Dice %.4f), %.0fs", best_epoch, best, time.time() - t0)
    return info


def fit_ensemble(data_root: Path, out: Path, records: list[Record], base: SegmenterConfig, *,
                 t0: float | None = None) -> dict[str, Any]:
    """Train each member of `ENSEMBLE_MEMBERS` exactly as `fit_segmenter` trains it alone (seeded afresh), then write
    one model.pt holding every member, train_config.json and splits/splits.csv in ``out``."""
    t0 = time.time() if t0 is None else t0
    threads = int(os.environ.get("CXRTRIAGE_TRAIN_THREADS", "2"))
    members: list[dict[str, Any]] = []
    weights: list[dict[str, Any]] = []
    work = out / "members"
    for name, cfg in member_configs(base):
        log.info("ensemble member %r: %s", name, asdict(cfg))
        g = seed_everything(cfg.seed, threads=threads)
        info = fit_segmenter(data_root, work / name, records, cfg, g)
        ckpt = torch.load(work / name / "model.pt", map_location="cpu", weights_only=True)
        weights.append({"name": name, "config": ckpt["config"], "state_dict": ckpt["state_dict"]})
        members.append({"name": name, **{k: info[k] for k in ("config", "best_epoch", "best_val_dice", "history",
                                                                "train_seconds")}})
    shutil.rmtree(work)  # everything the members wrote is in the files below
    write_splits(records, out / "splits" / "splits.csv")
    torch.save({"members": weights}, out / "model.pt")
    info = {"config": asdict(base), "ensemble": "mean of the members' class probabilities (MeanProbability)",
            "members": members, "labels": list(SEG_LABELS), "best_epoch": [m["best_epoch"] for m in members],
            "train_seconds": round(time.time() - t0, 1), "torch": torch.__version__, "threads": threads,
            "preprocessing": base.recipe().to_dict()}
    atomic_write(out / "train_config.json", json.dumps(info, indent=2))
    return info


def load_segmenter(out: Path) -> torch.nn.Module:
    """The PyTorch model saved in ``out`` (model.pt) by `fit_segmenter` (a UNet) or `fit_ensemble` (a
    MeanProbability of UNets), in eval mode."""
    ckpt = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    nets = []
    for part in ckpt.get("members", [ckpt]):
        net = build_unet(part["config"])
        net.load_state_dict(part["state_dict"])
        nets.append(net.eval())
    return (MeanProbability(nets) if "members" in ckpt else nets[0]).eval()


def architecture(out: Path) -> dict[str, Any]:
    """The manifest's ``architecture`` of the model saved in ``out``."""
    ckpt = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    if "members" in ckpt:
        return {"name": "MeanProbability", "combines": "mean of the members' softmax, returned as its log",
                "members": [{"name": "UNet", "recipe": m["name"], **m["config"]} for m in ckpt["members"]]}
    return {"name": "UNet", **ckpt["config"]}


def eval_original(model: torch.nn.Module, data_root: Path, recs: list[Record],
                  recipe: PreprocessRecipe) -> dict[str, list[float]]:
    """Dice at the ORIGINAL image size: the predicted label map mapped back with to_original vs the true mask."""
    import cv2

    res: dict[str, list[float]] = {"lungs": [], "right_lung": [], "left_lung": []}
    for r in recs:
        image = read_raster(data_root / r.path)
        mi = to_model_input(image, recipe, opencv_area=True)  # the training inputs' resize (see to_model_input)
        with torch.no_grad():
            logits = model(torch.from_numpy(mi.array[None]))[0].numpy()
        pred = to_original(logits.argmax(0).astype(np.float32), mi.geometry, nearest=True).astype(np.uint8)
        raw = cv2.imread(str(data_root / r.mask), cv2.IMREAD_GRAYSCALE)
        if raw is None:
            raise ValueError(f"{data_root / r.mask}: lung mask could not be read")
        truth = split_lungs(raw)
        res["right_lung"].append(dice(pred, truth, 1))
        res["left_lung"].append(dice(pred, truth, 2))
        res["lungs"].append(dice((pred > 0).astype(np.uint8), (truth > 0).astype(np.uint8), 1))
    return res


def write_segmenter_card(out: Path) -> Path:
    """(Re)render MODEL_CARD.md from an existing manifest.json, train_config.json and experiments.md (no retraining,
    no re-export, no evaluation)."""
    from cxrtriage.train.card import segmenter_card

    experiments = out / "experiments.md"
    path = out / "MODEL_CARD.md"
    atomic_write(path, segmenter_card(json.loads((out / "manifest.json").read_text()),
                                      json.loads((out / "train_config.json").read_text()), {},
                                      experiments.read_text() if experiments.is_file() else None))
    return path


def finalize_segmenter(data_root: Path, out: Path, *, records: list[Record] | None = None) -> Path:
    from cxrtriage.train.card import segmenter_card
    from cxrtriage.train.finalize import run_speed_benchmark, write_manifest

    info = json.loads((out / "train_config.json").read_text())
    cfg = info["config"]
    tiny = bool(cfg["tiny"])
    recipe = PreprocessRecipe.from_dict(info["preprocessing"])
    if records is None:
        records = segmenter_records(data_root, seed=int(cfg["seed"]))
        if tiny:
            records = [r for s in ("train", "val", "test") for r in [x for x in records if x.split == s][:3]]
    model = load_segmenter(out)
    ensemble = "members" in info
    onnx_path = out / "model.onnx"
    export_onnx(model, onnx_path, recipe.size, ("masks",))
    dice_metrics: dict[str, Any] = {}
    per_image: dict[str, Any] = {}
    for s in ("val", "test"):
        recs = [r for r in records if r.split == s]
        if not recs:
            continue
        d = eval_original(model, data_root, recs, recipe)
        dice_metrics[s] = {k: dice_summary(v) for k, v in d.items()}
        per_image[s] = d
    speed = None if tiny else run_speed_benchmark(onnx_path, batch=8)
    counts = {s: sum(r.split == s for r in records) for s in ("train", "val", "test")}
    data: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "name": "lung-segmenter" if not tiny else "lung-segmenter-tiny",
        "version": ("1.1.0" if ensemble else "1.0.0") if not tiny else "0.0.1-tiny",
        "task": "segmentation",
        "onnx_file": "model.onnx",
        "sha256": sha256_file(onnx_path),
        "input": {"name": "image", "shape": [None, 1, recipe.size, recipe.size]},
        "labels": list(SEG_LABELS),
        "outputs": {"masks": "masks"},
        "preprocessing": recipe.to_dict(),
        "intended_use": ("Research and decision support: lung field masks (patient's right and left lung) for measurements "
                         "and for limiting attention maps to the lungs. Not a diagnostic device; review every mask."),
        "training_data": ("ieee covid-chestxray images with v7labs human lung masks (adults, mostly COVID-19; "
                          f"{len(records)} masked images); patient-level splits in splits/splits.csv"),
        "metrics": {"dice": dice_metrics, "speed": speed or {}, "onnx_mb": round(onnx_path.stat().st_size / 1e6, 2),
                    "images": counts},
        "model_card": "MODEL_CARD.md",
        "label_definition": ("right_lung = the connected mask component on the IMAGE LEFT (patient's right in a standard "
                             "PA/AP display), left_lung = the one on the image right; derived from the single 0/255 "
                             "lung mask by connected components (two largest components; fragments join the nearer lung)."),
        "output_semantics": ("masks = per-class logits [N, 3, S, S]" + (
            " (the log of the members' mean class probability)" if ensemble else "")
            + "; argmax over classes gives the label map"),
        "architecture": architecture(out),
        "training": ({"members": [{"name": m["name"], "aug": m["config"]["aug"], "epochs": m["config"]["epochs"],
                                   "best_epoch": m["best_epoch"]} for m in info["members"]]} if ensemble
                     else {"best_epoch": info["best_epoch"], "epochs": cfg["epochs"]})
                    | {"seed": cfg["seed"], "train_seconds": info["train_seconds"]},
    }
    path = write_manifest(out, data)
    experiments = out / "experiments.md"
    atomic_write(out / "MODEL_CARD.md", segmenter_card(data, info, per_image,
                                                      experiments.read_text() if experiments.is_file() else None))
    return path
