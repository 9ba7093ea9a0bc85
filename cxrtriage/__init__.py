"""cxrtriage: chest X-ray inference and triage for decision support (never autonomous diagnosis)."""

from __future__ import annotations

import importlib
import logging
from typing import Any

__version__ = "0.1.0"

logging.getLogger("cxrtriage").addHandler(logging.NullHandler())

# Public API, imported lazily so that `import cxrtriage` stays light (no onnxruntime, no pydicom).
# name -> module that defines it. Add a line here to publish another function.
_LAZY: dict[str, str] = {
    "read_image": "cxrtriage.io",
    "load_model": "cxrtriage.model",
    "explain": "cxrtriage.explain",
    "predict": "cxrtriage.pipeline.predict",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cxrtriage' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
