"""Short texts for notes and error messages, made from pydicom's exceptions and warnings."""

from __future__ import annotations

import logging
import warnings

log = logging.getLogger(__name__)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 240 characters), or its type name when it has none."""
    text = str(exc).strip().splitlines()
    return text[0][:240] if text else type(exc).__name__


def warning_notes(caught: list[warnings.WarningMessage]) -> list[str]:
    """Notes for the pydicom warnings that say the file is damaged or non-conformant (the rest is only logged)."""
    notes = []
    for w in caught:
        text = " ".join(str(w.message).split())
        log.debug("pydicom warning: %s", text)
        if "Invalid value for VR" in text or "End of file" in text or "Expected explicit VR" in text:
            notes.append(f"pydicom: {text[:200]}")
    return notes
