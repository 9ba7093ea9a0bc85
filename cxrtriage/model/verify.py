"""Whether a model is intact, part by part, and how its owner re-seals a manifest edited on purpose.

``check_graph`` compares the manifest with the ONNX graph (input size, one output per label); ``load_model``
runs it on every load. ``verify_model`` runs every check on one model and reports each part (manifest JSON,
integrity, fields, ONNX sha256, graph) instead of stopping at the first failure, for ``models verify``.
``seal_manifest`` validates a manifest against its ONNX file and (re)writes its integrity, for ``models seal``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrtriage.errors import ModelError
from cxrtriage.model.integrity import changed_fields, recorded_seal, seal_of
from cxrtriage.model.manifest import (
    ModelManifest,
    Task,
    check_integrity,
    load_manifest,
    parse_manifest,
    read_manifest_data,
    verify_onnx,
    write_sealed_manifest,
)
from cxrtriage.model.session import Device, OrtSession, TensorInfo, create_session


def _main_output(manifest: ModelManifest) -> tuple[str, int]:
    """(graph name, rank) of the output that carries one value per label: logits [N, L] or masks [N, K, S, S]."""
    if manifest.task is Task.CLASSIFICATION:
        return manifest.outputs["logits"], 2
    return manifest.outputs["masks"], 4


def _tensor(infos: tuple[TensorInfo, ...], name: str) -> TensorInfo | None:
    return next((t for t in infos if t.name == name), None)


def check_graph(manifest: ModelManifest, session: OrtSession) -> None:
    """Raise ``ModelError`` naming the manifest field that disagrees with the ONNX graph.

    The graph's input must take one grey channel at ``preprocessing.size``; its main output must give one
    value per entry of ``labels``. A swapped or renamed label list of the same length cannot be seen here;
    the manifest's integrity catches that. When the graph leaves the label axis symbolic, one blank image
    is run to read it.
    """
    where = manifest.path
    inp = _tensor(session.inputs, manifest.input_name)
    size = manifest.preprocessing.size
    if inp is not None and inp.shape:
        if len(inp.shape) != 4:
            raise ModelError(f"{where}: the ONNX graph's input '{inp.name}' has rank {len(inp.shape)} {list(inp.shape)}; "
                             "a model input is [N, 1, S, S]. The manifest does not describe this graph")
        for axis, want, field in ((1, 1, "input.shape[1]"), (2, size, "preprocessing.size"), (3, size, "preprocessing.size")):
            have = inp.shape[axis]
            if have is not None and have != want:
                raise ModelError(
                    f"{where}: manifest field '{field}' is {want}, but the ONNX graph's input '{inp.name}' has {have} at "
                    f"axis {axis} ({list(inp.shape)}); restore the manifest that belongs to this model, or re-export both"
                )
    name, rank = _main_output(manifest)
    out = _tensor(session.outputs, name)
    n: int | None = None
    if out is not None and len(out.shape) == rank:
        n = out.shape[1]
    elif out is not None and out.shape:
        raise ModelError(f"{where}: the ONNX graph's output '{name}' has shape {list(out.shape)}, not rank {rank}; "
                         "the manifest's 'outputs' do not describe this graph")
    if n is None:  # symbolic label axis: ask the graph itself
        batch = inp.shape[0] if inp is not None and inp.shape and inp.shape[0] is not None else 1
        (y,) = session.run([name], {manifest.input_name: np.zeros((batch, 1, size, size), np.float32)})
        if y.ndim != rank:
            raise ModelError(f"{where}: the ONNX graph's output '{name}' has shape {list(y.shape)}, not rank {rank}")
        n = int(y.shape[1])
    if n != manifest.n_outputs:
        listed = (f"{manifest.n_outputs} entries ({len(manifest.labels)} labels, the rest ignored)"
                  if manifest.ignores_outputs else f"{len(manifest.labels)} labels")
        raise ModelError(
            f"{where}: manifest field 'labels' lists {listed}, but the ONNX graph's output '{name}' "
            f"gives {n} values per image; the manifest does not belong to this model. Restore the original manifest, "
            "or re-export the model and its manifest together (`cxrtriage models import` writes both; a null entry "
            "in 'labels' marks an output to ignore)"
        )


def open_checked_session(manifest: ModelManifest, *, device: str | Device = Device.CPU) -> OrtSession:
    """A session on ``manifest``'s ONNX file whose names and shapes agree with the manifest."""
    session = create_session(manifest.onnx_file, device=device, required_inputs=[manifest.input_name],
                             required_outputs=list(manifest.outputs.values()), where=str(manifest.path))
    check_graph(manifest, session)
    return session


