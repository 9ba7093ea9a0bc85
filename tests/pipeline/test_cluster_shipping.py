"""Models and settings reach the Ray workers by content, and a worker refuses bytes that are not what the driver
loaded (no Ray needed: these are the functions each worker runs)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from factories import make_tiny_classifier

from cxrtriage.errors import ConfigError, ModelError
from cxrtriage.io import SelectionRules
from cxrtriage.model import load_classifier
from cxrtriage.model.manifest import write_sealed_manifest
from cxrtriage.pipeline.cluster.shipping import Blob, pack, pack_model, unpack, unpack_model


def test_a_shipped_model_loads_on_the_worker_and_scores_as_the_original(tmp_path: Path) -> None:
    original = load_classifier(make_tiny_classifier(tmp_path / "m"), device="cpu")
    package = pack_model(original.manifest)
    worker = unpack_model(package, tmp_path / "worker")
    assert worker.manifest.path == (tmp_path / "worker" / "manifest.json").resolve()  # its own copy, not the path
    assert (worker.manifest.integrity, worker.manifest.sha256) == (original.manifest.integrity, original.manifest.sha256)
    batch = np.random.default_rng(0).random((3, 1, 16, 16), dtype=np.float32)
    np.testing.assert_array_equal(worker.run(batch).scores, original.run(batch).scores)


def test_bytes_changed_on_the_way_are_refused(tmp_path: Path) -> None:
    package = pack_model(load_classifier(make_tiny_classifier(tmp_path / "m"), device="cpu").manifest)
    flipped = bytes([package.onnx.data[0] ^ 1]) + package.onnx.data[1:]
    broken = dataclasses.replace(package, onnx=dataclasses.replace(package.onnx, data=flipped))
    with pytest.raises(ConfigError, match="sha256 .* not the"):
        unpack_model(broken, tmp_path / "worker")


def test_a_consistent_but_edited_manifest_is_refused_by_its_seal(tmp_path: Path) -> None:
    """Bytes and sha256 agree (someone edited the manifest and re-hashed the bytes): the manifest's seal refuses it."""
    package = pack_model(load_classifier(make_tiny_classifier(tmp_path / "m"), device="cpu").manifest)
    data = json.loads(package.manifest.data)
    data["thresholds"]["effusion"]["balanced"]["threshold"] = 0.01
    edited = Blob.of(package.manifest.what, json.dumps(data).encode())
    with pytest.raises(ModelError, match="does not match its integrity"):
        unpack_model(dataclasses.replace(package, manifest=edited), tmp_path / "worker")


def test_another_sealed_model_is_refused(tmp_path: Path) -> None:
    """A resealed manifest passes the loader, but it is not the model the driver loaded: the worker stops."""
    package = pack_model(load_classifier(make_tiny_classifier(tmp_path / "m"), device="cpu").manifest)
    data = json.loads(package.manifest.data)
    data["thresholds"]["effusion"]["balanced"]["threshold"] = 0.01
    resealed = write_sealed_manifest(tmp_path / "other" / "manifest.json", data).read_bytes()
    other = dataclasses.replace(package, manifest=Blob.of(package.manifest.what, resealed))
    with pytest.raises(ModelError, match="but the driver loaded"):
        unpack_model(other, tmp_path / "worker")


def test_settings_travel_pickled_and_checked() -> None:
    rules = SelectionRules(modalities=("DX",))
    blob = pack("rules", rules)
    assert unpack(blob) == rules
    with pytest.raises(ConfigError, match="rules: the bytes this worker received"):
        unpack(dataclasses.replace(blob, data=blob.data + b"x"))
