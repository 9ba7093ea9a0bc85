"""Training data tables (one row per image), patient-level splits, label mapping and a preprocessed-array cache.

Images are read with ``cxrtriage.io.raster.read_raster`` and preprocessed with
``cxrtriage.preprocess.to_model_input`` — the exact path used at inference. The cache holds the
preprocessed arrays as float16 ``.npy`` files outside the repository (``/tmp`` by default).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from cxrtriage.errors import ConfigError
from cxrtriage.files import atomic_output
from cxrtriage.io.raster import read_raster
from cxrtriage.preprocess import PreprocessRecipe, to_model_input
from cxrtriage.preprocess.apply import from_original
from cxrtriage.train.lungcrop import crop_image

log = logging.getLogger(__name__)

NIH_FINDINGS = ("Infiltration", "Atelectasis", "Nodule", "Effusion", "Consolidation", "Mass", "Pleural_Thickening",
                "Cardiomegaly", "Fibrosis", "Pneumothorax", "Emphysema", "Pneumonia", "Hernia", "Edema")
MIN_POSITIVES = 40  # an NIH finding becomes a model label only with >= this many positive patients (see MODEL_CARD)


def snake(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


@dataclass(slots=True)
class Record:
    """One image: path relative to the data root, its patient, source, labels (absent = undefined) and metadata."""

    path: str
    source: str
    patient: str
    labels: dict[str, int]
    sex: str = ""
    age: float | None = None
    view: str = ""
    mask: str = ""
    split: str = ""
    extra: dict[str, str] = field(default_factory=dict)


def _age_band(age: float | None, source: str) -> str:
    if source == "kermany224":
        return "1-5 (pediatric)"
    if age is None or not math.isfinite(age):
        return "unknown"
    if age < 18:
        return "<18"
    if age < 40:
        return "18-39"
    if age < 60:
        return "40-59"
    if age < 75:
        return "60-74"
    return "75+"


def age_band(r: Record) -> str:
    return _age_band(r.age, r.source)


def view_group(r: Record) -> str:
    v = r.view.upper()
    if v.startswith("AP"):
        return "AP"
    if v.startswith("PA"):
        return "PA"
    return "unknown"


def _float(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None


def classifier_labels(data_root: Path) -> tuple[str, ...]:
    """``abnormal``, ``pneumonia`` and every NIH finding with >= MIN_POSITIVES positives, most frequent first."""
    counts = dict.fromkeys(NIH_FINDINGS, 0)
    with open(data_root / "nih14" / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            for k in NIH_FINDINGS:
                counts[k] += int(row[k])
    kept = [snake(k) for k, n in sorted(counts.items(), key=lambda kv: -kv[1]) if n >= MIN_POSITIVES and k != "Pneumonia"]
    return ("abnormal", "pneumonia", *kept)


def nih_positive_counts(data_root: Path) -> dict[str, int]:
    counts = dict.fromkeys((*NIH_FINDINGS, "no_finding"), 0)
    with open(data_root / "nih14" / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            for k in counts:
                counts[k] += int(row[k])
    return counts


def load_nih(data_root: Path, labels: Sequence[str]) -> list[Record]:
    out = []
    with open(data_root / "nih14" / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            lab = {"abnormal": 1 - int(row["no_finding"])}
            for k in NIH_FINDINGS:
                if snake(k) in labels:
                    lab[snake(k)] = int(row[k])
            out.append(Record(path=f"nih14/{row['image']}", source="nih14", patient=f"nih14:{row['patient_id']}", labels=lab,
                              sex=row["sex"], age=_float(row["age"]), view=row["view"]))
    return out


_KERMANY_PATIENT = re.compile(r"^(person\d+|NORMAL2-IM-\d+|IM-\d+)")


def load_kermany(data_root: Path) -> list[Record]:
    """Pediatric pneumonia: defines ``pneumonia`` and ``abnormal`` (= pneumonia); NIH findings are undefined."""
    out = []
    with open(data_root / "kermany224" / "labels.csv", newline="") as f:
        for row in csv.DictReader(f):
            name = Path(row["image"]).name
            m = _KERMANY_PATIENT.match(name)
            if not m:
                raise ConfigError(f"kermany224/labels.csv: cannot read a patient id from '{name}'")
            y = 1 if row["label"] == "PNEUMONIA" else 0
            out.append(Record(path=f"kermany224/{row['image']}", source="kermany224", patient=f"kermany224:{m.group(1)}",
                              labels={"abnormal": y, "pneumonia": y},
                              extra={"published_split": row["split"], "subtype": row["pneumonia_subtype_from_filename"]}))
    return out


IEEE_PNEUMONIA = {"COVID-19": 1, "Pneumocystis": 1, "No Finding": 0}  # ARDS: pneumonia undefined (masked)


def load_ieee(data_root: Path) -> list[Record]:
    """Adult (mostly COVID-19) CXRs: abnormal = any finding, pneumonia for COVID-19/Pneumocystis; with lung masks."""
    out = []
    with open(data_root / "ieee_lungs" / "metadata.csv", newline="") as f:
        for row in csv.DictReader(f):
            finding = row["finding"]
            lab = {"abnormal": 0 if finding == "No Finding" else 1}
            if finding in IEEE_PNEUMONIA:
                lab["pneumonia"] = IEEE_PNEUMONIA[finding]
            out.append(Record(path=f"ieee_lungs/{row['image']}", source="ieee_lungs", patient=f"ieee_lungs:{row['patientid']}",
                              labels=lab, sex=row["sex"], age=_float(row["age"]), view=row["view"],
                              mask=f"ieee_lungs/{row['lung_mask']}" if row["lung_mask"] else "",
                              extra={"finding": finding}))
    return out


def _split_patients(records: list[Record], fractions: tuple[float, float, float], seed: int,
                    strat: Callable[[Record], int] | None = None) -> None:
    """Assign train/val/test by patient (all images of a patient share a split), stratified if asked."""
    by_patient: dict[str, list[Record]] = {}
    for r in records:
        by_patient.setdefault(r.patient, []).append(r)
    groups: dict[int, list[str]] = {}
    for pid, rs in sorted(by_patient.items()):
        key = max(strat(r) for r in rs) if strat else 0
        groups.setdefault(key, []).append(pid)
    rng = np.random.default_rng(seed)
    for _key, pids in sorted(groups.items()):
        pids = list(pids)
        rng.shuffle(pids)
        n = len(pids)
        n_test = round(n * fractions[2])
        n_val = round(n * fractions[1])
        for i, pid in enumerate(pids):
            split = "test" if i < n_test else "val" if i < n_test + n_val else "train"
            for r in by_patient[pid]:
                r.split = split


def classifier_records(data_root: Path, seed: int = 0) -> tuple[tuple[str, ...], list[Record]]:
    """All classifier records with patient-level splits.

    NIH and ieee: 60/20/20 by patient (NIH stratified by no_finding). Kermany: the published test
    split is the test set; 10% of the published training patients (stratified) are validation.
    """
    labels = classifier_labels(data_root)
    nih = load_nih(data_root, labels)
    _split_patients(nih, (0.6, 0.2, 0.2), seed, strat=lambda r: r.labels["abnormal"])
    ker = load_kermany(data_root)
    ker_test = [r for r in ker if r.extra["published_split"] == "test"]
    ker_train = [r for r in ker if r.extra["published_split"] == "train"]
    for r in ker_test:
        r.split = "test"
    _split_patients(ker_train, (0.9, 0.1, 0.0), seed, strat=lambda r: r.labels["pneumonia"])
    leaked = {r.patient for r in ker_test} & {r.patient for r in ker_train}
    if leaked:  # a patient in both published splits: keep them out of training (test integrity first)
        log.warning("kermany224: %d patient ids occur in both published splits; their training images are dropped", len(leaked))
        ker_train = [r for r in ker_train if r.patient not in leaked]
    ieee = load_ieee(data_root)
    _split_patients(ieee, (0.6, 0.2, 0.2), seed, strat=lambda r: r.labels["abnormal"])
    return labels, nih + ker_train + ker_test + ieee


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


def segmenter_records(data_root: Path, seed: int = 0) -> list[Record]:
    """ieee_lungs images that have a lung mask, with the classifier's ieee patient split (60/20/20)."""
    recs = load_ieee(data_root)
    _split_patients(recs, (0.6, 0.2, 0.2), seed, strat=lambda r: r.labels["abnormal"])
    return [r for r in recs if r.mask]


