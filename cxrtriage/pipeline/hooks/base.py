"""The hook contract of the predict pipeline: what a hook sees of each batch and of the run, and what it returns.

A hook maps the records of a batch to updated records (``record.replace(...)``); hooks run in ``order``
(site calibration 10, lungs 20, quality 30, heat maps 40, triage 90), so a later hook sees an earlier
one's fields. A hook may change any field except ``path`` and ``status``; artefact paths are relative to
the output folder. A hook that raises does not stop the run: the batch keeps its records as they were and
their ``reason`` says which hook failed. Only scored files reach ``on_batch``; excluded and failed records go
to ``on_unscored``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrtriage.files import StemRegistry
from cxrtriage.measure.quality import QualityCheck
from cxrtriage.model import Classifier, ClassifierOutput, LungMask
from cxrtriage.pipeline.config import PredictConfig
from cxrtriage.preprocess import ModelInput, PreprocessRecipe
from cxrtriage.results import ImageRecord, RunRecord
from cxrtriage.types import Image2D

if TYPE_CHECKING:
    from cxrtriage.report.batch import ReportSummary


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One scored file inside a batch, as a hook sees it: its record so far (scores included) and inputs."""

    index: int
    model_input: ModelInput
    record: ImageRecord
    image: Image2D | None = None  # the image, when a hook of the run said ``needs_images`` (maybe reduced: see Image2D)
    image_checks: tuple[QualityCheck, ...] | None = None  # measure.quality image checks, run in the decode worker
    extra_inputs: tuple[tuple[PreprocessRecipe, ModelInput], ...] = ()  # the hooks' ``recipes``, made in the workers

    @property
    def path(self) -> str:
        return self.record.path

    def input_for(self, recipe: PreprocessRecipe) -> ModelInput | None:
        """The model input made for ``recipe`` in the decode worker (a hook's ``recipes``), else None."""
        return next((mi for r, mi in self.extra_inputs if r == recipe), None)

    def require_image(self, hook: str) -> Image2D:
        if self.image is None:  # the pipeline keeps images whenever a hook says needs_images
            raise ValueError(f"{hook}: no image kept for {self.path}")
        return self.image


@dataclass(frozen=True, slots=True)
class ScoredBatch:
    """A batch after inference: row ``i`` of ``output``'s arrays belongs to ``items[i]``."""

    items: tuple[BatchItem, ...]
    output: ClassifierOutput

    def __len__(self) -> int:
        return len(self.items)


@dataclass(slots=True)
class RunContext:
    """What a hook may use: the run's config, the model, the output folder, unique file stems."""

    config: PredictConfig
    model: Classifier
    out_dir: Path
    lung_masks: dict[int, LungMask] = field(default_factory=dict)  # this batch's masks by item index (lungs hook)
    stems: StemRegistry = field(default_factory=StemRegistry)

    def stem_for(self, path: str | Path) -> str:
        """A file-name stem for ``path``'s artefacts, unique within this run and stable per path."""
        return self.stems.stem_for(path)


@dataclass(frozen=True, slots=True)
class ReportOutcome:
    """The reports step: what ``build_reports`` wrote, or why it could not run."""

    summary: ReportSummary | None
    errors: tuple[str, ...] = field(default_factory=tuple)

    @property
    def index(self) -> Path | None:
        return self.summary.index if self.summary is not None else None


@dataclass(frozen=True, slots=True)
class PredictSummary:
    total: int
    scored: int
    excluded: int
    failed: int
    seconds: float
    results_csv: Path
    results_jsonl: Path
    model_name: str
    model_version: str
    device: str
    outcomes: Mapping[str, Any] = field(default_factory=dict)  # hook name -> what its on_finish returned
    run_json: Path | None = None
    run: RunRecord | None = None  # what run.json holds
    report: ReportOutcome | None = None
    resumed: int = 0  # rows taken from the journal of an earlier run (``--resume``), not scored again
    failures: tuple[tuple[str, str], ...] = ()  # (path, reason) of the first failed inputs (`ProgressCounter`)

    @property
    def images_per_s(self) -> float:
        return self.scored / self.seconds if self.seconds > 0 else 0.0


class PredictHook:
    """Base class of a per-batch extension of the predict pipeline (see the module docstring)."""

    name: str = "hook"
    columns: tuple[str, ...] = ()  # results columns it fills (they join the header)
    needs_images: bool = False  # True: batch.items[i].image is the Image2D
    # With needs_images: the pixels the hook draws from, as the long side of the image (e.g. overlays at 640 px);
    # the image may then be decoded at a reduced resolution that still has this many. None: full resolution.
    image_long_side: int | None = None
    recipes: tuple[PreprocessRecipe, ...] = ()  # model inputs made in the decode workers (BatchItem.input_for)
    needs_features: bool = False  # True: batch.output.features is [N, C, h, w]
    needs_image_checks: bool = False  # True: items[i].image_checks holds measure.quality.image_checks(image)
    order: int = 50

    def on_batch(self, batch: ScoredBatch, ctx: RunContext) -> Sequence[ImageRecord]:
        """One updated record per item of ``batch``, in order."""
        return [item.record for item in batch.items]

    def on_unscored(self, record: ImageRecord, ctx: RunContext) -> ImageRecord:
        """The updated record of an excluded or failed file; must not raise."""
        return record

    def on_finish(self, ctx: RunContext, summary: PredictSummary) -> object:
        """Run-level artefacts, after results.csv/.jsonl are closed; the return value is ``summary.outcomes[name]``."""
        return None

    def provenance(self) -> Mapping[str, Any]:
        """Keys this hook adds to run.json (called after ``on_finish``)."""
        return {}
