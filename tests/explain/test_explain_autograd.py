"""The analytic Grad-CAM family on ONNX outputs equals PyTorch autograd Grad-CAM (hooks), on real chest images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxrtriage.explain import explain_input, read_head
from cxrtriage.io.raster import read_raster
from cxrtriage.model import Classifier, load_model
from cxrtriage.model.manifest import SCHEMA_VERSION, sha256_file, write_sealed_manifest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

TOL = 1e-4
METHODS = ("gradcam", "gradcampp", "layercam", "xgradcam", "hirescam")
NIH_IMAGES = ("images/00000100_000.png", "images/00000075_000.png")
IEEE_NON_SQUARE = "images/ARDSSevere.jpg"  # 631 x 790, letterboxed


class SmallNet(nn.Module):
    """Conv + BN + ReLU layers, the post-ReLU map returned as ``features``, then GAP + Linear."""

    def __init__(self, n_labels: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 8, 5, 2, 2), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
        )
        self.head = nn.Linear(32, n_labels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.body(x)
        return self.head(feats.mean(dim=(2, 3))), feats


def _export(model: nn.Module, path: Path, size: int) -> dict[str, object]:
    """Export with the training package's exporter (outputs logits, features) and name the head by value."""
    from cxrtriage.train.export import export_onnx, find_head

    export_onnx(model, path, size, ("logits", "features"))
    return find_head(path, model.head.weight.detach().numpy(), model.head.bias.detach().numpy())


def _build_model(folder: Path, size: int = 96, labels: tuple[str, ...] = ("a", "b", "c")) -> tuple[SmallNet, Classifier]:
    torch.manual_seed(0)
    net = SmallNet(len(labels))
    with torch.no_grad():  # non-trivial BN statistics so that eval mode is not the identity
        for bn in (net.body[1], net.body[4]):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
    net.eval()
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / "model.onnx"
    head = _export(net, onnx_path, size)
    manifest = {
        "schema_version": SCHEMA_VERSION, "onnx_file": "model.onnx", "sha256": sha256_file(onnx_path),
        "name": "torch-small", "version": "0.0.1-test", "task": "classification",
        "input": {"name": "image", "shape": [None, 1, size, size]}, "labels": list(labels),
        "outputs": {"logits": "logits", "features": "features"},
        "head": head,
        "preprocessing": {"size": size, "geometry": "letterbox", "voi": "ignore", "intensity": "percentile"},
    }
    write_sealed_manifest(folder / "manifest.json", manifest)
    clf = load_model(folder)
    assert isinstance(clf, Classifier)
    return net, clf


