"""`cxrtriage models import` of torchxrayvision and PyTorch models (seeded random weights): parity with the framework,
exact Grad-CAM, and every command end to end with the imported model."""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch", reason="importing PyTorch/torchxrayvision models needs torch (the train extra)")
if importlib.util.find_spec("torchxrayvision") is None:
    pytest.skip("torchxrayvision is not installed (pip install torchxrayvision)", allow_module_level=True)

from cxrtriage.cli.app import app  # noqa: E402
from cxrtriage.explain import explain_input  # noqa: E402
from cxrtriage.io import read_image  # noqa: E402
from cxrtriage.model import Classifier, load_classifier  # noqa: E402
from cxrtriage.train import byo  # noqa: E402

F = torch.nn.functional
ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_data"
SAMPLE_IMAGES = ("cxr_pa_rg1_half_explicit.dcm", "cxr_pa_rg1_j2k_lossless.dcm", "cxr_pa_rg1_quarter.png")


def _invoke(*args: object) -> tuple[int, str]:
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res.exit_code, res.output


def _realistic(net: torch.nn.Module, last_bn: torch.nn.BatchNorm2d, seed: int) -> None:
    """Seeded statistics for every BatchNorm (eval mode is then not the identity) and a small scale on the last one,
    so that logits are of the size trained models give (a few units) rather than hundreds."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
        last_bn.weight.mul_(0.002)


@pytest.fixture(scope="module")
def densenet(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """torchxrayvision's own DenseNet-121 class (18 outputs), seeded, imported by the command line."""
    tmp = tmp_path_factory.mktemp("xrv")
    torch.manual_seed(0)
    x = byo.xrv()
    net = x.DenseNet(num_classes=18, **x.get_densenet_params("densenet121"))
    _realistic(net, net.features.norm5, 0)
    net.eval()
    torch.save(net.state_dict(), tmp / "weights.pt")
    code, out = _invoke("models", "import", "--xrv", "densenet121-res224-all", "--weights", tmp / "weights.pt",
                        "--out", tmp / "xrv-dn", *(a for name in SAMPLE_IMAGES for a in ("--images", SAMPLE / name)))
    assert code == 0, out
    assert "parity, whole pipeline vs torchxrayvision's" in " ".join(out.split())
    return tmp / "xrv-dn", net


@pytest.mark.slow
def test_xrv_densenet_manifest_from_the_catalogue(densenet: tuple[Path, torch.nn.Module]) -> None:
    folder, _ = densenet
    data = json.loads((folder / "manifest.json").read_text())
    assert data["labels"][:3] == ["atelectasis", "consolidation", "infiltration"] and len(data["labels"]) == 18
    assert data["preprocessing"]["resize"] == "skimage" and data["preprocessing"]["output_range"] == [-1024.0, 1024.0]
    assert data["calibration"]["method"] == "op_norm"
    assert data["calibration"]["op_threshs"]["atelectasis"] == pytest.approx(0.07422872)
    assert data["thresholds"]["effusion"] == {"balanced": {"threshold": 0.5}}
    # torchxrayvision's classifier bias starts at zero and the exporter drops it: the head names none
    assert data["head"] == {"pooling": "gap", "weight": "net.classifier.weight", "bias": None, "transposed": False}
    card = (folder / "MODEL_CARD.md").read_text()
    assert "UNKNOWN" in card and "whole pipeline vs torchxrayvision's own" in card
    parity = data["imported"]["parity"]
    assert parity["graph"]["max_abs_logit_difference"] <= 1e-4 and parity["graph"]["images"] == 3
    assert parity["pipeline"]["max_abs_logit_difference"] <= 1e-3 and parity["pipeline"]["images"] == 3


