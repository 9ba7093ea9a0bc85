"""Every option of a predict or segment run, validated once, and the defaults derived from the machine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cxrtriage.cpus import usable_cpus
from cxrtriage.errors import ConfigError
from cxrtriage.report.pseudonym import require_pseudonym_key

PREDICT_BATCH_SIZE = 32
"""Images per inference batch of ``predict`` unless ``--batch-size`` says otherwise. Why 32 rather than 16: fewer,
longer onnxruntime runs and half the per-batch work of the main process (hooks, writing, flushing) left more of the two
cores to the decode workers. Measured side by side (96 RG1 copies, runs alternated, medians of 4): JPEG baseline 136.8
-> 142.8 images/s, uncompressed DICOM 150.3 -> 152.2, JPEG 2000 lossy 77.8 -> 79.1, PNG 63.1 -> 64.3; 480 uncompressed
copies 156.3 -> 161.4, where 8 gave 152.8. ``serve`` and ``watch`` keep 16: they answer sooner with smaller batches."""


@dataclass(frozen=True, slots=True)
class PredictConfig:
    """Every option of a predict run (``cxrtriage predict`` maps its options 1:1 onto these)."""

    inputs: tuple[Path, ...]
    out_dir: Path
    model: str | None = None  # name in the models dir, or path to .onnx / manifest; None = default classifier
    batch_size: int = PREDICT_BATCH_SIZE
    device: str = "auto"
    strict_device: bool = False
    workers: int | None = None  # decode processes; None = auto, 0 = decode in this process
    intra_op_threads: int | None = None  # onnxruntime threads; None = one per core
    fail_on_error: bool = False
    rules: Path | None = None  # selection rules TOML; None = the built-in frontal-CXR rules
    policy: Path | None = None  # triage policy TOML; None = the packaged default policy
    site: Path | None = None  # site calibration TOML (`cxrtriage calibrate`); None = the model's scores/thresholds
    # The population of patients whose age the files do not tell; None: the model's image estimate, else unknown.
    population: str | None = None
    lungs: bool | None = None  # lung masks + areas; None = on exactly when reports are written
    segmenter: str | None = None  # lung segmenter name or path; None = the default lung-segmenter
    report: bool = False  # HTML (+PDF) study reports and DIR/report/index.html after the run
    pdf: bool = True  # a PDF beside each HTML report
    dicom: bool = False  # DICOM SR/SC/SEG/encapsulated PDF into DIR/dicom/ (implies report)
    deidentify: bool = False  # pseudonyms instead of identities in the HTML/PDF reports
    send: str | None = None  # HOST:PORT to C-STORE the DICOM results to (implies dicom)
    aet: str = "CXRTRIAGE"  # our (calling) AE title for send (_DEFAULT_AETS)
    called_aet: str = "ANY-SCP"  # the PACS (called) AE title for send
    modality: str = "DOC"  # Modality of the encapsulated PDF (_DEFAULT_MODALITY)
    heatmaps: bool = False  # overlays + raw maps of the flagged findings under DIR/heatmaps/ (column heatmaps)
    heatmap_method: str = "gradcam"  # a CAM method that needs no extra model pass (see docs/explain.md)
    heatmap_gate: bool = False  # gate the overlays by the dilated lung mask (hides evidence outside the lungs)
    reduced_decode: bool = True  # False (--full-resolution): decode every image in full, even where fewer pixels do
    resume: bool = False  # journal finished inputs in DIR/journal.jsonl and take the unchanged ones from it

    @property
    def dicom_on(self) -> bool:
        return self.dicom or self.send is not None

    @property
    def reports_on(self) -> bool:
        return self.report or self.dicom_on

    @property
    def lungs_on(self) -> bool:
        return self.reports_on if self.lungs is None else self.lungs

    def __post_init__(self) -> None:
        _check_common(self.inputs, self.batch_size, self.workers)
        if self.intra_op_threads is not None and self.intra_op_threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.intra_op_threads}")
        if self.heatmap_gate and not self.heatmaps:
            raise ConfigError("--heatmap-gate gates the heat maps: it needs --heatmaps")
        # Options that act on outputs this run does not write are refused, not ignored: a user who asked for
        # de-identified outputs must not take results.csv (which --deidentify never touches) for them.
        if self.deidentify and not self.reports_on:
            raise ConfigError("--deidentify gives the reports and DICOM results pseudonyms: it needs --report, --dicom "
                              "or --send (results.csv and worklist.csv always name the input files; see the README, "
                              "'De-identification')")
        if not self.pdf and not self.reports_on:
            raise ConfigError("--no-pdf leaves the PDF out of the study reports: it needs --report (or --dicom, --send)")
        if self.modality != _DEFAULT_MODALITY and not self.dicom_on:
            raise ConfigError("--modality sets the Modality of the encapsulated PDF: it needs --dicom or --send")
        if (self.aet, self.called_aet) != _DEFAULT_AETS and self.send is None:
            raise ConfigError("--aet and --called-aet name the AE titles of the association: they need --send HOST:PORT")
        if self.segmenter is not None and not self.lungs_on:
            raise ConfigError("--segmenter names the lung segmenter: it needs --lungs (or --report, which turns the "
                              "lungs on)")
        if self.deidentify:  # refused now, not after scoring every file (see the README, "De-identification")
            require_pseudonym_key()


_DEFAULT_MODALITY = "DOC"
_DEFAULT_AETS = ("CXRTRIAGE", "ANY-SCP")


@dataclass(frozen=True, slots=True)
class SegmentConfig:
    """Every option of a segment run (``cxrtriage segment`` maps its options 1:1 onto these)."""

    inputs: tuple[Path, ...]
    out_dir: Path
    model: str | None = None  # None = the default lung segmenter
    batch_size: int = 8
    device: str = "auto"
    strict_device: bool = False
    workers: int | None = None
    intra_op_threads: int | None = None
    fail_on_error: bool = False
    rules: Path | None = None

    def __post_init__(self) -> None:
        _check_common(self.inputs, self.batch_size, self.workers)


def _check_common(inputs: tuple[Path, ...], batch_size: int, workers: int | None) -> None:
    if not inputs:
        raise ConfigError("no INPUT given; pass one or more files or folders")
    if not 1 <= batch_size <= 1024:
        raise ConfigError(f"--batch-size must be within 1..1024, got {batch_size}")
    if workers is not None and not 0 <= workers <= 64:
        raise ConfigError(f"--workers must be within 0..64, got {workers}")


def auto_workers() -> int:
    """Decode processes when none are asked for: half the cores, but 2 on 2-3 cores (1 on one core, at most 4).

    Why 2 on 2 cores: inference needs a few ms per image and decoding most of the rest, so a second decode process
    uses the core that onnxruntime leaves idle. Measured side by side on 2 cores: 486 NIH PNGs (512 px) 5.3 s vs
    5.9 s with one; 96 RG1 chests (1955 x 1841) 48 vs 28 images/s as PNG, 32 vs 19 as JPEG 2000 lossless
    (`benchmarks/bench_decode.py --workers`).
    """
    n = usable_cpus()
    return min(4, max(min(n, 2), n // 2))


def in_flight_window(batch_size: int, workers: int, keep_images: bool, override: int | None = None) -> int:
    """How many files may be decoded ahead of inference: enough for the next batch to be
    decoded while this one runs, few enough that memory stays flat (fewer when full images travel)."""
    if override:
        return max(1, override)
    if keep_images:
        return batch_size + 2 * max(workers, 1)
    return 2 * batch_size + 4 * max(workers, 1)