def patient_folds(records: Sequence[Record], k: int, seed: int = 0,
                  strat: Callable[[Record], int] | None = None) -> dict[str, int]:
    """Patient id → fold 0..k-1 (all images of a patient in one fold); patients are shuffled with ``seed`` within
    each ``strat`` group and dealt out in turn, so that folds differ in size by at most one patient per group."""
    if k < 2:
        raise ConfigError(f"cross-validation needs at least 2 folds, got {k}")
    by_patient: dict[str, list[Record]] = {}
    for r in records:
        by_patient.setdefault(r.patient, []).append(r)
    if len(by_patient) < k:
        raise ConfigError(f"{len(by_patient)} patients cannot fill {k} folds; use fewer folds")
    groups: dict[int, list[str]] = {}
    for pid, rs in sorted(by_patient.items()):
        groups.setdefault(max(strat(r) for r in rs) if strat else 0, []).append(pid)
    rng = np.random.default_rng(seed)
    fold: dict[str, int] = {}
    offset = 0
    for _key, pids in sorted(groups.items()):
        pids = list(pids)
        rng.shuffle(pids)
        for i, pid in enumerate(pids):
            fold[pid] = (offset + i) % k
        offset += len(pids)  # the next group continues the rotation, so small groups do not all start at fold 0
    return fold


