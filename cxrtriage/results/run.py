"""``run.json``: the provenance of one predict run (tool, model, thresholds, policy, inputs, counts, device).

``RunRecord`` is written by the pipeline and read back by the reports (and anything else that must say
which model, version and threshold produced a result). The pipeline's hooks contribute their own sections
(``policy``, ``segmenter``, ``quality``, ``heatmaps``...) through ``RunRecord.merged``.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from cxrtriage.errors import InputError
from cxrtriage.files import atomic_write

RUN_JSON = "run.json"
OPERATING_POINTS = ("rule_out", "balanced")


def utc_now() -> str:
    """ISO 8601 time in UTC, to the second (``2026-11-21T14:03:07+00:00``)."""
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


@dataclass(frozen=True, slots=True)
class ModelRef:
    """Which model: name, version, sha256 of the ONNX file, the manifest it was loaded from and that manifest's
    integrity (the sha256 sealing its whole content: thresholds, calibration, labels...; '' when not recorded)."""

    name: str
    version: str
    sha256: str
    manifest: str = ""
    integrity: str = ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "sha256": self.sha256, "integrity": self.integrity,
                "manifest": self.manifest}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelRef:
        """A model section of run.json (``model`` or ``segmenter``); a missing key reads as ''."""
        return cls(name=str(data.get("name", "")), version=str(data.get("version", "")),
                   sha256=str(data.get("sha256", "")), manifest=str(data.get("manifest", "") or ""),
                   integrity=str(data.get("integrity", "") or ""))


@dataclass(frozen=True, slots=True)
class RunRecord:
    """Everything ``run.json`` holds, in the order it is written.

    ``thresholds`` maps each label to ``{"rule_out", "balanced", "threshold", "kind", "source"}`` (the threshold
    the policy decided on is ``threshold``); ``sections`` holds the hooks' own sections (``segmenter``, ``quality``,
    ``heatmaps``, ``notes``...).
    """

    tool_version: str
    model: ModelRef
    operating_point: str = "balanced"
    thresholds: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    policy: Mapping[str, Any] | None = None
    priority_levels: tuple[str, ...] = ()
    site_file: str = ""
    started_at: str = ""
    finished_at: str = ""
    cwd: str = ""
    inputs: tuple[str, ...] = ()
    counts: Mapping[str, Any] = field(default_factory=dict)
    device: str = ""
    execution_providers: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    hooks: tuple[str, ...] = ()
    sections: Mapping[str, Any] = field(default_factory=dict)

    def merged(self, extra: Mapping[str, Any]) -> RunRecord:
        """A copy with a hook's provenance added: known keys replace (mappings merge one level deep), others
        become sections."""
        known = {f.name for f in fields(self)} - {"sections", "model"}
        changes: dict[str, Any] = {}
        sections = dict(self.sections)
        for k, v in extra.items():
            current = getattr(self, k) if k in known else sections.get(k)
            if isinstance(v, Mapping) and isinstance(current, Mapping):
                v = {**current, **v}
            if k in known:
                changes[k] = tuple(v) if isinstance(current, tuple) else v
            else:
                sections[k] = v
        return replace(self, sections=sections, **changes)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "sections":
                out.update(value)
            elif f.name == "model":
                out["model"] = value.to_json()
            else:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, where: str = RUN_JSON) -> RunRecord:
        """Parse a ``run.json`` object; ``InputError`` naming ``where`` when the model is not recorded."""
        model = data.get("model")
        if not isinstance(model, Mapping):
            raise InputError(f"{where}: no 'model' object; is this a run.json written by `cxrtriage predict`?")
        names = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in ("model", "sections", "tool_version") or f.name not in data:
                continue
            v = data[f.name]
            values[f.name] = tuple(v) if f.name in _TUPLE_FIELDS and isinstance(v, list) else v
        return cls(
            tool_version=str(data.get("tool_version", "")),
            model=ModelRef.from_json(model),
            sections={k: v for k, v in data.items() if k not in names},
            **values,
        )

    # --- what readers ask of a run

    def threshold_in_force(self, label: str) -> float | None:
        """The threshold the run's policy decided ``label`` on (None when not recorded)."""
        t = self.thresholds.get(label)
        if not isinstance(t, Mapping):
            return None
        v = t.get("threshold")
        return float(v) if isinstance(v, int | float) else None

    @property
    def policy_name(self) -> str:
        return str(self.policy.get("name", "")) if isinstance(self.policy, Mapping) else ""

    @property
    def segmenter(self) -> ModelRef | None:
        seg = self.sections.get("segmenter")
        if not isinstance(seg, Mapping):
            return None
        return ModelRef.from_json(seg)

    @property
    def segmenter_labels(self) -> tuple[str, ...]:
        seg = self.sections.get("segmenter")
        return tuple(str(x) for x in seg.get("labels", ())) if isinstance(seg, Mapping) else ()


_TUPLE_FIELDS = frozenset({"priority_levels", "inputs", "execution_providers", "hooks"})


def write_run_json(out_dir: str | Path, record: RunRecord) -> Path:
    """Write ``OUT/run.json`` atomically."""
    text = json.dumps(record.to_json(), indent=2, ensure_ascii=False, default=str) + "\n"
    return atomic_write(Path(out_dir) / RUN_JSON, text)


def read_run_json(results_dir: str | Path) -> RunRecord | None:
    """The run record of an output folder, or None when it has no ``run.json``.

    Raises:
        InputError: ``run.json`` exists but cannot be read or parsed.
    """
    path = Path(results_dir) / RUN_JSON
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read run provenance ({exc}); fix or delete the file and run the report again") \
            from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: run.json must hold a JSON object")
    return RunRecord.from_json(data, where=str(path))


def recorded_manifest(results: str | Path) -> Path | None:
    """The model manifest a run recorded in its ``run.json`` (``results``: the output folder or a results file in
    it), when that file exists; None otherwise, or when run.json cannot be read (the caller then looks the model up
    by name, and says so if that fails)."""
    folder = Path(results) if Path(results).is_dir() else Path(results).parent
    try:
        run = read_run_json(folder)
    except InputError:
        return None
    if run is None or not run.model.manifest:
        return None
    path = Path(run.model.manifest).expanduser()
    path = path if path.is_absolute() else folder / path
    return path if path.is_file() else None

