"""The run's provenance (``DIR/run.json``): tool, model, thresholds, policy, inputs, counts, device, hooks."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from cxrtriage import __version__
from cxrtriage.model import Classifier
from cxrtriage.pipeline.config import PredictConfig
from cxrtriage.pipeline.hooks.base import PredictHook
from cxrtriage.results import ModelRef, RunRecord


def run_record(
    config: PredictConfig,
    model: Classifier,
    *,
    started_at: str,
    finished_at: str,
    counts: Mapping[str, int],
    hooks: Iterable[PredictHook],
    workers: int | None = None,
) -> RunRecord:
    """The content of ``run.json``; each hook adds its part (policy and site from triage, the segmenter from the
    lungs, the quality limits, the heat-map method). ``workers``: the decode processes the run used (else the
    configured count, None for "auto"). A model that runs on another device than ``--device`` asked for (the CPU
    fallback) adds a note saying which device was asked for, which one ran and why."""
    m = model.manifest
    hooks = list(hooks)
    record = RunRecord(
        tool_version=__version__,
        model=ModelRef(name=m.name, version=m.version, sha256=m.sha256, manifest=str(m.path), integrity=m.integrity),
        operating_point="balanced",
        thresholds={lab: {"rule_out": t.rule_out.threshold, "balanced": t.balanced.threshold}
                    for lab, t in m.thresholds.items()},
        started_at=started_at,
        finished_at=finished_at,
        cwd=os.getcwd(),
        inputs=tuple(str(p) for p in config.inputs),
        counts=dict(counts),
        device=model.session.device.value,
        execution_providers=tuple(model.session.providers),
        options={"batch_size": config.batch_size, "workers": config.workers if workers is None else workers,
                 "threads": config.intra_op_threads, "rules": str(config.rules) if config.rules else "default",
                 "lungs": config.lungs_on, "report": config.reports_on, "heatmaps": config.heatmaps,
                 "dicom": config.dicom_on, "device_requested": config.device,
                 # with reduced decoding, each row's decoded_at says how far its image was reduced
                 "full_resolution": not config.reduced_decode},
        hooks=tuple(h.name for h in hooks),
    )
    for h in hooks:
        record = record.merged(h.provenance())
    if model.session.fallback is not None:  # the device asked for, the one used and why: the run's own record
        earlier = record.sections.get("notes")
        notes = list(earlier) if isinstance(earlier, list | tuple) else []
        record = record.merged({"notes": [*notes, model.session.fallback]})
    return record
