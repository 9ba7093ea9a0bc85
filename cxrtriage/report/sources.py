"""The source files of one study, each read once: the DICOM data set (header, SR/SC/SEG) and the picture to show."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from pydicom.dataset import Dataset

from cxrtriage.io import read_image
from cxrtriage.io.dicom import read_dicom
from cxrtriage.report.dicom_common import check_source, read_dataset
from cxrtriage.report.header import PatientHeader, header_from_dataset, header_without_dicom
from cxrtriage.report.imaging import U8, display_image
from cxrtriage.report.study import ImageResult, StudyReport

log = logging.getLogger(__name__)


T = TypeVar("T")


def _once(cache: dict[Path, T | Exception], key: Path, read: Callable[[], T]) -> T:
    """``read()`` the first time ``key`` is asked for; afterwards the same value, or the same exception again."""
    if key not in cache:
        try:
            cache[key] = read()
        except Exception as exc:
            cache[key] = exc
    found = cache[key]
    if isinstance(found, Exception):
        raise found
    return found


class StudySources:
    """Reads each source of ``study`` at most once, on first use; a file that cannot be read raises the same
    ``InputError`` every time it is asked for."""

    def __init__(self, study: StudyReport) -> None:
        self.study = study
        self._datasets: dict[Path, Dataset | Exception] = {}
        self._pictures: dict[Path, U8 | Exception] = {}

    def dataset(self, img: ImageResult) -> Dataset:
        """The whole source DICOM data set, pixels included."""
        return _once(self._datasets, img.path, lambda: read_dataset(img.path))

    def source(self, img: ImageResult) -> Dataset:
        """The source data set, checked to be referenced by DICOM results (``InputError`` when it cannot be)."""
        return check_source(self.dataset(img), img.path)

    def picture(self, img: ImageResult) -> U8:
        """The source image as a viewer shows it (grey uint8, dense = bright), read by ``cxrtriage.io`` from the same
        parse of the file as the header and the DICOM results."""
        def read() -> U8:
            image = read_dicom(img.path, dataset=self.dataset(img)) if img.is_dicom else read_image(img.path)
            return display_image(image)

        return _once(self._pictures, img.path, read)

    def header(self) -> PatientHeader:
        """Patient/study header from the first readable DICOM source of the study (``unknown`` otherwise)."""
        for img in self.study.images:
            if not img.is_dicom or not img.path.is_file():
                continue
            try:
                return header_from_dataset(self.dataset(img))
            except Exception as exc:  # an unreadable source only loses the header, never the report
                log.warning("%s: cannot read the DICOM header for the report (%s)", img.path, type(exc).__name__)
        images = self.study.images
        return header_without_dicom(self.study.key, dicom_study=bool(images) and images[0].is_dicom)
