"""Bring your own model: turn an ONNX graph into a sealed model folder (manifest, model card skeleton, parity record).

Frameworks (torchxrayvision, PyTorch) export their graph with ``cxrtriage.train.byo`` and hand it here; a plain ONNX
file comes here directly. Nothing in this module needs torch. The GAP + linear head that makes Grad-CAM exact is
found in the graph (``detect_head``), and every import is checked by running cxrtriage's own preprocessing and
onnxruntime on real images (``onnx_logits``), to be compared with the framework's own logits.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from cxrtriage.errors import ConfigError, InputError, ModelError
from cxrtriage.files import atomic_write
from cxrtriage.io import read_image
from cxrtriage.model.manifest import LABEL_PATTERN, SCHEMA_VERSION, load_manifest, sha256_file, write_sealed_manifest
from cxrtriage.model.session import create_session
from cxrtriage.model.verify import open_checked_session
from cxrtriage.preprocess import PreprocessRecipe, to_model_input

IMAGE_SUFFIXES = (".dcm", ".png", ".jpg", ".jpeg", ".tif", ".tiff")
MAX_PARITY_IMAGES = 24  # per folder: enough to see a systematic difference, cheap enough for every import
UNVALIDATED = ("not validated locally: AUROC, operating points, calibration and subgroup results on your own data are "
               "unknown until `cxrtriage models validate` has run")


def label_name(text: str | None) -> str | None:
    """A framework's label as a manifest label: 'Pleural_Thickening' -> 'pleural_thickening', 'Lung Lesion' ->
    'lung_lesion'; an empty name (an untrained output) -> None (ignored)."""
    if text is None or not str(text).strip():
        return None
    name = re.sub(r"[^a-z0-9]+", "_", str(text).strip().lower()).strip("_")
    if not LABEL_PATTERN.fullmatch(name):
        raise ConfigError(f"label {text!r} cannot be made a label name (a-z, 0-9, _; at most 64 characters)")
    return name


def parse_labels(text: str) -> list[str | None]:
    """``--labels``: comma-separated names in output order, or ``@FILE`` with one per line; '' or '-' ignores an
    output."""
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            items = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(f"--labels {text}: cannot read {path} ({exc.strerror or exc})") from exc
    else:
        items = text.split(",")
    return [None if item.strip() in ("", "-") else label_name(item) for item in items]


@dataclass(frozen=True, slots=True)
class ImportSpec:
    """What the user (or the framework's catalogue) says about the model being imported."""

    name: str
    version: str
    task: str  # classification | segmentation
    labels: tuple[str | None, ...]  # output order; None = ignored output
    recipe: PreprocessRecipe
    source: str  # where the network came from, in words (framework, architecture, weights file and its sha256)
    logits_output: str = "logits"
    features_output: str | None = None
    operating_points: Mapping[str, float] = field(default_factory=dict)  # label -> threshold on the calibrated score
    calibration: Mapping[str, Any] | None = None  # manifest 'calibration' (e.g. op_norm with op_threshs)
    intended_use: str = ""
    training_data: str = ""
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ParityRow:
    """One image of the parity check: its logits through cxrtriage and through the framework (None: not readable
    there), and the largest difference."""

    image: str
    max_abs: float | None
    note: str = ""


@dataclass(frozen=True, slots=True)
class Parity:
    """What the parity check found: ``graph`` compares the ONNX graph with the framework on the same input tensors;
    ``pipeline`` compares cxrtriage's whole path (reading, preprocessing, onnxruntime) with the framework's own."""

    graph: tuple[ParityRow, ...] = ()
    pipeline: tuple[ParityRow, ...] = ()
    pipeline_name: str = ""
    note: str = ""  # what was checked instead, where there is nothing to compare with (a plain ONNX file)

    @staticmethod
    def summary(rows: Sequence[ParityRow]) -> tuple[float | None, float | None, int]:
        vals = [r.max_abs for r in rows if r.max_abs is not None]
        if not vals:
            return None, None, 0
        return max(vals), statistics.median(vals), len(vals)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, rows in (("graph", self.graph), ("pipeline", self.pipeline)):
            mx, med, n = self.summary(rows)
            if rows:
                out[key] = {"max_abs_logit_difference": mx, "median_abs_logit_difference": med, "images": n,
                            "not_compared": sum(r.max_abs is None for r in rows)}
        if self.pipeline_name:
            out["pipeline_compared_with"] = self.pipeline_name
        if self.note:
            out["note"] = self.note
        return out


# --------------------------------------------------------------------------- graph


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def _initializers(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    found = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    found[node.output[0]] = numpy_helper.to_array(attr.t)
    return found


_PASS_THROUGH = ("Flatten", "Reshape", "Squeeze", "Identity")


def detect_head(onnx_path: Path, logits: str, features: str) -> dict[str, Any]:
    """The manifest ``head`` of a graph whose ``logits`` are a linear layer over global average pooling of
    ``features``: Gemm, or MatMul with or without an Add (an exporter drops an all-zero bias), over
    GlobalAveragePool / ReduceMean(2, 3), through Flatten/Reshape/Squeeze. ``ModelError`` says what was found
    instead."""
    graph = onnx.load(str(onnx_path)).graph
    prod, inits = _producers(graph), _initializers(graph)
    node = prod.get(logits)
    bias: str | None = None
    if node is not None and node.op_type == "Add":
        a, b = node.input[0], node.input[1]
        bias = b if b in inits else a if a in inits else None
        node = prod.get(a if bias == b else b)
    if node is None or node.op_type not in ("Gemm", "MatMul"):
        raise ModelError(f"{onnx_path}: output '{logits}' is not made by a linear layer (Gemm or MatMul) over pooled "
                         f"features (found {node.op_type if node else 'a graph input'}); Grad-CAM needs a GAP + linear "
                         "head: import without --features (eigencam, scorecam and occlusion still work)")
    transposed = node.op_type == "MatMul"
    weight = node.input[1]
    if node.op_type == "Gemm":
        attrs = {a.name: a for a in node.attribute}
        transposed = not (attrs.get("transB") is not None and attrs["transB"].i == 1)
        if len(node.input) > 2 and node.input[2]:
            bias = node.input[2]
    if weight not in inits:
        raise ModelError(f"{onnx_path}: the head's weight '{weight}' is not a constant of the graph")
    pooled = prod.get(node.input[0])
    while pooled is not None and pooled.op_type in _PASS_THROUGH:
        pooled = prod.get(pooled.input[0])
    if pooled is None or pooled.op_type not in ("GlobalAveragePool", "ReduceMean"):
        raise ModelError(f"{onnx_path}: the head's input is not global average pooling (found "
                         f"{pooled.op_type if pooled else 'a graph input'})")
    def source(name: str) -> str:  # the tensor behind Identity nodes (an exporter may add one to name an output)
        node = prod.get(name)
        while node is not None and node.op_type == "Identity":
            name = node.input[0]
            node = prod.get(name)
        return name

    if source(pooled.input[0]) != source(features):
        raise ModelError(f"{onnx_path}: the head pools '{pooled.input[0]}', not the features output '{features}'")
    if bias is not None and bias in inits and not np.any(inits[bias]):
        bias = None  # an all-zero bias adds nothing; the manifest then names none
    return {"pooling": "gap", "weight": weight, "bias": bias, "transposed": transposed}


def graph_outputs(onnx_path: Path) -> tuple[str, list[str]]:
    """The graph's input name and its output names."""
    graph = onnx.load(str(onnx_path)).graph
    inits = {i.name for i in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise ModelError(f"{onnx_path}: the graph takes {len(inputs)} inputs {inputs}; a model takes one image tensor")
    return inputs[0], [o.name for o in graph.output]


# --------------------------------------------------------------------------- parity images


def parity_images(folders: Sequence[Path], *, limit: int = MAX_PARITY_IMAGES) -> list[Path]:
    """Image files (by suffix) under each folder (or the file itself), at most ``limit`` per folder, sorted."""
    out: list[Path] = []
    for folder in folders:
        if folder.is_file():
            out.append(folder)
            continue
        if not folder.is_dir():
            raise InputError(f"{folder}: parity image folder not found")
        found = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        out += found[:limit]
    return out


def onnx_logits(onnx_path: Path, input_name: str, logits_output: str, recipe: PreprocessRecipe,
                images: Sequence[Path]) -> dict[Path, np.ndarray | str]:
    """Each image's logits through cxrtriage's reading, the recipe and onnxruntime; the reason for an image that
    cxrtriage cannot read (a report, not an image)."""
    session = create_session(onnx_path, device="cpu", required_inputs=[input_name], required_outputs=[logits_output],
                             where=str(onnx_path))
    out: dict[Path, np.ndarray | str] = {}
    for path in images:
        try:
            x = to_model_input(read_image(path), recipe).array[None]
        except InputError as exc:
            out[path] = str(exc)
            continue
        (y,) = session.run([logits_output], {input_name: x})
        out[path] = np.asarray(y, np.float64)[0]
    return out


def compare(ours: Mapping[Path, np.ndarray | str], theirs: Mapping[Path, np.ndarray | str],
            root: Path | None = None) -> tuple[ParityRow, ...]:
    """Per image, the largest |logit difference| (None with the reason when either side could not score it)."""
    rows: list[ParityRow] = []
    for path, a in ours.items():
        b = theirs.get(path, "not run by the framework")
        name = str(path.relative_to(root)) if root is not None and path.is_relative_to(root) else str(path)
        if isinstance(a, str) or isinstance(b, str):
            rows.append(ParityRow(name, None, a if isinstance(a, str) else str(b)))
        else:
            rows.append(ParityRow(name, float(np.max(np.abs(np.asarray(a) - np.asarray(b))))))
    return tuple(rows)


# --------------------------------------------------------------------------- the model folder


def manifest_data(spec: ImportSpec, onnx_name: str, sha: str, input_name: str, head: Mapping[str, Any] | None,
                  parity: Parity) -> dict[str, Any]:
    labels = [lab for lab in spec.labels if lab is not None]
    outputs = {"logits" if spec.task == "classification" else "masks": spec.logits_output}
    if spec.features_output:
        outputs["features"] = spec.features_output
    data: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "name": spec.name, "version": spec.version, "task": spec.task,
        "onnx_file": onnx_name, "sha256": sha,
        "input": {"name": input_name, "shape": [None, 1, spec.recipe.size, spec.recipe.size]},
        "labels": list(spec.labels), "outputs": outputs, "preprocessing": spec.recipe.to_dict(),
    }
    if head is not None:
        data["head"] = dict(head)
    if spec.operating_points:
        data["thresholds"] = {lab: {"balanced": {"threshold": float(t)}} for lab, t in spec.operating_points.items()
                              if lab in labels}
    if spec.calibration:
        data["calibration"] = dict(spec.calibration)
    data["intended_use"] = spec.intended_use or ("imported by its user; decision support only. " + UNVALIDATED)
    data["training_data"] = spec.training_data or "not stated by the importer"
    data["metrics"] = {"validation": "none (" + UNVALIDATED + ")"}
    data["model_card"] = "MODEL_CARD.md"
    data["imported"] = {"source": spec.source, "date": dt.date.today().isoformat(), "parity": parity.to_json(),
                        "notes": list(spec.notes)}
    return data


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3g}"


def card_text(spec: ImportSpec, data: Mapping[str, Any], parity: Parity) -> str:
    """The model card skeleton: what is known at import, the parity figures, and what stays unknown."""
    labels = [lab for lab in spec.labels if lab is not None]
    ignored = [i for i, lab in enumerate(spec.labels) if lab is None]
    lines = [
        f"# Model card: {spec.name} {spec.version} (imported)", "",
        "> Decision support only, never autonomous diagnosis. This card was written by `cxrtriage models import`; "
        "the sections marked UNKNOWN stay unknown until the model is validated on local data "
        f"(`cxrtriage models validate {spec.name} IMAGES... --labels LABELS.csv --out DIR`).", "",
        "## Source", "", f"- {spec.source}", f"- ONNX sha256: `{data['sha256']}`", "",
        "## Labels", "", f"{len(labels)} labels in output order: {', '.join(labels)}.",
    ]
    if ignored:
        lines.append(f"Ignored outputs (no label, never scored): index {', '.join(map(str, ignored))}.")
    lines += ["", "## Preprocessing", "", "```json", str(data["preprocessing"]).replace("'", '"'), "```", ""]
    if spec.operating_points or spec.calibration:
        lines += ["## Operating points and calibration", ""]
        if spec.calibration:
            lines.append(f"- calibration: `{spec.calibration.get('method')}` (from the source)")
        if spec.operating_points:
            lines.append("- one operating point per label (`balanced`), from the source: "
                         + ", ".join(f"{k} {v:.3g}" for k, v in spec.operating_points.items()))
        lines.append("")
    lines += ["## Parity check at import", ""]
    if parity.note:
        lines += [parity.note, ""]
    for title, rows in (("ONNX graph vs the framework, same input tensor", parity.graph),
                        (f"cxrtriage's whole pipeline vs {parity.pipeline_name or 'the framework'}'s own",
                         parity.pipeline)):
        if not rows:
            continue
        mx, med, n = Parity.summary(rows)
        lines += [f"### {title}", "", f"max |logit difference| {_fmt(mx)}, median {_fmt(med)} over {n} image(s)", "",
                  "| image | max abs logit difference | note |", "|---|---|---|"]
        lines += [f"| {r.image} | {_fmt(r.max_abs)} | {r.note[:120]} |" for r in rows]
        lines.append("")
    if spec.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in spec.notes] + [""]
    lines += ["## Intended use", "", str(data["intended_use"]), "",
              "## Training data", "", str(data["training_data"]), "",
              "## Performance on local data", "", f"UNKNOWN: {UNVALIDATED}.", "",
              "## Limitations", "", "UNKNOWN until validated locally: subgroups, populations, calibration on this "
              "site's images, failure modes.", ""]
    return "\n".join(lines)