def fold_records(records: Sequence[Record], folds: Mapping[str, int], held_out: int, *, val_fraction: float,
                 seed: int = 0, strat: Callable[[Record], int] | None = None) -> list[Record]:
    """Copies of ``records`` for one cross-validation fold: the held-out fold's patients become "test", and
    ``val_fraction`` of the other patients (by patient, stratified like the recipe's split) become "val" for
    checkpoint selection; the rest "train". Order is kept (so the array cache is shared by all folds)."""
    out = [replace(r, labels=dict(r.labels), extra=dict(r.extra)) for r in records]
    rest = [r for r in out if folds[r.patient] != held_out]
    _split_patients(rest, (1.0 - val_fraction, val_fraction, 0.0), seed, strat=strat)
    for r in out:
        if folds[r.patient] == held_out:
            r.split = "test"
    return out


def write_splits(records: Sequence[Record], path: Path) -> None:
    """CSV of relative image paths, patient ids, source and split (lists only — never image data)."""
    with atomic_output(path) as f:
        w = csv.writer(f)
        w.writerow(["path", "patient_id", "source", "split"])
        for r in sorted(records, key=lambda r: (r.split, r.path)):
            w.writerow([r.path, r.patient.split(":", 1)[1], r.source, r.split])


# ---------------------------------------------------------------- lung masks


def split_lungs(mask: np.ndarray) -> np.ndarray:
    """Binary lung mask → label map 0 background, 1 right lung (IMAGE LEFT), 2 left lung (IMAGE RIGHT).

    The two largest connected components are the lungs; the one whose centroid lies further to
    the image left is the patient's right lung (standard PA/AP display). Smaller fragments join
    the side of the nearer lung centroid. Raises ValueError when fewer than two components exist.
    """
    import cv2

    binary = (mask > 0).astype(np.uint8)
    n, lab, stats, cent = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if n < 3:
        raise ValueError(f"expected two lung components, found {n - 1}")
    order = 1 + np.argsort(-stats[1:, cv2.CC_STAT_AREA])
    a, b = int(order[0]), int(order[1])
    right, left = (a, b) if cent[a][0] < cent[b][0] else (b, a)
    out = np.zeros(mask.shape, dtype=np.uint8)
    for comp in range(1, n):
        cx = cent[comp][0]
        side = 1 if abs(cx - cent[right][0]) <= abs(cx - cent[left][0]) else 2
        out[lab == comp] = side
    return out


# ---------------------------------------------------------------- cache