@pytest.mark.slow
def test_xrv_densenet_parity_recomputed(densenet: tuple[Path, torch.nn.Module]) -> None:
    """Independently of what the import recorded: ONNX vs torch on the same tensors <= 1e-4, and cxrtriage's whole
    pipeline vs torchxrayvision's own (its reader, normalize, crop, scikit-image resize) <= 1e-3, on DICOM and PNG."""
    folder, net = densenet
    clf = load_classifier(folder)
    paths = [SAMPLE / n for n in SAMPLE_IMAGES]
    batch = np.stack([clf.preprocess(read_image(p)).array for p in paths])
    ours = clf.run(batch).logits
    with torch.no_grad():
        theirs = net(torch.from_numpy(batch)).numpy()
    assert np.abs(theirs).max() > 0.5  # logits of a realistic size: the comparison is not vacuous
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
    xrv_pipeline = byo.xrv_pipeline_logits(net, 224, paths)
    for i, p in enumerate(paths):
        ref = xrv_pipeline[p]
        assert not isinstance(ref, str), ref
        assert np.max(np.abs(ours[i] - ref)) <= 1e-3, p.name
    # and the scores are torchxrayvision's op_norm of sigmoid(logit), as its model would output with op_threshs set
    x = byo.xrv()
    points = torch.tensor(x.model_urls["densenet121-res224-all"]["op_threshs"], dtype=torch.float32)
    want = x.op_norm(torch.sigmoid(torch.from_numpy(theirs)), points).numpy()
    np.testing.assert_allclose(clf.run(batch).scores, want, atol=1e-5)


@pytest.mark.slow
@pytest.mark.data
def test_xrv_densenet_pipeline_parity_on_shared_pngs_and_dicoms(densenet: tuple[Path, torch.nn.Module],
                                                               shared_data: Path) -> None:
    """cxrtriage's whole pipeline vs torchxrayvision's own <= 1e-3 on real NIH PNGs and the RG1 DICOMs (uncompressed,
    JPEG 2000 lossless and lossy)."""
    folder, net = densenet
    clf = load_classifier(folder)
    paths = [shared_data / "nih14" / "images" / n for n in ("00000075_000.png", "00000100_000.png", "00000129_000.png")]
    paths += sorted((shared_data / "dicom" / "cxr_real").glob("nema_wg04_RG1_*.dcm"))
    assert len(paths) == 6
    theirs = byo.xrv_pipeline_logits(net, 224, paths)
    for p in paths:
        ref = theirs[p]
        assert not isinstance(ref, str), ref
        ours = clf.run(clf.preprocess(read_image(p)).array[None]).logits[0]
        assert np.max(np.abs(ours - ref)) <= 1e-3, p.name


def _autograd_gradcam(export: torch.nn.Module, arr: np.ndarray, n: int, size: int) -> list[np.ndarray | None]:
    inp = torch.from_numpy(arr[None].astype(np.float32))
    logits, feats = export(inp)
    maps: list[np.ndarray | None] = []
    for c in range(n):
        (g,) = torch.autograd.grad(logits[0, c], [feats], retain_graph=True)
        cam = (g.double().mean(dim=(2, 3), keepdim=True) * feats.detach().double()).sum(1)[0].clamp_min(0)
        if float(cam.max()) <= 1e-12:
            maps.append(None)
            continue
        up = F.interpolate(cam[None, None].float(), size=(size, size), mode="bilinear", align_corners=False)[0, 0]
        up = up.double()
        maps.append(((up - up.min()) / (up.max() - up.min())).numpy())
    return maps


@pytest.mark.slow
def test_xrv_densenet_gradcam_equals_autograd(densenet: tuple[Path, torch.nn.Module]) -> None:
    folder, net = densenet
    clf = load_classifier(folder)
    export = byo.XrvDenseNetExport(net).eval()
    compared = 0
    for name in SAMPLE_IMAGES[1:]:
        mi = clf.preprocess(read_image(SAMPLE / name))
        ref = _autograd_gradcam(export, mi.array, len(clf.labels), clf.input_size)
        ours = {h.label: h for h in explain_input(clf, mi, clf.labels, ("gradcam",))}
        for c, lab in enumerate(clf.labels):
            if ref[c] is None:
                assert ours[lab].empty
                continue
            assert float(np.max(np.abs(ours[lab].values - ref[c]))) <= 1e-4, (name, lab)
            compared += 1
    assert compared >= 18  # most of the 36 maps are not empty


