"""The public explanation functions: one image (``explain``), one preprocessed input, or a scored batch."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxrtriage.errors import ModelError
from cxrtriage.explain.base import (
    CamContext,
    CamMethod,
    HeadWeights,
    Heatmap,
    analytic_gradient,
    baseline_value,
    label_index,
    make_heatmap,
    normalize_stack,
    weighted_sum,
)
from cxrtriage.explain.head import check_head, read_head
from cxrtriage.explain.registry import get_method, require_method
from cxrtriage.model import Classifier, ClassifierOutput, load_classifier
from cxrtriage.preprocess import Geometry, ModelInput
from cxrtriage.types import FloatArray, Image2D


def _as_classifier(model: Classifier | str | Path | None) -> Classifier:
    return model if isinstance(model, Classifier) else load_classifier(model)


def read_any_image(path: str | Path) -> Image2D:
    """Read a DICOM / PNG / JPEG / TIFF / NIfTI / MHA / NRRD file, recognised by content (``cxrtriage.io.read_image``)."""
    from cxrtriage.io import read_image

    return read_image(path)


def _as_image(image: Image2D | str | Path) -> Image2D:
    return image if isinstance(image, Image2D) else read_any_image(image)


def _checked_head(model: Classifier, output: ClassifierOutput) -> HeadWeights:
    head = read_head(model.manifest)
    assert output.features is not None
    check_head(head, output.features, output.logits, where=str(model.manifest.path))
    return head


def flagged_labels(model: Classifier, scores: Sequence[float] | FloatArray, *, operating_point: str = "balanced") -> list[str]:
    """Labels whose calibrated score is >= the manifest's threshold at ``operating_point``.

    A label without a threshold in the manifest is an error, never a silent default.
    """
    if operating_point not in ("balanced", "rule_out"):
        raise ModelError(f"operating point '{operating_point}' is unknown; use 'balanced' or 'rule_out'")
    out: list[str] = []
    for lab, s in zip(model.labels, scores, strict=True):
        t = model.manifest.thresholds.get(lab)
        if t is None:
            raise ModelError(
                f"{model.manifest.path}: no thresholds for label '{lab}', so 'flagged' is undefined; "
                "add thresholds to the manifest (cxrtriage calibrate) or name the labels with --label"
            )
        if float(s) >= getattr(t, operating_point).threshold:
            out.append(lab)
    return out


def _calibration_notes(model: Classifier, label: str) -> tuple[str, ...]:
    """Maps explain the logit; say so when the calibrated score does not rise with it (Platt a <= 0)."""
    cal = model.manifest.calibration
    if cal is not None and cal.a.get(label, 1.0) <= 0:
        return ("the calibrated score falls as the logit rises (Platt a <= 0): the map shows evidence for the logit",)
    return ()


def _heatmaps_for_input(
    model: Classifier,
    methods: Sequence[CamMethod],
    labels: Iterable[str],
    output: ClassifierOutput,
    row: int,
    geometry: Geometry,
    model_input: FloatArray | None,
    options: Mapping[str, Mapping[str, Any]],
    head: HeadWeights | None,
) -> list[Heatmap]:
    """Maps of one image for every (label, method), label-major.

    Gradient methods run for all labels at once: gradients [L, C] → channel weights [L, C] → one
    matrix product with the [C, h*w] activations → one resize of the [L, h, w] stack.
    """
    feats = None if output.features is None else output.features[row]
    grid = None if feats is None else (int(feats.shape[1]), int(feats.shape[2]))
    idxs = [label_index(model.labels, lab) for lab in labels]
    names = [model.labels[i] for i in idxs]
    by_method: dict[str, list[Heatmap]] = {}
    for method in methods:
        opts = method.resolve_options(options.get(method.name, {}))
        extra = {"options": {k: v for k, v in opts.items() if v is not None}} if opts else None

        def build(raw: FloatArray, j: int, normalized: Any = None, *, _m: CamMethod = method, _e: Any = extra) -> Heatmap:
            return make_heatmap(raw, label=names[j], method=_m, geometry=geometry, score=float(output.scores[row, idxs[j]]),
                                logit=float(output.logits[row, idxs[j]]), notes=_calibration_notes(model, names[j]),
                                extra=_e, normalized=normalized)

        if method.channel_weights is not None and head is not None and feats is not None and grid is not None:
            grads = analytic_gradient(head, idxs, grid)
            raws = weighted_sum(method.channel_weights(grads, feats), feats)
            norms = normalize_stack(raws, model.input_size)
            by_method[method.name] = [build(raws[j], j, norms[j]) for j in range(len(idxs))]
            continue
        maps = []
        for j, idx in enumerate(idxs):
            ctx = CamContext(
                label=names[j],
                label_index=idx,
                size=model.input_size,
                activations=feats,
                gradient=analytic_gradient(head, idx, grid) if head is not None and grid is not None else None,
                model=model if method.needs_forward else None,
                model_input=model_input if method.needs_forward else None,
                baseline=baseline_value(model) if method.needs_forward else None,
                options=opts,
            )
            maps.append(build(method.compute(ctx), j))
        by_method[method.name] = maps
    return [by_method[m.name][j] for j in range(len(idxs)) for m in methods]


def explain_input(
    model: Classifier,
    model_input: ModelInput,
    labels: Iterable[str],
    methods: Sequence[str] = ("gradcam",),
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    output: ClassifierOutput | None = None,
) -> list[Heatmap]:
    """Maps for one preprocessed input, for every (label, method) pair, from ONE forward pass.

    ``output`` (a 1-row ClassifierOutput with features) may be given to skip that pass.
    ``options`` maps a method name to its keyword options (e.g. ``{"scorecam": {"top_k": 32}}``).
    Returned in label-major order: for each label, one Heatmap per method.
    """
    resolved = [require_method(m, model.manifest) for m in methods]
    need_features = any(m.needs_features for m in resolved)
    if output is None:
        output = model.run(model_input.array[None], features=need_features)
    elif need_features and output.features is None:
        raise ModelError("explain_input: the given output has no features; run the model with features=True")
    head = _checked_head(model, output) if any(m.needs_head for m in resolved) else None
    return _heatmaps_for_input(model, resolved, list(labels), output, 0, model_input.geometry, model_input.array,
                               options or {}, head)


def explain(
    model: Classifier | str | Path | None,
    image: Image2D | str | Path,
    label: str,
    method: str = "gradcam",
    **options: Any,
) -> Heatmap:
    """Explain the score of ``label`` for ``image`` with ``method``.

    ``model``: a loaded Classifier, or a model name / path (None = the default classifier).
    ``image``: an Image2D or a path to an image file. ``options``: the method's own options
    (``scorecam``: top_k, batch_size; ``occlusion``: patch, stride, batch_size).
    Returns a Heatmap whose ``values`` are float32 in [0, 1] at the model-input resolution and
    ``original`` the same map on the image's own grid; ``values is None`` ("no map", with a
    ``reason``) when there is no positive evidence.
    """
    clf = _as_classifier(model)
    img = _as_image(image)
    m = get_method(method)
    (heatmap,) = explain_input(clf, clf.preprocess(img), [label], [m.name], options={m.name: options})
    return heatmap


def explain_output(
    model: Classifier,
    output: ClassifierOutput,
    geometries: Sequence[Geometry],
    targets: Sequence[Iterable[str]],
    *,
    method: str = "gradcam",
) -> list[list[Heatmap]]:
    """Maps for a batch that was ALREADY scored with ``features=True``: no model pass at all.

    ``targets[i]`` are the labels to explain for image ``i`` (e.g. ``flagged_labels``);
    ``geometries[i]`` is that image's ``ModelInput.geometry``. Only methods that need no extra
    forward pass (the gradient methods and eigencam) are accepted. Returns, per image, one
    Heatmap per requested label. This is what ``predict --heatmaps`` calls; the cost is a few
    small matrix products per map.
    """
    m = require_method(method, model.manifest)
    if m.needs_forward:
        raise ModelError(
            f"method '{m.name}' runs extra forward passes over modified inputs, so it cannot work from an already "
            "computed output; use explain_input() for it, or a gradient method / eigencam here"
        )
    n = output.logits.shape[0]
    if len(geometries) != n or len(targets) != n:
        raise ValueError(f"explain_output: {n} outputs but {len(geometries)} geometries and {len(targets)} target lists")
    if output.features is None:
        raise ModelError(f"{model.manifest.path}: the output has no features; run the model with features=True")
    head = _checked_head(model, output) if m.needs_head else None
    return [
        _heatmaps_for_input(model, [m], list(targets[i]), output, i, geometries[i], None, {}, head)
        for i in range(n)
    ]


def random_heatmap(geometry: Geometry, *, label: str, seed: int = 0) -> FloatArray:
    """A uniformly random [S, S] map: the reference ordering for the faithfulness metrics only.

    Never drawn or returned as an explanation; deletion/insertion scores of a real method are
    meaningful only relative to this baseline.
    """
    rng = np.random.default_rng([seed, sum(map(ord, label))])
    return rng.random((geometry.size, geometry.size)).astype(np.float32)
