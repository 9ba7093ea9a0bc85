"""What the Ray workers need, shipped by content: the model's files and the run's settings, each with its sha256.

Nothing a worker uses is read from a path that would have to exist on every node. The driver loads and validates
the model, the triage policy, the site file and the selection rules, then ships

- the model as the bytes of its ``manifest.json`` and ONNX file (``ModelPackage``): each worker checks their
  sha256, writes them into a private folder and loads them with the ordinary loader, which checks the manifest's
  seal and the ONNX file's sha256 again; the manifest's integrity must then equal the one the driver loaded;
- the hooks of the run (policy and site calibration already parsed), the selection rules and the preprocessing
  recipe as one pickled ``Blob``, whose sha256 each worker checks before it unpickles it.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrtriage.errors import ConfigError, ModelError
from cxrtriage.files import atomic_write
from cxrtriage.model import Classifier, ModelManifest, load_classifier

MANIFEST_FILE = "manifest.json"


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class Blob:
    """Bytes shipped to the workers, with the sha256 the driver computed; ``verified`` checks it where it is used."""

    what: str
    data: bytes
    sha256: str

    @classmethod
    def of(cls, what: str, data: bytes) -> Blob:
        return cls(what, data, sha256_of(data))

    def verified(self) -> bytes:
        """The bytes, once their sha256 equals the driver's (``ConfigError`` naming both otherwise)."""
        actual = sha256_of(self.data)
        if actual != self.sha256:
            raise ConfigError(f"{self.what}: the bytes this worker received have sha256 {actual[:12]}…, not the "
                              f"{self.sha256[:12]}… the driver sent; the run stops rather than use them")
        return self.data


def pack(what: str, value: object) -> Blob:
    """``value`` pickled into a ``Blob`` (the run's hooks, rules, recipe: cxrtriage objects the workers import too)."""
    return Blob.of(what, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))


def unpack(blob: Blob) -> Any:
    """The value of a ``pack``ed blob, after its sha256 is checked."""
    return pickle.loads(blob.verified())


@dataclass(frozen=True, slots=True)
class ModelPackage:
    """A model as bytes: its sealed manifest and its ONNX file (named as the manifest names it), and what the
    driver loaded (name, version, ONNX sha256, manifest integrity), which every worker must find again."""

    name: str
    version: str
    sha256: str
    integrity: str
    manifest: Blob
    onnx_name: str
    onnx: Blob

    @property
    def size(self) -> int:
        return len(self.manifest.data) + len(self.onnx.data)


def pack_model(manifest: ModelManifest) -> ModelPackage:
    """The files of a loaded model, read now (``ModelError`` when they cannot be read)."""
    if manifest.path is None:
        raise ModelError(f"model '{manifest.name}' was not loaded from a manifest file, so it cannot be shipped to Ray "
                         "workers; load it by name or path")
    folder = manifest.path.parent
    onnx_name = manifest.onnx_file.relative_to(folder.resolve()).as_posix()
    try:
        manifest_bytes = manifest.path.read_bytes()
        onnx_bytes = manifest.onnx_file.read_bytes()
    except OSError as exc:
        raise ModelError(f"{folder}: cannot read the model's files to send them to the Ray workers ({exc})") from exc
    return ModelPackage(
        name=manifest.name, version=manifest.version, sha256=manifest.sha256, integrity=manifest.integrity,
        manifest=Blob.of(f"model '{manifest.name}' {MANIFEST_FILE}", manifest_bytes),
        onnx_name=onnx_name, onnx=Blob.of(f"model '{manifest.name}' {onnx_name}", onnx_bytes),
    )


def unpack_model(package: ModelPackage, folder: Path, *, device: str = "cpu", strict_device: bool = False,
                 intra_op_threads: int | None = None, spinning: bool = False) -> Classifier:
    """Write a shipped model into ``folder`` (a private, empty folder of this worker) and load it.

    Raises:
        ConfigError: the bytes differ from what the driver sent (sha256).
        ModelError: the ordinary loader refuses the model (seal, ONNX sha256, graph), or it is not the model the
            driver loaded (another manifest integrity or ONNX sha256).
    """
    manifest_path = folder / MANIFEST_FILE
    onnx_path = folder / package.onnx_name
    if not onnx_path.resolve().is_relative_to(folder.resolve()):
        raise ModelError(f"model '{package.name}': its ONNX file name {package.onnx_name!r} leaves the model folder")
    atomic_write(manifest_path, package.manifest.verified())
    atomic_write(onnx_path, package.onnx.verified())
    model = load_classifier(manifest_path, device=device, strict_device=strict_device,
                            intra_op_threads=intra_op_threads, spinning=spinning)
    m = model.manifest
    if (m.integrity, m.sha256) != (package.integrity, package.sha256):
        raise ModelError(f"model '{package.name}' on this worker has manifest integrity {m.integrity[:12]}… and ONNX "
                         f"sha256 {m.sha256[:12]}…, but the driver loaded {package.integrity[:12]}… and "
                         f"{package.sha256[:12]}…; the run stops rather than score with another model")
    return model
