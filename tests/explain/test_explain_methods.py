"""Explanation methods on tiny ONNX models built in code: formulas, geometry, "no map", availability, perturbation methods."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import cxrtriage
from cxrtriage.errors import ConfigError, ModelError
from cxrtriage.explain import explain, explain_input, explain_output, method_availability
from cxrtriage.explain.base import CamContext, HeadWeights, analytic_gradient, normalize
from cxrtriage.explain.eigencam import eigencam
from cxrtriage.explain.faithfulness import deletion_insertion
from cxrtriage.explain.gradcam import gradcam
from cxrtriage.explain.gradcampp import gradcampp
from cxrtriage.explain.hirescam import hirescam
from cxrtriage.explain.layercam import layercam
from cxrtriage.explain.xgradcam import xgradcam
from cxrtriage.model import Classifier, load_model
from cxrtriage.model.manifest import SCHEMA_VERSION, sha256_file, write_sealed_manifest
from cxrtriage.types import Image2D, InputKind, SourceRef

LABELS = ("lesion", "against")


def build_classifier(
    folder: Path,
    *,
    size: int = 64,
    kernel: int = 4,
    features: bool = True,
    head: bool = True,
    geometry: str = "letterbox",
    head_weight_name: str = "head.weight",
) -> Classifier:
    """A 'blob detector': strided conv (mean brightness of k x k cells) → ReLU → GAP → linear head.

    Channel 0 = ReLU(mean(x) - 0.5): active only on bright cells (the lesion); channel 1 =
    ReLU(0.5 - mean(x)): active on dark background. Label 'lesion' weights (+400, -1); label
    'against' weights (-1, -1): every channel lowers it, so its Grad-CAM has no positive evidence.
    """
    k2 = float(kernel * kernel)
    conv_w = np.stack([np.full((1, kernel, kernel), 1.0 / k2), np.full((1, kernel, kernel), -1.0 / k2)]).astype(np.float32)
    conv_b = np.array([-0.5, 0.5], np.float32)
    head_w = np.array([[400.0, -1.0], [-1.0, -1.0]], np.float32)
    head_b = np.array([0.0, 0.0], np.float32)
    decoy = (head_w * 3.0).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["image", "conv.w", "conv.b"], ["pre"], strides=[kernel, kernel]),
        helper.make_node("Relu", ["pre"], ["features"]),
        helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "head.weight", "head.bias"], ["logits"], transB=1),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", len(LABELS)])]
    if features:
        outputs.append(helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", 2, size // kernel, size // kernel]))
    inits = [numpy_helper.from_array(a, n) for a, n in
             ((conv_w, "conv.w"), (conv_b, "conv.b"), (head_w, "head.weight"), (head_b, "head.bias"), (decoy, "decoy"))]
    graph = helper.make_graph(nodes, "blob", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, size, size])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    manifest: dict[str, object] = {
        "schema_version": SCHEMA_VERSION, "onnx_file": "model.onnx", "sha256": sha256_file(folder / "model.onnx"),
        "name": "blob", "version": "1", "task": "classification",
        "input": {"name": "image", "shape": [None, 1, size, size]}, "labels": list(LABELS),
        "outputs": {"logits": "logits", **({"features": "features"} if features else {})},
        "preprocessing": {"size": size, "geometry": geometry, "voi": "ignore", "intensity": "nominal",
                          "output_range": [0.0, 1.0]},
        "thresholds": {lab: {"rule_out": {"threshold": 0.3}, "balanced": {"threshold": 0.5}} for lab in LABELS},
    }
    if head:
        manifest["head"] = {"pooling": "gap", "weight": head_weight_name, "bias": "head.bias"}
    write_sealed_manifest(folder / "manifest.json", manifest)
    clf = load_model(folder)
    assert isinstance(clf, Classifier)
    return clf


def blob_image(height: int, width: int, center: tuple[int, int], radius: int, seed: int = 0) -> Image2D:
    """Dark noisy background (0..0.3 of full scale) with one bright disc (the 'lesion')."""
    rng = np.random.default_rng(seed)
    px = rng.uniform(0, 0.3 * 255, (height, width)).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width]
    px[(yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2] = 255.0
    return Image2D(pixels=px, value_range=(0.0, 255.0), source=SourceRef("synthetic.png", InputKind.RASTER))


# ---------------------------------------------------------------- formulas on random activations

def _ctx(rng: np.random.Generator, c: int = 6, h: int = 5, w: int = 7) -> tuple[CamContext, HeadWeights]:
    a = np.maximum(rng.normal(size=(c, h, w)), 0).astype(np.float32)
    a[2] = 0.0  # an all-zero (dead) channel, as post-ReLU maps have
    head = HeadWeights(weight=rng.normal(size=(3, c)).astype(np.float32), bias=np.zeros(3, np.float32), source="test")
    ctx = CamContext(label="x", label_index=1, size=32, activations=a, gradient=analytic_gradient(head, 1, (h, w)))
    return ctx, head


def test_gradcam_xgradcam_hirescam_equal_cam_for_a_gap_linear_head() -> None:
    ctx, head = _ctx(np.random.default_rng(1))
    assert ctx.activations is not None
    cam = np.tensordot(head.weight[1], ctx.activations, axes=(0, 0)) / (5 * 7)  # Zhou et al. CAM / (h*w)
    for fn in (gradcam, hirescam, xgradcam):
        np.testing.assert_allclose(fn(ctx), cam, rtol=1e-5, atol=1e-7)


def test_layercam_and_gradcampp_use_only_positive_weights_and_differ_from_gradcam() -> None:
    ctx, head = _ctx(np.random.default_rng(2))
    assert ctx.activations is not None
    w = head.weight[1]
    np.testing.assert_allclose(layercam(ctx), np.tensordot(np.maximum(w, 0), ctx.activations, axes=(0, 0)) / 35, rtol=1e-5)
    s = ctx.activations.sum(axis=(1, 2))
    g = w / 35.0
    expected_w = np.where(g > 0, 35.0 * g / (2.0 + s * g), 0.0)  # closed form of eq. 19 with constant G
    np.testing.assert_allclose(gradcampp(ctx), np.tensordot(expected_w, ctx.activations, axes=(0, 0)), rtol=1e-5)
    assert np.max(np.abs(layercam(ctx) - gradcam(ctx))) > 1e-3


def test_eigencam_recovers_a_rank_one_pattern_with_positive_sign() -> None:
    rng = np.random.default_rng(3)
    pattern = np.zeros((6, 6), np.float32)
    pattern[1:3, 3:5] = 1.0
    a = (rng.uniform(0.5, 2.0, (8, 1, 1)) * pattern[None]).astype(np.float32)
    m = eigencam(CamContext(label="x", label_index=0, size=24, activations=a))
    assert np.corrcoef(m.ravel(), pattern.ravel())[0, 1] > 0.99  # sign fixed: hot where the activations are


def test_normalisation_is_relu_bilinear_minmax_and_all_zero_is_no_map() -> None:
    raw = np.array([[-1.0, 0.0], [2.0, 4.0]], np.float32)
    values, relu, reason = normalize(raw, 4)
    assert values is not None and reason == ""
    assert values.shape == (4, 4) and values.dtype == np.float32
    assert float(values.min()) == 0.0 and float(values.max()) == 1.0
    assert float(relu.min()) == 0.0
    assert values[3, 3] == 1.0 and values[0, 0] == 0.0
    for flat in (np.zeros((3, 3), np.float32), -np.ones((3, 3), np.float32)):
        v, _, why = normalize(flat, 8)
        assert v is None and "no positive evidence" in why
    v, _, why = normalize(np.ones((3, 3), np.float32), 8)
    assert v is None and "uniform" in why


# ---------------------------------------------------------------- geometry on non-square images

@pytest.mark.parametrize(("height", "width", "geometry"), [
    (200, 300, "letterbox"), (300, 200, "letterbox"), (200, 300, "stretch"), (300, 200, "center_crop")])
def test_hot_spot_of_original_map_lies_on_the_lesion(tmp_path: Path, height: int, width: int, geometry: str) -> None:
    clf = build_classifier(tmp_path / "m", geometry=geometry)
    center = (int(height * 0.6), int(width * 0.35))
    img = blob_image(height, width, center, radius=18)
    for method in ("gradcam", "gradcampp", "layercam"):
        hm = explain(clf, img, "lesion", method=method)
        assert hm.original is not None and hm.values is not None
        assert hm.original.shape == (height, width) and hm.values.shape == (64, 64)
        peak = np.unravel_index(int(np.argmax(hm.original)), hm.original.shape)
        assert np.hypot(peak[0] - center[0], peak[1] - center[1]) <= 18, (method, peak, center)
        yy, xx = np.mgrid[0:height, 0:width]
        far = np.hypot(yy - center[0], xx - center[1]) > 60
        assert float(hm.original[far].max()) < 0.05, method  # nothing hot away from the lesion


def test_all_negative_evidence_is_reported_as_no_map(tmp_path: Path) -> None:
    clf = build_classifier(tmp_path / "m")
    img = blob_image(200, 300, (100, 150), radius=15)
    for method in ("gradcam", "gradcampp", "layercam", "xgradcam", "hirescam"):
        hm = explain(clf, img, "against", method=method)
        assert hm.empty and hm.values is None and hm.original is None
        assert "no positive evidence" in hm.reason
    assert not explain(clf, img, "against", method="eigencam").empty  # class-agnostic: still a map


def test_module_is_callable_and_accepts_a_path(tmp_path: Path) -> None:
    import cv2

    clf = build_classifier(tmp_path / "m")
    img = blob_image(120, 90, (60, 40), radius=10)
    png = tmp_path / "x.png"
    cv2.imwrite(str(png), img.pixels.astype(np.uint8))
    hm = cxrtriage.explain(clf, png, "lesion")
    assert hm.method == "gradcam" and hm.original is not None and hm.original.shape == (120, 90)


def test_batch_function_uses_the_given_output_and_matches_single_images(tmp_path: Path) -> None:
    clf = build_classifier(tmp_path / "m")
    imgs = [blob_image(200, 300, (80, 200), 15, seed=1), blob_image(300, 200, (220, 60), 15, seed=2)]
    mis = [clf.preprocess(i) for i in imgs]
    out = clf.run(np.stack([m.array for m in mis]), features=True)
    maps = explain_output(clf, out, [m.geometry for m in mis], [["lesion"], ["lesion", "against"]], method="gradcampp")
    assert [len(m) for m in maps] == [1, 2]
    for mi, row in zip(mis, maps, strict=True):
        for hm in row:
            (single,) = explain_input(clf, mi, [hm.label], ["gradcampp"])
            assert single.empty == hm.empty
            if not hm.empty:
                np.testing.assert_allclose(hm.values, single.values, atol=1e-6)
    with pytest.raises(ModelError, match="extra forward passes"):
        explain_output(clf, out, [m.geometry for m in mis], [["lesion"], ["lesion"]], method="occlusion")


# ---------------------------------------------------------------- availability and head checks

def test_methods_without_head_or_features_are_refused_with_what_still_applies(tmp_path: Path) -> None:
    img = blob_image(100, 100, (50, 50), 10)
    no_head = build_classifier(tmp_path / "nohead", head=False)
    avail = method_availability(no_head.manifest)
    assert {n for n, r in avail.items() if not r} == {"eigencam", "scorecam", "occlusion"}
    with pytest.raises(ModelError, match="still apply to this model: eigencam, scorecam, occlusion"):
        explain(no_head, img, "lesion", method="gradcam")
    no_feat = build_classifier(tmp_path / "nofeat", features=False, head=False)
    avail = method_availability(no_feat.manifest)
    assert [n for n, r in avail.items() if not r] == ["occlusion"]
    for m in ("layercam", "eigencam", "scorecam"):
        with pytest.raises(ModelError, match="still apply to this model: occlusion"):
            explain(no_feat, img, "lesion", method=m)
    assert not explain(no_feat, img, "lesion", method="occlusion", patch=8).empty


def test_a_head_that_does_not_reproduce_the_logits_is_refused(tmp_path: Path) -> None:
    clf = build_classifier(tmp_path / "m", head_weight_name="decoy")  # exists, right shape, wrong values
    with pytest.raises(ModelError, match="differs from the logits"):
        explain(clf, blob_image(100, 100, (50, 50), 10), "lesion")


def test_unknown_label_method_or_option_is_a_config_error(tmp_path: Path) -> None:
    clf = build_classifier(tmp_path / "m")
    img = blob_image(100, 100, (50, 50), 10)
    with pytest.raises(ConfigError, match="labels are: lesion, against"):
        explain(clf, img, "pneumothorax")
    with pytest.raises(ConfigError, match="choose one of"):
        explain(clf, img, "lesion", method="saliency")
    with pytest.raises(ConfigError, match="options are: batch_size, top_k"):
        explain(clf, img, "lesion", method="scorecam", patch=3)


# ---------------------------------------------------------------- perturbation methods and faithfulness

@pytest.mark.parametrize("method", ["occlusion", "scorecam"])
def test_perturbation_methods_find_the_lesion(tmp_path: Path, method: str) -> None:
    clf = build_classifier(tmp_path / "m")
    center = (130, 90)
    img = blob_image(200, 300, center, radius=18)
    opts = {"patch": 8, "stride": 4} if method == "occlusion" else {"top_k": 2, "batch_size": 1}
    hm = explain(clf, img, "lesion", method=method, **opts)
    assert hm.original is not None
    peak = np.unravel_index(int(np.argmax(hm.original)), hm.original.shape)
    assert np.hypot(peak[0] - center[0], peak[1] - center[1]) <= 25, (peak, center)


def test_scorecam_top_k_bounds_the_number_of_forward_passes(tmp_path: Path) -> None:
    clf = build_classifier(tmp_path / "m")
    calls: list[int] = []
    real_run = clf.run

    def counting_run(batch: np.ndarray, *, features: bool = False):  # type: ignore[no-untyped-def]
        calls.append(batch.shape[0])
        return real_run(batch, features=features)

    clf.run = counting_run  # type: ignore[method-assign]
    explain(clf, blob_image(100, 100, (50, 50), 10), "lesion", method="scorecam", top_k=1)
    assert calls == [1, 1]  # the scoring pass, then one masked input


def test_gradcam_is_more_faithful_than_a_random_ranking(tmp_path: Path) -> None:
    from cxrtriage.explain.api import random_heatmap

    clf = build_classifier(tmp_path / "m")
    img = blob_image(200, 300, (90, 120), radius=20)
    mi = clf.preprocess(img)
    hm = explain(clf, img, "lesion")
    assert hm.values is not None
    real = deletion_insertion(clf, mi, hm.values, 0, steps=16)
    rand = deletion_insertion(clf, mi, random_heatmap(mi.geometry, label="lesion"), 0, steps=16)
    assert real.deletion_curve[0] == pytest.approx(rand.deletion_curve[0])  # same start: the unmodified input
    worst = deletion_insertion(clf, mi, 1.0 - hm.values, 0, steps=16)  # the map's ranking reversed
    span = float(real.deletion_curve[0] - real.deletion_curve[-1])  # the score range the curves can cover
    assert span > 0.2
    assert real.deletion_auc < rand.deletion_auc - 0.15 * span < worst.deletion_auc - 0.3 * span
    assert real.insertion_auc > rand.insertion_auc + 0.02 > worst.insertion_auc + 0.04


def test_vectorised_label_path_equals_the_per_label_formula(tmp_path: Path) -> None:
    from cxrtriage.explain import read_head
    from cxrtriage.explain.registry import GRADIENT_METHODS, METHODS

    clf = build_classifier(tmp_path / "m")
    mi = clf.preprocess(blob_image(200, 300, (120, 100), 15))
    out = clf.run(mi.array[None], features=True)
    assert out.features is not None
    feats = out.features[0]
    head = read_head(clf.manifest)
    maps = {(h.label, h.method): h for h in explain_input(clf, mi, clf.labels, GRADIENT_METHODS)}
    for name in GRADIENT_METHODS:
        for c, lab in enumerate(clf.labels):
            ctx = CamContext(label=lab, label_index=c, size=64, activations=feats,
                             gradient=analytic_gradient(head, c, feats.shape[1:]))
            v, _, _ = normalize(METHODS[name].compute(ctx), 64)
            h = maps[(lab, name)]
            assert (v is None) == h.empty
            if v is not None:
                np.testing.assert_allclose(h.values, v, atol=1e-6)


def test_reversed_ranking_is_the_exact_reverse_and_is_less_faithful(tmp_path: Path) -> None:
    from cxrtriage.explain.faithfulness import pixel_order

    clf = build_classifier(tmp_path / "m")
    img = blob_image(200, 300, (90, 120), radius=20)
    mi = clf.preprocess(img)
    hm = explain(clf, img, "lesion")
    assert hm.values is not None
    order = pixel_order(hm.values, mi.geometry.placed)
    assert order.size == mi.geometry.placed[2] * mi.geometry.placed[3]  # only the image area, no padding
    real = deletion_insertion(clf, mi, hm.values, 0, steps=8)
    rev = deletion_insertion(clf, mi, hm.values, 0, steps=8, reverse=True)
    assert rev.deletion_curve[-1] == pytest.approx(real.deletion_curve[-1])  # everything removed either way
    assert rev.deletion_auc > real.deletion_auc and rev.insertion_auc < real.insertion_auc
