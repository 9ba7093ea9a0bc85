"""What one monitoring run found: every slice's drift against the reference, and what was compared."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrtriage import __version__
from cxrtriage.monitor.drift import PSI_ALERT, PSI_WARN, Q_ALERT, Q_WARN, Metric, SliceDrift
from cxrtriage.monitor.profile import Profile


@dataclass(frozen=True, slots=True)
class MonitorReport:
    """The drift of every slice, what was compared, and the files written."""

    inputs: tuple[str, ...]
    reference: Profile
    reference_inputs: tuple[str, ...]
    labels: tuple[str, ...]
    model: str
    slices: tuple[SliceDrift, ...]
    period: str
    min_n: int
    duplicates: int = 0
    warnings: tuple[str, ...] = ()
    created: str = ""
    json_path: Path | None = None
    html_path: Path | None = None

    @property
    def alerts(self) -> list[tuple[SliceDrift, Metric]]:
        """(slice, metric) of every metric at level ``alert``."""
        return [(s, m) for s in self.slices for m in s.metrics if m.level == "alert"]

    @property
    def judged(self) -> int:
        """How many metrics were judged (their p-values adjusted together)."""
        return sum(m.q_value is not None for s in self.slices for m in s.metrics)

    @property
    def warns(self) -> list[tuple[SliceDrift, Metric]]:
        """(slice, metric) of every metric at level ``warn``."""
        return [(s, m) for s in self.slices for m in s.metrics if m.level == "warn"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "cxrtriage_version": __version__, "created": self.created, "model": self.model,
            "inputs": list(self.inputs),
            "reference": {"name": self.reference.name, "kind": self.reference.kind, "rows": self.reference.rows,
                          "scored": self.reference.scored, "inputs": list(self.reference_inputs)},
            "labels": list(self.labels), "period": self.period, "duplicates_dropped": self.duplicates,
            "levels": {"psi_warn": PSI_WARN, "psi_alert": PSI_ALERT, "q_warn": Q_WARN, "q_alert": Q_ALERT,
                       "min_n": self.min_n},
            "alerts": [_brief(s, m) for s, m in self.alerts],
            "warns": [_brief(s, m) for s, m in self.warns],
            "warnings": list(self.warnings),
            "slices": [s.to_dict() for s in self.slices],
        }


def _brief(s: SliceDrift, m: Metric) -> dict[str, Any]:
    return {"slice": s.label, "metric": m.name, "psi": m.psi, "p_value": m.p_value, "q_value": m.q_value}
