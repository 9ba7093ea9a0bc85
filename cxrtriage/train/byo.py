"""Import torchxrayvision and PyTorch classifiers: rebuild the network, export it to ONNX with its feature map, and run
the framework's own pipeline for the parity check (the ``train`` extra: torch; never imported by ``predict``).

torchxrayvision cannot be imported here: its ``models`` and ``datasets`` modules import torchvision, whose PyPI wheel
does not load with the CPU build of torch (``operator torchvision::nms does not exist``). What an import needs from it
is small and needs no torchvision: the DenseNet classes, ``op_norm`` and the weights catalogue ``model_urls`` (labels,
``op_threshs``, input resolution) in ``models.py``; ``XRayCenterCrop`` and ``XRayResizer`` in ``datasets.py``; the
reading and ``normalize`` in ``utils.py``. ``xrv()`` takes exactly those definitions from the installed package's own
source files (parsed with ``ast``, executed as written) without executing the modules that import torchvision, so the
parity check runs torchxrayvision's real code. Its ResNet is torchvision's ResNet-50/101 with a one-channel first
convolution: ``XrvResNet`` builds that network with the same parameter names, so torchxrayvision's ResNet weights
files (state dicts of it) load strictly.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import math
import pickle
import sys
import types
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 (the name torchxrayvision's code uses)
from torch import nn

from cxrtriage.errors import ConfigError, ModelError
from cxrtriage.io import read_image
from cxrtriage.model.importer import (
    ImportSpec,
    Parity,
    compare,
    detect_head,
    label_name,
    onnx_logits,
    parity_images,
    write_model_folder,
)
from cxrtriage.model.manifest import sha256_file
from cxrtriage.preprocess import GeometryMode, IntensityMode, PreprocessRecipe, ResizeMode, to_model_input
from cxrtriage.train.export import export_onnx

XRV_PACKAGE = "torchxrayvision"


def xrv_recipe(size: int) -> PreprocessRecipe:
    """torchxrayvision's preprocessing: values scaled from the nominal maximum (2**BitsStored - 1, 255 for 8-bit
    images) to [-1024, 1024], its centre crop, scikit-image's resize; no VOI window (its default ``voi_lut=False``)."""
    return PreprocessRecipe(size=size, geometry=GeometryMode.CENTER_CROP, intensity=IntensityMode.NOMINAL,
                            output_range=(-1024.0, 1024.0), resize=ResizeMode.SKIMAGE)


# --------------------------------------------------------------------------- torchxrayvision without torchvision


def _source_dir() -> Path:
    spec = importlib.util.find_spec(XRV_PACKAGE)  # finds the package without executing it
    if spec is None or spec.origin is None:
        raise ConfigError(f"{XRV_PACKAGE} is not installed; `pip install {XRV_PACKAGE}` (its torchvision need not load)")
    return Path(spec.origin).parent


def _take(path: Path, names: Sequence[str], namespace: dict[str, Any]) -> None:
    """Execute the top-level definitions ``names`` (classes, functions, and every statement assigning to them) of
    ``path`` in ``namespace``, in file order."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    wanted = set(names)

    def assigns(node: ast.stmt) -> set[str]:
        targets = node.targets if isinstance(node, ast.Assign) else []
        out: set[str] = set()
        for t in targets:
            base = t.value if isinstance(t, ast.Subscript) else t
            if isinstance(base, ast.Name):
                out.add(base.id)
        return out

    body = [n for n in tree.body if (isinstance(n, ast.ClassDef | ast.FunctionDef) and n.name in wanted)
            or (assigns(n) & wanted)]
    found = {n.name for n in body if isinstance(n, ast.ClassDef | ast.FunctionDef)} | set().union(*map(assigns, body))
    missing = wanted - found
    if missing:
        raise ConfigError(f"{path}: {sorted(missing)} not found in this version of {XRV_PACKAGE}")
    exec(compile(ast.Module(body=body, type_ignores=[]), str(path), "exec"), namespace)  # noqa: S102


@cache
def xrv() -> types.SimpleNamespace:
    """torchxrayvision's own definitions that an import needs (see the module docstring)."""
    root = _source_dir()
    import skimage  # torchxrayvision's reading and resizing need it (an import-time dependency only)
    import skimage.io
    import skimage.transform

    base = {"torch": torch, "nn": nn, "F": F, "np": np, "OrderedDict": OrderedDict, "List": list,
            "warnings": warnings, "skimage": skimage, "PathLike": PathLike, "ndarray": np.ndarray, "sys": sys,
            "__name__": "cxrtriage_xrv_source"}
    utils: dict[str, Any] = dict(base, warning_log={})
    _take(root / "utils.py", ["normalize", "load_image", "read_xray_dcm", "fix_resolution", "warn_normalization"],
          utils)
    datasets: dict[str, Any] = dict(base)
    _take(root / "datasets.py", ["default_pathologies", "XRayCenterCrop", "XRayResizer"], datasets)
    models: dict[str, Any] = dict(base, datasets=types.SimpleNamespace(**datasets), utils=types.SimpleNamespace(**utils))
    _take(root / "models.py", ["model_urls", "_DenseLayer", "_DenseBlock", "_Transition", "DenseNet", "op_norm",
                               "get_densenet_params"], models)
    return types.SimpleNamespace(**{k: v for d in (utils, datasets, models) for k, v in d.items() if k not in base})