@pytest.mark.slow
def test_commands_end_to_end_with_the_imported_model(densenet: tuple[Path, torch.nn.Module], tmp_path: Path) -> None:
    folder, _ = densenet
    out = tmp_path / "run"
    code, text = _invoke("predict", SAMPLE, "--model", folder, "--out", out, "--heatmaps", "--report", "--dicom",
                         "--workers", "0")
    assert code == 0, text
    rows = list(csv.DictReader((out / "results.csv").open()))
    scored = [r for r in rows if r["status"] == "scored"]
    assert len(scored) >= 3 and all(r["model_name"] == "xrv-dn" for r in scored)
    assert "score_enlarged_cardiomediastinum" in rows[0]
    assert list((out / "heatmaps").glob("*.jpg")) and list((out / "report").glob("*.html"))
    assert list(out.rglob("*.dcm"))
    code, text = _invoke("explain", SAMPLE / "cxr_pa_rg1_quarter.png", "--model", folder, "--out", tmp_path / "ex",
                         "--method", "gradcam", *(a for lab in ("atelectasis", "effusion", "cardiomegaly", "mass",
                                                                 "nodule", "lung_opacity") for a in ("--label", lab)))
    assert code == 0, text
    assert list((tmp_path / "ex").rglob("*.png")), text  # the labels whose map is not empty


@pytest.mark.slow
@pytest.mark.data
def test_evaluate_and_calibrate_with_the_imported_model(densenet: tuple[Path, torch.nn.Module], tmp_path: Path,
                                                       shared_data: Path) -> None:
    folder, _ = densenet
    nih = shared_data / "nih14"
    rows = list(csv.DictReader((nih / "labels.csv").open()))[:40]
    images = tmp_path / "images"
    images.mkdir()
    for r in rows:
        (images / Path(r["image"]).name).symlink_to(nih / r["image"])
    labels = tmp_path / "labels.csv"
    cols = ["Atelectasis", "Effusion", "Infiltration"]
    with labels.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", *cols, "sex"])
        for r in rows:
            w.writerow([Path(r["image"]).name, *(r[c] for c in cols), r["sex"]])
    out = tmp_path / "run"
    code, text = _invoke("predict", images, "--model", folder, "--out", out, "--workers", "0")
    assert code == 0, text
    code, text = _invoke("evaluate", "--results", out / "results.csv", "--labels", labels, "--model", folder,
                         "--json", tmp_path / "ev.json", "--n-boot", "50")
    assert code == 0, text
    ev = json.loads((tmp_path / "ev.json").read_text())
    assert "effusion" in json.dumps(ev)
    code, text = _invoke("calibrate", "--results", out / "results.csv", "--labels", labels, "--model", folder,
                         "--out", tmp_path / "site.toml")
    assert code == 0, text
    assert (tmp_path / "site.toml").is_file()


@pytest.mark.slow
def test_xrv_resnet_import(tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = byo.XrvResNet(50, 18)
    _realistic(net, net.layer4[-1].bn3, 1)
    torch.save(net.state_dict(), tmp_path / "resnet.pt")
    code, out = _invoke("models", "import", "--xrv", "resnet50-res512-all", "--weights", tmp_path / "resnet.pt",
                        "--out", tmp_path / "xrv-rn", "--images", SAMPLE / "cxr_pa_rg1_half_explicit.dcm",
                        "--images", SAMPLE / "cxr_pa_rg1_quarter.png")
    assert code == 0, out
    data = json.loads((tmp_path / "xrv-rn" / "manifest.json").read_text())
    # 'Lung Lesion' and 'Enlarged Cardiomediastinum' have no operating point in its catalogue: ignored outputs
    assert data["labels"][14] is None and data["labels"][17] is None and data["preprocessing"]["size"] == 512
    assert data["head"]["weight"] == "net.fc.weight"
    parity = data["imported"]["parity"]
    assert parity["graph"]["max_abs_logit_difference"] <= 1e-4 and parity["graph"]["images"] == 2
    assert parity["pipeline"]["max_abs_logit_difference"] <= 1e-3 and parity["pipeline"]["images"] == 2
    clf = load_classifier(tmp_path / "xrv-rn")
    assert len(clf.labels) == 16 and clf.manifest.n_outputs == 18


CUSTOM_NET = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, n: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 5, 2, 2), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, n)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.body(x)), 1))


def build():
    return Net()