# --------------------------------------------------------------------------- models verify

PARTS = ("manifest", "integrity", "fields", "onnx sha256", "graph")


@dataclass(frozen=True, slots=True)
class PartCheck:
    """One part of a model's verification: ``ok`` True/False, or None when it could not be checked."""

    part: str
    ok: bool | None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class ModelVerification:
    """Every part of one model's verification, in ``PARTS`` order."""

    manifest_path: Path
    name: str
    checks: tuple[PartCheck, ...]
    integrity: str = ""

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failed(self) -> tuple[PartCheck, ...]:
        return tuple(c for c in self.checks if c.ok is False)


def verify_model(manifest_path: str | Path) -> ModelVerification:
    """Check each part of the model whose manifest is ``manifest_path``; never raises for a broken model.

    The parts: ``manifest`` (readable JSON object), ``integrity`` (the content matches its seal), ``fields``
    (every field valid), ``onnx sha256`` (the ONNX file matches the manifest), ``graph`` (names, input size
    and label count agree with the ONNX graph). A part that needs an earlier one is reported as not checked.
    """
    path = Path(manifest_path)
    checks: list[PartCheck] = []

    def skipped(parts: tuple[str, ...], why: str) -> ModelVerification:
        checks.extend(PartCheck(p, None, f"not checked: {why}") for p in parts)
        return ModelVerification(path, name, tuple(checks), integrity)

    name, integrity = path.parent.name, ""
    try:
        data = read_manifest_data(path)
    except ModelError as exc:
        checks.append(PartCheck("manifest", False, str(exc)))
        return skipped(PARTS[1:], "the manifest cannot be read")
    checks.append(PartCheck("manifest", True))
    if isinstance(data.get("name"), str) and data["name"].strip():
        name = data["name"]
    try:
        integrity = check_integrity(data, path)
        checks.append(PartCheck("integrity", True, f"sealed, content matches ({integrity[:16]}…)"))
    except ModelError as exc:
        checks.append(PartCheck("integrity", False, str(exc)))
    try:
        manifest = parse_manifest(data, path, integrity=integrity)
    except ModelError as exc:
        checks.append(PartCheck("fields", False, str(exc)))
        return skipped(PARTS[3:], "the manifest's fields are invalid")
    checks.append(PartCheck("fields", True))
    try:
        verify_onnx(manifest)
    except ModelError as exc:
        checks.append(PartCheck("onnx sha256", False, str(exc)))
        return skipped(PARTS[4:], "the ONNX file does not match the manifest")
    checks.append(PartCheck("onnx sha256", True, f"matches the manifest ({manifest.sha256[:16]}…)"))
    try:
        open_checked_session(manifest)
    except ModelError as exc:
        checks.append(PartCheck("graph", False, str(exc)))
    else:
        checks.append(PartCheck("graph", True))
    return ModelVerification(path, name, tuple(checks), integrity)


# --------------------------------------------------------------------------- models seal


@dataclass(frozen=True, slots=True)
class SealResult:
    """What ``seal_manifest`` did: the integrity before (None when never sealed) and after, and what changed."""

    path: Path
    before: str | None
    after: str
    changed: tuple[str, ...]
    written: bool


def seal_manifest(manifest_path: str | Path, *, dry_run: bool = False) -> SealResult:
    """Validate a manifest against its ONNX file, then write its integrity (unless ``dry_run``).

    For a model owner who edited a manifest on purpose (e.g. a site that changes a threshold). Refuses
    (``ModelError`` naming the field) a manifest with an invalid field, an ONNX file whose sha256 differs from
    the manifest's (sealing never adopts a replaced network: re-export the model instead), or labels, names
    or sizes that disagree with the graph. ``changed`` lists the fields that differ from the previous seal.
    """
    path = Path(manifest_path)
    data = read_manifest_data(path)
    manifest = parse_manifest(data, path)
    verify_onnx(manifest)
    open_checked_session(manifest)
    old, new = recorded_seal(data), seal_of(data)
    if old is not None and old == new:
        return SealResult(path, old.sha256, new.sha256, (), written=False)
    if old is None:
        changed: tuple[str, ...] = ("(not sealed before)",)
    elif old.fields:
        changed = tuple(changed_fields(old.fields, new.fields)) or ("(field digests only)",)
    else:
        changed = ("(the previous seal names no fields)",)
    if not dry_run:
        write_sealed_manifest(path, data)
        load_manifest(path)  # what was written loads
    return SealResult(path, None if old is None else old.sha256, new.sha256, changed, written=not dry_run)