class _Bottleneck(nn.Module):
    """torchvision's ResNet Bottleneck (stride on the 3x3 convolution), with its parameter names."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        out = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != out:
            self.downsample = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        short = x if self.downsample is None else self.downsample(x)
        out: torch.Tensor = self.relu(y + short)
        return out


class XrvResNet(nn.Module):
    """torchxrayvision's ResNet: torchvision's ResNet-50/101 (same parameter names) with a one-channel ``conv1``."""

    def __init__(self, depth: int = 50, num_classes: int = 18) -> None:
        super().__init__()
        blocks = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}.get(depth)
        if blocks is None:
            raise ConfigError(f"ResNet depth {depth}: torchxrayvision has ResNet-50 and ResNet-101")
        self.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512), strict=True)):
            layers = []
            for j in range(n):
                layers.append(_Bottleneck(cin, width, 2 if (j == 0 and i > 0) else 1))
                cin = width * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(cin, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last (post-ReLU) feature map."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in ("layer1", "layer2", "layer3", "layer4"):
            x = getattr(self, name)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(torch.flatten(self.avgpool(self.features(x)), 1))
        return out


# --------------------------------------------------------------------------- weights files


class _Shell(nn.Module):
    """Stands in for a torchxrayvision/torchvision class while a pickled model is read: only its state is kept."""


class _ShellUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if module.split(".")[0] in (XRV_PACKAGE, "torchvision"):
            return _Shell
        return super().find_class(module, name)


_shell_pickle = types.SimpleNamespace(Unpickler=_ShellUnpickler, load=pickle.load, __name__="pickle")


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: a state dict (also under 'state_dict'/'model_state_dict'), or a whole pickled
    model (torchxrayvision's DenseNet files), read with its torchxrayvision/torchvision classes replaced by a shell
    (the file is trusted as the user's own download, as torchxrayvision itself does with ``weights_only=False``)."""
    try:
        obj: Any = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: weights file not found") from exc
    except Exception:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=False, pickle_module=_shell_pickle)
        except Exception as exc:
            raise ModelError(f"{path}: not a PyTorch weights file torch can read ({type(exc).__name__}: {exc})") from exc
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping | nn.Module):
                inner = obj[key]
                obj = inner.state_dict() if isinstance(inner, nn.Module) else inner
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelError(f"{path}: holds no state dict (a mapping of parameter names to tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], where: Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:3]
        raise ModelError(f"{where}: the weights do not fit the architecture ({' '.join(first)[:400]}); check the "
                         "architecture name, the factory, or the number of labels") from exc


# --------------------------------------------------------------------------- the exported network: (logits, features)


class XrvDenseNetExport(nn.Module):
    """torchxrayvision's DenseNet as it computes its logits, with the post-ReLU feature map as a second output."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net: Any = self.net  # torchxrayvision's class, defined from its source at run time
        feats = F.relu(net.features(x))
        logits: torch.Tensor = net.classifier(F.adaptive_avg_pool2d(feats, (1, 1)).flatten(1))
        return logits, feats


class FeatureExport(nn.Module):
    """A network that ends in global average pooling + one linear layer, with the pooled feature map (the output or
    input of module ``source``) as a second output."""

    def __init__(self, net: nn.Module, source: str, use_input: bool) -> None:
        super().__init__()
        self.net, self.source, self.use_input = net, source, use_input
        self._held: list[torch.Tensor] = []
        module = dict(net.named_modules())[source]
        module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self._held.append(args[0] if self.use_input else output)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._held.clear()
        logits = self.net(x)
        return logits, self._held[-1]


def find_gap_head(net: nn.Module, size: int) -> tuple[str, bool, str]:
    """(module, whether its input rather than its output, head Linear) such that the network's logits are the head
    applied to the spatial mean of that module's 4-D tensor. ``ModelError`` when the network does not end so."""
    calls: list[tuple[str, nn.Module, Any, Any]] = []
    hooks = [m.register_forward_hook(lambda mod, a, o, n=n: calls.append((n, mod, a, o)))
             for n, m in net.named_modules() if n]
    try:
        with torch.no_grad():
            out = net(torch.randn(2, 1, size, size, generator=torch.Generator().manual_seed(0)))
    finally:
        for h in hooks:
            h.remove()
    linear = [(n, m, a, o) for n, m, a, o in calls if isinstance(m, nn.Linear)]
    if not linear or not isinstance(out, torch.Tensor) or not torch.equal(linear[-1][3], out):
        raise ModelError("the network does not end in one linear layer whose output is the logits; Grad-CAM needs a "
                         "GAP + linear head (import it without heat maps: --no-features)")
    head_name, _, head_args, _ = linear[-1]
    pooled = head_args[0]
    for name, _, args, output in reversed(calls):
        for use_input, t in ((False, output), (True, args[0] if args else None)):
            # a 1 x 1 map is the pooled vector itself (the pooling layer's output), not the map it pools
            if isinstance(t, torch.Tensor) and t.ndim == 4 and t.shape[:2] == pooled.shape and t.shape[2] * t.shape[3] > 1:
                if torch.allclose(t.mean(dim=(2, 3)), pooled, rtol=1e-5, atol=1e-6):
                    return name, use_input, head_name
    raise ModelError("no 4-D feature map whose spatial mean is the head's input was found; the network's head is not "
                     "global average pooling + one linear layer (import it with --no-features)")


# --------------------------------------------------------------------------- parity


def torch_logits(net: nn.Module, batch: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = net(torch.from_numpy(np.ascontiguousarray(batch, np.float32)))
    logits = out[0] if isinstance(out, tuple) else out
    arr: np.ndarray = logits.double().numpy()
    return arr


def graph_parity(net: nn.Module, onnx_path: Path, input_name: str, recipe: PreprocessRecipe,
                 images: Sequence[Path]) -> tuple[Any, ...]:
    """The ONNX graph and the framework on the same input tensors (cxrtriage's preprocessing of each image)."""
    ours = onnx_logits(onnx_path, input_name, "logits", recipe, images)
    theirs: dict[Path, np.ndarray | str] = {}
    for path in images:
        if isinstance(ours[path], str):
            continue
        theirs[path] = torch_logits(net, to_model_input(read_image(path), recipe).array[None])[0]
    return compare(ours, theirs)


def xrv_pipeline_logits(net: nn.Module, size: int, images: Sequence[Path]) -> dict[Path, np.ndarray | str]:
    """torchxrayvision's own pipeline, as its README runs a model: ``load_image`` (its DICOM reader or skimage with
    ``normalize(img, 255)``), ``XRayCenterCrop``, ``XRayResizer`` (scikit-image), then the network's logits."""
    x = xrv()
    crop, resize = x.XRayCenterCrop(), x.XRayResizer(size)
    out: dict[Path, np.ndarray | str] = {}
    for path in images:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                img = resize(crop(x.load_image(str(path))))
        except Exception as exc:  # its reader refuses what it does not support (16-bit PNG, RGB DICOM...)
            out[path] = f"torchxrayvision cannot read it ({type(exc).__name__}: {str(exc)[:120]})"
            continue
        out[path] = torch_logits(net, img[None])[0]
    return out


# --------------------------------------------------------------------------- imports


def _finish(net: nn.Module, export: nn.Module, out: Path, spec: ImportSpec, images: Sequence[Path], *,
            features: bool, xrv_pipeline: bool, force: bool, work: Path) -> Path:
    net.eval()
    export.eval()
    onnx_path = work / "model.onnx"
    names = ("logits", "features") if features else ("logits",)
    export_onnx(export, onnx_path, spec.recipe.size, names)
    head = detect_head(onnx_path, "logits", "features") if features else None
    files = parity_images(images)
    graph = graph_parity(export, onnx_path, "image", spec.recipe, files)
    pipeline: tuple[Any, ...] = ()
    if xrv_pipeline:
        ours = onnx_logits(onnx_path, "image", "logits", spec.recipe, files)
        pipeline = compare(ours, xrv_pipeline_logits(net, spec.recipe.size, files))
    parity = Parity(graph=graph, pipeline=pipeline, pipeline_name=XRV_PACKAGE if xrv_pipeline else "")
    return write_model_folder(out, onnx_path, spec, parity, head=head, force=force)


def import_xrv(arch: str, weights: Path, out: Path, *, name: str, version: str, images: Sequence[Path],
               labels: Sequence[str | None] | None = None, force: bool = False, work: Path) -> Path:
    """A torchxrayvision model: ``arch`` is a weights name of its catalogue (``densenet121-res224-all``,
    ``resnet50-res512-all``...: labels, ``op_threshs`` and resolution come from it) or a bare architecture
    (``densenet121``, ``resnet50``, ``resnet101``; then ``labels`` are needed)."""
    x = xrv()
    entry = x.model_urls.get(arch)
    family = arch.split("-")[0]
    if entry is None and labels is None:
        known = sorted(k for k in x.model_urls if "-" in k)
        raise ConfigError(f"--xrv {arch}: not a torchxrayvision weights name ({', '.join(known)}); for a bare "
                          "architecture (densenet121, resnet50, resnet101) give --labels")
    raw_labels: list[str | None] = list(labels) if labels is not None else [label_name(t) for t in entry["labels"]]
    size = int(entry.get("input_resolution", 224)) if entry else (512 if family.startswith("resnet") else 224)
    points = list(entry.get("op_threshs", [])) if entry else []
    notes: list[str] = []
    if family.startswith("densenet"):
        net = x.DenseNet(num_classes=len(raw_labels), **x.get_densenet_params(family))
        export: nn.Module = XrvDenseNetExport(net)
    elif family in ("resnet50", "resnet101"):
        net = XrvResNet(int(family.removeprefix("resnet")), num_classes=len(raw_labels))
        export = FeatureExport(net, "layer4", use_input=False)
    else:
        raise ConfigError(f"--xrv {arch}: torchxrayvision architectures are densenet121/161/169/201, resnet50, resnet101")
    _load_strict(net, load_state_dict(weights), weights)
    op_threshs: dict[str, float] = {}
    for i, lab in enumerate(raw_labels):
        t = points[i] if i < len(points) else math.nan
        if lab is not None and points and not (isinstance(t, float | int) and math.isfinite(t) and 0 < t < 1):
            notes.append(f"output {i} ('{lab}') has no operating point in torchxrayvision's catalogue (untrained "
                         "there): it is ignored")
            raw_labels[i] = None
        elif lab is not None and points:
            op_threshs[lab] = float(t)
    calibration = {"method": "op_norm", "op_threshs": op_threshs} if op_threshs else None
    spec = ImportSpec(
        name=name, version=version, task="classification", labels=tuple(raw_labels), recipe=xrv_recipe(size),
        source=f"torchxrayvision {arch} ({type(net).__name__}), weights {weights.name} (sha256 {sha256_file(weights)})",
        features_output="features", calibration=calibration,
        operating_points=dict.fromkeys(op_threshs, 0.5),  # op_norm maps each operating point to 0.5
        training_data=str(entry.get("description", "")) if entry else "",
        notes=(*notes, "scores are torchxrayvision's op_norm of sigmoid(logit): 0.5 is its operating point")
        if op_threshs else tuple(notes),
    )
    return _finish(net, export, out, spec, images, features=True, xrv_pipeline=True, force=force, work=work)


def _factory(ref: str) -> Callable[[], nn.Module]:
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"--pytorch {ref}: give MODULE:FACTORY, e.g. mynets:build (a callable returning the network)")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # a user's own module beside where they run the import
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"--pytorch {ref}: cannot import {module_name} ({exc})") from exc
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"--pytorch {ref}: {module_name} has no callable '{attr}'")
    return fn  # type: ignore[no-any-return]