def autograd_cams(
    net: nn.Module, layer: nn.Module, x: np.ndarray, n_labels: int, size: int
) -> dict[str, list[np.ndarray | None]]:
    """Reference maps from autograd: hooks on ``layer`` (the post-ReLU map), one backward per label.

    The forward hook keeps the layer's output and registers a tensor hook that records d logit_c / d output.
    Same post-processing as cxrtriage: ReLU → bilinear resize (align_corners=False) → min-max; an
    all-zero map is None. Grad-CAM++ uses eq. 19 with no epsilon (zero where the gradient is 0).
    """
    store: dict[str, torch.Tensor] = {}

    def fwd_hook(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
        store["act"] = out
        out.register_hook(lambda g: store.__setitem__("grad", g))

    handle = layer.register_forward_hook(fwd_hook)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: one thread is faster, and kinder to a shared machine
    try:
        inp = torch.from_numpy(x[None].astype(np.float32))
        logits, _ = net(inp)
        maps: dict[str, list[np.ndarray | None]] = {m: [] for m in METHODS}
        for c in range(n_labels):
            # backpropagate only down to the hooked layer (its tensor hook records the gradient)
            torch.autograd.grad(logits[0, c], [store["act"]], retain_graph=True)
            a = store["act"].detach().double()[0]
            g = store["grad"].detach().double()[0]
            s = a.sum(dim=(1, 2), keepdim=True)
            raw = {
                "gradcam": (g.mean(dim=(1, 2), keepdim=True) * a).sum(0),
                "hirescam": (g * a).sum(0),
                "xgradcam": (torch.where(s > 0, (g * a).sum(dim=(1, 2), keepdim=True) / s.clamp_min(1e-300), 0.0) * a).sum(0),
                "layercam": (g.clamp_min(0) * a).sum(0),
            }
            g2, g3 = g**2, g**3
            alpha = torch.where(g != 0, g2 / (2 * g2 + s * g3), torch.zeros_like(g))
            raw["gradcampp"] = ((g.clamp_min(0) * alpha).sum(dim=(1, 2), keepdim=True) * a).sum(0)
            for name, r in raw.items():
                r = r.clamp_min(0)
                if float(r.max()) <= 1e-12:
                    maps[name].append(None)
                    continue
                up = F.interpolate(r[None, None].float(), size=(size, size), mode="bilinear", align_corners=False)[0, 0]
                up = up.double()
                maps[name].append(((up - up.min()) / (up.max() - up.min())).numpy())
        return maps
    finally:
        handle.remove()
        torch.set_num_threads(threads)


def _compare(clf: Classifier, net: nn.Module, layer: nn.Module, image_paths: list[Path]) -> int:
    """Assert equality for every image, label and method; returns the number of non-empty maps compared."""
    compared = 0
    for path in image_paths:
        mi = clf.preprocess(read_raster(path))
        ref = autograd_cams(net, layer, mi.array, len(clf.labels), clf.input_size)
        ours = explain_input(clf, mi, clf.labels, METHODS)
        by_key = {(h.label, h.method): h for h in ours}
        for c, lab in enumerate(clf.labels):
            for m in METHODS:
                h, r = by_key[(lab, m)], ref[m][c]
                if r is None:
                    assert h.empty, f"{path.name} {lab} {m}: autograd map is all zero but ours is not"
                    continue
                assert not h.empty, f"{path.name} {lab} {m}: ours is empty ({h.reason}) but autograd's is not"
                err = float(np.max(np.abs(h.values - r)))
                assert err <= TOL, f"{path.name} {lab} {m}: max |Δ| {err:.2e} > {TOL}"
                compared += 1
    return compared


@pytest.mark.data
def test_analytic_cams_equal_autograd_on_real_images(tmp_path: Path, shared_data: Path) -> None:
    net, clf = _build_model(tmp_path / "torch-small")
    paths = [shared_data / "nih14" / p for p in NIH_IMAGES] + [shared_data / "ieee_lungs" / IEEE_NON_SQUARE]
    # the ONNX graph and torch agree on the logits for these real inputs
    batch = np.stack([clf.preprocess(read_raster(p)).array for p in paths])
    with torch.no_grad():
        t_logits, _ = net(torch.from_numpy(batch))
    np.testing.assert_allclose(clf.run(batch).logits, t_logits.numpy(), atol=1e-4)
    compared = _compare(clf, net, net.body[-1], paths)
    assert compared >= len(paths) * len(METHODS)  # most maps are non-empty: the comparison is not vacuous


@pytest.mark.data
def test_gradcam_differs_from_layercam_so_the_comparison_can_fail(tmp_path: Path, shared_data: Path) -> None:
    """Guard against a comparison that passes for any map: two different methods must disagree."""
    _, clf = _build_model(tmp_path / "torch-small")
    mi = clf.preprocess(read_raster(shared_data / "nih14" / NIH_IMAGES[0]))
    maps = {(h.label, h.method): h for h in explain_input(clf, mi, clf.labels, ("gradcam", "layercam"))}
    diffs = [float(np.max(np.abs(maps[(lab, "gradcam")].values - maps[(lab, "layercam")].values)))
             for lab in clf.labels if not maps[(lab, "gradcam")].empty]
    assert diffs and max(diffs) > 10 * TOL


@pytest.mark.data
def test_shipped_classifier_cams_equal_autograd(shared_data: Path, repo_root: Path) -> None:
    """The default model: rebuild the torch net from models/cxr-classifier/model.pt and compare."""
    folder = repo_root / "models" / "cxr-classifier"
    if not (folder / "model.pt").is_file() or not (folder / "manifest.json").is_file():
        pytest.skip(f"{folder}/model.pt not built yet (the training package produces it)")
    from cxrtriage.train.classifier import build_model

    ckpt = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
    net = build_model(ckpt["config"])
    net.load_state_dict(ckpt["state_dict"])
    net.eval()
    clf = load_model(folder)
    assert isinstance(clf, Classifier)
    read_head(clf.manifest)
    paths = [shared_data / "nih14" / p for p in NIH_IMAGES]
    compared = _compare(clf, net, _feature_layer(net), paths)
    assert compared > 0


def _feature_layer(net: nn.Module) -> nn.Module:
    """The module whose output is the post-ReLU feature map returned as ``features``."""
    blocks = getattr(net, "blocks", None)
    if blocks is None:
        raise AssertionError("unknown classifier layout: expected a 'blocks' sequence ending with the feature map")
    return blocks[-1]
