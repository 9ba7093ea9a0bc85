"""HTML reports (Jinja2): CSS inline, pictures as JPEG files beside the page, nothing fetched from elsewhere."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import markupsafe

from cxrtriage.report.view import DEIDENTIFIED_NOTE, StudyView
from cxrtriage.results import clean_text, display_text

TEMPLATES = Path(__file__).resolve().parent / "templates"


def _shown(value: Any) -> Any:
    """Every ``{{ value }}`` of the templates, before escaping: no control character (a NUL from a DICOM value),
    an undecodable file-name byte as ``\\xNN``."""
    if isinstance(value, str) and not isinstance(value, markupsafe.Markup):
        return display_text(clean_text(value))
    return value


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=False,
        lstrip_blocks=False,
        finalize=_shown,
    )


def _css() -> str:
    return (TEMPLATES / "style.css").read_text(encoding="utf-8")


def render_study_html(view: StudyView) -> str:
    """One study's report as a single HTML document."""
    return _env().get_template("study.html").render(v=view, css=_css(), deidentified_note=DEIDENTIFIED_NOTE)


def render_index_html(**context: Any) -> str:
    """The batch page (worklist, counts, failures, provenance); see ``batch.write_index`` for the context."""
    return _env().get_template("index.html").render(css=_css(), **context)