def import_pytorch(ref: str | None, weights: Path | None, torchscript: Path | None, out: Path, *, name: str,
                   version: str, labels: Sequence[str | None], recipe: PreprocessRecipe, images: Sequence[Path],
                   features: bool = True, force: bool = False, work: Path) -> Path:
    """A PyTorch model: ``ref`` MODULE:FACTORY plus a state dict, or a TorchScript file. The GAP + linear head is
    found by running the network once (``find_gap_head``); a TorchScript module is exported without features."""
    notes: list[str] = []
    if torchscript is not None:
        net: nn.Module = torch.jit.load(str(torchscript), map_location="cpu")
        export: nn.Module = net
        features = False
        notes.append("TorchScript: exported without a feature map (gradient CAMs unavailable; eigencam needs one too; "
                     "occlusion works)")
        source = f"TorchScript {torchscript.name} (sha256 {sha256_file(torchscript)})"
    else:
        assert ref is not None
        net = _factory(ref)()
        if weights is not None:
            _load_strict(net, load_state_dict(weights), weights)
        net.eval()
        export = net
        if features:
            module, use_input, head = find_gap_head(net, recipe.size)
            export = FeatureExport(net, module, use_input)
            notes.append(f"head: linear layer '{head}' over the global average of "
                         f"{'the input' if use_input else 'the output'} of '{module}'")
        source = f"PyTorch {ref}" + (f", weights {weights.name} (sha256 {sha256_file(weights)})" if weights else "")
    spec = ImportSpec(name=name, version=version, task="classification", labels=tuple(labels), recipe=recipe,
                      source=source, features_output="features" if features else None, notes=tuple(notes))
    return _finish(net, export, out, spec, images, features=features, xrv_pipeline=False, force=force, work=work)
