"""cxrtriage: chest X-ray inference and triage for decision support (never autonomous diagnosis)."""

from __future__ import annotations

import logging

__version__ = "0.1.0"

logging.getLogger("cxrtriage").addHandler(logging.NullHandler())