'''


@pytest.mark.slow
def test_custom_pytorch_cnn_and_torchscript(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mynets.py").write_text(CUSTOM_NET)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import mynets  # type: ignore[import-not-found]

    torch.manual_seed(2)
    net = mynets.build()
    _realistic(net, net.body[4], 2)
    net.eval()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('labels = ["Effusion", "-", "Lung Opacity"]\n[preprocessing]\nsize = 96\ngeometry = "letterbox"\n')
    code, out = _invoke("models", "import", "--pytorch", "mynets:build", "--weights", tmp_path / "w.pt",
                        "--recipe", recipe, "--out", tmp_path / "custom", "--images", SAMPLE / "cxr_pa_rg1_quarter.png")
    assert code == 0, out
    clf = load_classifier(tmp_path / "custom")
    assert isinstance(clf, Classifier) and clf.labels == ("effusion", "lung_opacity")
    assert clf.manifest.head is not None and clf.manifest.head.weight == "net.fc.weight"
    mi = clf.preprocess(read_image(SAMPLE / "cxr_pa_rg1_quarter.png"))
    with torch.no_grad():
        ref = net(torch.from_numpy(mi.array[None])).numpy()[0, [0, 2]]
    np.testing.assert_allclose(clf.run(mi.array[None]).logits[0], ref, atol=1e-4)
    maps = explain_input(clf, mi, clf.labels, ("gradcam",))
    assert any(not h.empty for h in maps)

    torch.jit.script(net).save(str(tmp_path / "net.ts"))
    code, out = _invoke("models", "import", "--torchscript", tmp_path / "net.ts", "--labels", "a,b,c", "--size", "96",
                        "--out", tmp_path / "ts", "--images", SAMPLE / "cxr_pa_rg1_quarter.png")
    assert code == 0, out
    ts = load_classifier(tmp_path / "ts")
    assert ts.manifest.head is None and not ts.has_features
    assert json.loads((tmp_path / "ts" / "manifest.json").read_text())["imported"]["parity"]["graph"][
        "max_abs_logit_difference"] <= 1e-4


@pytest.mark.slow
@pytest.mark.data
def test_models_validate_writes_a_new_sealed_version(densenet: tuple[Path, torch.nn.Module], tmp_path: Path,
                                                    shared_data: Path) -> None:
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(densenet[0], folder)
    nih = shared_data / "nih14"
    rows = list(csv.DictReader((nih / "labels.csv").open()))[:30]
    images = tmp_path / "images"
    images.mkdir()
    for r in rows:
        (images / Path(r["image"]).name).symlink_to(nih / r["image"])
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "Effusion", "Infiltration", "sex"])
        for r in rows:
            w.writerow([Path(r["image"]).name, r["Effusion"], r["Infiltration"], r["sex"]])
    before = load_classifier(folder).manifest
    code, out = _invoke("models", "validate", folder, images, "--labels", labels, "--out", tmp_path / "val",
                        "--by", "sex", "--n-boot", "50", "--workers", "0")
    assert code == 0, out
    after = load_classifier(folder).manifest  # loads: sealed, graph checked
    assert after.version.startswith("1.0.0-validated.") and after.integrity != before.integrity
    local = after.metrics["local_validation"]
    assert set(local["labels"]) == {"effusion", "infiltration"} and "sex" in local["subgroups"]
    assert 0.0 <= local["labels"]["effusion"]["auroc"] <= 1.0 and len(local["labels"]["effusion"]["auroc_ci95"]) == 2
    card = (folder / "MODEL_CARD.md").read_text()
    assert "## Local validation" in card and "| effusion | 30 |" in card
    assert list((folder / "history").glob("manifest-1.0.0-*.json"))


@pytest.mark.slow
def test_weights_file_that_is_a_whole_pickled_xrv_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torchxrayvision's DenseNet weights files pickle the whole model under `torchxrayvision.models`: they are read
    without that package (its classes become an empty shell) and give the same tensors."""
    import sys
    import types

    x = byo.xrv()
    fake = types.ModuleType("torchxrayvision.models")
    package = types.ModuleType("torchxrayvision")
    package.models = fake  # type: ignore[attr-defined]
    for cls in (x.DenseNet, x._DenseLayer, x._DenseBlock, x._Transition):
        monkeypatch.setattr(cls, "__module__", "torchxrayvision.models")
        setattr(fake, cls.__name__, cls)
    with monkeypatch.context() as m:  # the module path exists only while the file is written, as on its author's machine
        m.setitem(sys.modules, "torchxrayvision", package)
        m.setitem(sys.modules, "torchxrayvision.models", fake)
        torch.manual_seed(3)
        net = x.DenseNet(num_classes=18, **x.get_densenet_params("densenet121")).eval()
        torch.save(net, tmp_path / "whole.pt")
    state = byo.load_state_dict(tmp_path / "whole.pt")
    ref = net.state_dict()
    assert set(state) == set(ref) and all(torch.equal(state[k], ref[k]) for k in ref)