def write_model_folder(out: Path, onnx_path: Path, spec: ImportSpec, parity: Parity, *,
                       head: Mapping[str, Any] | None = None, force: bool = False) -> Path:
    """Copy the ONNX file into ``out`` (a new folder), write the sealed manifest and the card skeleton, and load the
    result back as every command will (sha256, seal, fields, graph). Returns the manifest path."""
    if out.exists() and any(out.iterdir()) and not force:
        raise ConfigError(f"{out}: the model folder exists and is not empty; choose another --out or pass --force")
    out.mkdir(parents=True, exist_ok=True)
    target = out / "model.onnx"
    if onnx_path.resolve() != target.resolve():
        shutil.copyfile(onnx_path, target)
    input_name, _ = graph_outputs(target)
    data = manifest_data(spec, target.name, sha256_file(target), input_name, head, parity)
    manifest = out / "manifest.json"
    write_sealed_manifest(manifest, data)
    atomic_write(out / "MODEL_CARD.md", card_text(spec, data, parity))
    open_checked_session(load_manifest(manifest))  # what was written loads, and agrees with its graph
    return manifest


def import_onnx(onnx_path: Path, out: Path, *, name: str, version: str, labels: Sequence[str | None],
                recipe: PreprocessRecipe, images: Sequence[Path], task: str = "classification",
                logits_output: str | None = None, features_output: str | None = None,
                operating_points: Mapping[str, float] | None = None, force: bool = False) -> Path:
    """A plain ONNX file: nothing is exported; its outputs are checked (the label count against the graph, the head
    when ``features_output`` is named) and it is run on the parity images through cxrtriage's preprocessing."""
    if not onnx_path.is_file():
        raise InputError(f"{onnx_path}: ONNX file not found")
    input_name, outputs = graph_outputs(onnx_path)
    main = logits_output or outputs[0]
    for what, value in (("--logits", main), ("--features", features_output)):
        if value is not None and value not in outputs:
            raise ConfigError(f"{what} {value}: the graph's outputs are {outputs}")
    head = detect_head(onnx_path, main, features_output) if features_output and task == "classification" else None
    files = parity_images(images)
    ran = onnx_logits(onnx_path, input_name, main, recipe, files) if task == "classification" else {}
    bad = [(p, y) for p, y in ran.items() if not isinstance(y, str) and y.shape != (len(labels),)]
    if bad:
        raise ConfigError(f"{onnx_path}: output '{main}' gives {bad[0][1].shape[0]} values per image, but --labels "
                          f"names {len(labels)} outputs (use '-' for an output to ignore)")
    spec = ImportSpec(name=name, version=version, task=task, labels=tuple(labels), recipe=recipe,
                      source=f"ONNX file {onnx_path.name} (sha256 {sha256_file(onnx_path)})", logits_output=main,
                      features_output=features_output, operating_points=dict(operating_points or {}))
    return write_model_folder(out, onnx_path, spec, Parity(note=plain_onnx_check(ran, len(labels), task)), head=head,
                              force=force)


def plain_onnx_check(ran: Mapping[Path, np.ndarray | str], n_outputs: int, task: str) -> str:
    """The card's parity section for a plain ONNX file: why nothing is compared, and what was checked instead."""
    why = ("None: a plain ONNX file is the model itself, so there is no source framework whose output cxrtriage's could "
           "be compared with (nothing was exported).")
    if task != "classification":
        return why + " The segmenter was not run on images at import; check its masks with `cxrtriage segment`."
    scored = {p: y for p, y in ran.items() if not isinstance(y, str)}
    finite = sum(bool(np.all(np.isfinite(y))) for y in scored.values())
    text = (f"{why} Checked instead: cxrtriage's reading, preprocessing and onnxruntime ran the graph on "
            f"{len(scored)} image(s), each giving {n_outputs} output(s), {finite} of them all finite.")
    unread = [f"{p.name} ({y})" for p, y in ran.items() if isinstance(y, str)]
    if unread:
        text += f" Not read: {'; '.join(unread)}."
    if finite < len(scored):
        text += " A non-finite logit (NaN, inf) is never a score: check the graph and the preprocessing recipe."
    return text + " Whether its scores mean anything on your images is what `cxrtriage models validate` measures."
