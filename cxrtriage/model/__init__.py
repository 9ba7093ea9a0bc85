"""Models: manifests, the model registry, onnxruntime sessions, the classifier and the segmenter."""

from __future__ import annotations

from pathlib import Path

from cxrtriage.errors import ModelError
from cxrtriage.model.classifier import Classifier, ClassifierOutput, calibrate
from cxrtriage.model.manifest import ModelManifest, Task, load_manifest, verify_onnx
from cxrtriage.model.registry import (
    DEFAULT_CLASSIFIER,
    DEFAULT_SEGMENTER,
    ModelEntry,
    list_models,
    models_dir,
    models_path,
    resolve_manifest,
    resolve_manifest_path,
)
from cxrtriage.model.segmenter import LungMask, Segmenter
from cxrtriage.model.session import Device, available_devices, create_session
from cxrtriage.model.verify import ModelVerification, SealResult, check_graph, seal_manifest, verify_model

__all__ = [
    "DEFAULT_CLASSIFIER",
    "DEFAULT_SEGMENTER",
    "Classifier",
    "ClassifierOutput",
    "Device",
    "LungMask",
    "ModelEntry",
    "ModelManifest",
    "ModelVerification",
    "SealResult",
    "Segmenter",
    "Task",
    "available_devices",
    "calibrate",
    "list_models",
    "load_classifier",
    "load_manifest",
    "load_model",
    "load_segmenter",
    "models_dir",
    "models_path",
    "resolve_manifest",
    "resolve_manifest_path",
    "seal_manifest",
    "verify_model",
]


def load_model(
    name_or_path: str | Path | None = None,
    *,
    device: str = "auto",
    strict_device: bool = False,
    intra_op_threads: int | None = None,
    spinning: bool = True,
    task: Task | str | None = None,
    default: str | None = None,
    option: str = "--model",
) -> Classifier | Segmenter:
    """Load a model by name (from the models dir) or by path to its ONNX file, manifest or folder.

    ``None`` loads ``default`` (the default classifier unless given). A manifest edited after it was
    sealed, or with an invalid field, is refused (``ModelError`` naming the field); so is an ONNX file
    whose sha256 differs from the manifest's, and a manifest whose input/output names, input size or
    label count disagree with the graph. ``task`` refuses a model of another
    task (e.g. a segmenter passed to ``predict``). ``option`` is the command-line option that named the model
    (``--model``, ``--segmenter``), for messages. ``spinning=False`` keeps idle onnxruntime
    threads from busy-waiting, for when decode processes share the CPU cores.
    """
    fallback = default or (DEFAULT_SEGMENTER if task is not None and Task(task) is Task.SEGMENTATION else DEFAULT_CLASSIFIER)
    manifest = resolve_manifest(name_or_path, default=fallback, option=option)
    if task is not None and manifest.task is not Task(task):
        raise ModelError(
            f"{manifest.path}: model '{manifest.name}' is a {manifest.task.value} model, but a {Task(task).value} "
            f"model is needed here; choose another {option}"
        )
    verify_onnx(manifest)
    session = create_session(
        manifest.onnx_file,
        device=device,
        strict_device=strict_device,
        intra_op_threads=intra_op_threads,
        spinning=spinning,
        required_inputs=[manifest.input_name],
        required_outputs=list(manifest.outputs.values()),
        where=str(manifest.path),
    )
    check_graph(manifest, session)
    if manifest.task is Task.CLASSIFICATION:
        return Classifier(manifest, session)
    return Segmenter(manifest, session)


def load_classifier(name_or_path: str | Path | None = None, **kwargs: object) -> Classifier:
    """``load_model`` restricted to classifiers (default: the default classifier)."""
    model = load_model(name_or_path, task=Task.CLASSIFICATION, **kwargs)  # type: ignore[arg-type]
    assert isinstance(model, Classifier)
    return model


def load_segmenter(name_or_path: str | Path | None = None, **kwargs: object) -> Segmenter:
    """``load_model`` restricted to segmenters (default: the default lung segmenter)."""
    model = load_model(name_or_path, task=Task.SEGMENTATION, **kwargs)  # type: ignore[arg-type]
    assert isinstance(model, Segmenter)
    return model
