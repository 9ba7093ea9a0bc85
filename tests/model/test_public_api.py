"""The public API of the package: lazy, light imports."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_import_cxrtriage_is_light() -> None:
    code = "import sys, cxrtriage; print(sorted(m for m in ('onnxruntime', 'pydicom', 'cv2', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


def test_lazy_names_resolve() -> None:
    import cxrtriage
    from cxrtriage.io import read_image
    from cxrtriage.model import load_model
    from cxrtriage.pipeline.predict import predict

    assert cxrtriage.load_model is load_model
    assert cxrtriage.read_image is read_image
    assert cxrtriage.predict is predict
    with pytest.raises(AttributeError):
        _ = cxrtriage.no_such_thing  # type: ignore[attr-defined]