# Part of every cache key: the inputs are made with OpenCV's one-pass area resize (`to_model_input(...,
# opencv_area=True)`). Caches made between 2026-12-05 04:36 and this change held the sparse-product resize's inputs,
# one float16 step apart on ~1 pixel in 10,000; their keys lack this, so they are never read again.
_INPUTS = "opencv-area"


def _recipe_key(recipe: PreprocessRecipe, extra: str = "") -> str:
    return hashlib.sha256((json.dumps(recipe.to_dict(), sort_keys=True) + extra + _INPUTS).encode()).hexdigest()[:16]


def _prep_one(args: tuple[str, str, dict[str, object], bool, tuple[int, int, int, int] | None]
              ) -> tuple[np.ndarray, np.ndarray | None]:
    root, rel, rdict, with_mask, box = args
    recipe = PreprocessRecipe.from_dict(rdict)
    image = read_raster(Path(root) / rel)
    if box is not None:
        if with_mask:
            raise ConfigError("lung-cropped inputs are for the classifier; segmenter training reads whole images")
        image = crop_image(image, box)
    mi = to_model_input(image, recipe, opencv_area=True)  # as the shipped models were trained: reproducible
    mask_arr = None
    if with_mask:
        import cv2

        mrel = rel.replace("images/", "masks/").rsplit(".", 1)[0] + ".png"
        m = cv2.imread(str(Path(root) / mrel), cv2.IMREAD_GRAYSCALE)
        if m is None or m.shape != image.shape:
            raise ConfigError(f"{mrel}: lung mask missing or not the size of its image")
        sides = split_lungs(m).astype(np.float32)
        mask_arr = from_original(sides, mi.geometry, nearest=True).astype(np.uint8)
    return mi.array[0].astype(np.float16), mask_arr


def cached_arrays(data_root: Path, records: Sequence[Record], recipe: PreprocessRecipe, *, masks: bool = False,
                  cache_dir: Path | None = None, workers: int = 2,
                  boxes: Mapping[str, tuple[int, int, int, int] | None] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Preprocessed inputs [N, S, S] float16 (and label maps [N, S, S] uint8 when ``masks``), cached on disk.

    ``boxes`` (relative path → (y0, x0, h, w) or None) cuts each image to that region before the recipe (the
    lung-crop experiment, `cxrtriage.train.lungcrop`); None everywhere, or no ``boxes``, reads whole images.
    """
    cache_dir = Path(cache_dir or os.environ.get("CXRTRIAGE_TRAIN_CACHE", "/tmp/cxrtriage_train_cache"))
    paths = [r.path for r in records]
    crops: list[tuple[int, int, int, int] | None] = [
        (int(b[0]), int(b[1]), int(b[2]), int(b[3])) if (b := (boxes or {}).get(p)) is not None else None for p in paths]
    # the boxes join the key only when given, so that the caches of whole-image runs keep their names
    key = _recipe_key(recipe, json.dumps(paths) + str(masks) + str(data_root.resolve())
                      + (json.dumps(crops) if boxes is not None else ""))
    xf, mf = cache_dir / f"{key}_x.npy", cache_dir / f"{key}_m.npy"
    if xf.is_file() and (not masks or mf.is_file()):
        log.info("cache hit %s", xf)
        return np.load(xf), (np.load(mf) if masks else None)
    cache_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(str(data_root), p, recipe.to_dict(), masks, c) for p, c in zip(paths, crops, strict=True)]
    if workers > 1 and len(jobs) > 50:
        with ProcessPoolExecutor(workers) as ex:
            res = list(ex.map(_prep_one, jobs, chunksize=32))
    else:
        res = [_prep_one(j) for j in jobs]
    x = np.stack([r[0] for r in res])
    m = np.stack([r[1] for r in res]) if masks else None  # type: ignore[misc]
    # atomic: two trainings started together (scripts/segmenter_cv.py runs recipes in parallel) may both fill the
    # same entry, and neither may read the other's half-written file; the inputs go first, so both exist => both whole
    with atomic_output(xf, "wb") as f:
        np.save(f, x)
    if masks and m is not None:
        with atomic_output(mf, "wb") as f:
            np.save(f, m)
    return x, m
