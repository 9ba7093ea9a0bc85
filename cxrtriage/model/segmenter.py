"""The lung segmenter: ONNX mask logits → a label map at the original image geometry."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from cxrtriage.errors import ModelError
from cxrtriage.model.manifest import ModelManifest, Task
from cxrtriage.model.session import OrtSession
from cxrtriage.preprocess import Geometry, ModelInput, to_model_input, to_original
from cxrtriage.types import FloatArray, Image2D, SourceRef


@dataclass(frozen=True, slots=True)
class LungMask:
    """A label map on the original image grid: 0 = background, k = ``label_names[k]``."""

    labels: NDArray[np.uint8]
    label_names: tuple[str, ...]
    source: SourceRef
    pixel_spacing_mm: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.labels.ndim != 2 or self.labels.dtype != np.uint8:
            raise ValueError(f"LungMask.labels must be a 2-D uint8 array, got {self.labels.dtype} {self.labels.shape}")
        if int(self.labels.max(initial=0)) >= len(self.label_names):
            raise ValueError(f"LungMask has label {int(self.labels.max())} but only {len(self.label_names)} label names")

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.labels.shape[0]), int(self.labels.shape[1]))

    def binary(self) -> NDArray[np.bool_]:
        """True wherever any non-background label is."""
        return self.labels > 0


class Segmenter:
    """A lung segmentation model described by a manifest (``labels[0]`` is the background)."""

    def __init__(self, manifest: ModelManifest, session: OrtSession) -> None:
        if manifest.task is not Task.SEGMENTATION:
            raise ModelError(f"{manifest.path}: model '{manifest.name}' is a {manifest.task.value} model, not a segmenter")
        if len(manifest.labels) > 256:
            raise ModelError(f"{manifest.path}: {len(manifest.labels)} mask labels do not fit a uint8 label map")
        self.manifest = manifest
        self.session = session
        self._masks_name = manifest.outputs["masks"]

    @property
    def labels(self) -> tuple[str, ...]:
        return self.manifest.labels

    @property
    def input_size(self) -> int:
        return self.manifest.preprocessing.size

    def preprocess(self, image: Image2D) -> ModelInput:
        return to_model_input(image, self.manifest.preprocessing)

    def run(self, batch: FloatArray) -> FloatArray:
        """Mask logits [N, K, S, S] for a batch [N, 1, S, S] of preprocessed inputs."""
        s = self.input_size
        if batch.ndim != 4 or batch.shape[1:] != (1, s, s):
            raise ModelError(f"batch must be [N, 1, {s}, {s}] for model '{self.manifest.name}', got {tuple(batch.shape)}")
        (out,) = self.session.run([self._masks_name], {self.manifest.input_name: np.ascontiguousarray(batch, np.float32)})
        k = len(self.labels)
        if out.ndim != 4 or out.shape[:2] != (batch.shape[0], k) or out.shape[2:] != (s, s):
            raise ModelError(
                f"{self.manifest.onnx_file}: output '{self._masks_name}' has shape {tuple(out.shape)}, expected "
                f"[{batch.shape[0]}, {k}, {s}, {s}] for labels {list(self.labels)}"
            )
        return out.astype(np.float32, copy=False)

    def to_mask(
        self,
        logits: FloatArray,
        geometry: Geometry,
        *,
        source: SourceRef,
        pixel_spacing_mm: tuple[float, float] | None,
    ) -> LungMask:
        """Argmax of one image's mask logits [K, S, S], mapped back onto the image's own grid."""
        small = np.argmax(logits, axis=0).astype(np.float32)
        full = to_original(small, geometry, fill=0.0, nearest=True)
        return LungMask(
            labels=np.rint(full).astype(np.uint8),
            label_names=self.labels,
            source=source,
            pixel_spacing_mm=pixel_spacing_mm,
        )

    def segment_inputs(
        self,
        inputs: Sequence[ModelInput],
        sources: Sequence[SourceRef],
        spacings: Sequence[tuple[float, float] | None],
    ) -> list[LungMask]:
        """Segment one batch of preprocessed ``inputs``; each mask is mapped back onto its image's original grid."""
        logits = self.run(np.stack([mi.array for mi in inputs]))
        return [self.to_mask(logits[i], mi.geometry, source=src, pixel_spacing_mm=sp)
                for i, (mi, src, sp) in enumerate(zip(inputs, sources, spacings, strict=True))]

    def segment(self, image: Image2D) -> LungMask:
        """Segment one image; the label map has the image's original size."""
        mi = self.preprocess(image)
        logits = self.run(mi.array[None])[0]
        return self.to_mask(logits, mi.geometry, source=image.source, pixel_spacing_mm=image.pixel_spacing_mm)
