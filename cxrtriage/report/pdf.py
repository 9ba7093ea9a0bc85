"""The study report as PDF (fpdf2): the same content as the HTML report, images embedded."""

from __future__ import annotations

import io
import logging
import unicodedata
from collections.abc import Sequence
from pathlib import Path

from fpdf import FPDF
from fpdf.fonts import FontFace

from cxrtriage.report.view import DEIDENTIFIED_NOTE, Figure, StudyView
from cxrtriage.results import Status, clean_text, display_text

log = logging.getLogger(__name__)

# A Unicode TrueType font is used when one is installed (Debian: fonts-dejavu-core); otherwise the
# PDF core font Helvetica, with text reduced to Latin-1 so that no character can break the PDF.
FONT_DIRS = (
    Path("/usr/share/fonts/truetype/dejavu"),
    Path("/usr/share/fonts/dejavu"),
    Path("/usr/local/share/fonts"),
    Path("/Library/Fonts"),
    Path("C:/Windows/Fonts"),
)
_LATIN1_SUBST = {"…": "...", "–": "-", "—": "-", "‘": "'", "’": "'", "“": '"', "”": '"', "≥": ">=", "≤": "<=", "•": "-"}


def find_unicode_font() -> tuple[Path, Path] | None:
    """DejaVuSans.ttf and DejaVuSans-Bold.ttf when found, else None."""
    for d in FONT_DIRS:
        regular, bold = d / "DejaVuSans.ttf", d / "DejaVuSans-Bold.ttf"
        if regular.is_file() and bold.is_file():
            return regular, bold
    return None


def latin1(text: str) -> str:
    """``text`` made safe for a PDF core font: common punctuation mapped, accents kept, others '?'."""
    out: list[str] = []
    for ch in text:
        ch = _LATIN1_SUBST.get(ch, ch)
        try:
            ch.encode("latin-1")
            out.append(ch)
        except UnicodeEncodeError:
            base = unicodedata.normalize("NFKD", ch).encode("latin-1", "ignore").decode("latin-1")
            out.append(base or "?")
    return "".join(out)


class _ReportPDF(FPDF):
    def __init__(self, disclaimer: str, unicode_font: tuple[Path, Path] | None) -> None:
        super().__init__(orientation="P", unit="mm", format="A4")
        self.disclaimer = disclaimer
        self.set_auto_page_break(auto=True, margin=18)
        self.set_margins(14, 14, 14)
        if unicode_font:
            self.add_font("Body", "", str(unicode_font[0]))
            self.add_font("Body", "B", str(unicode_font[1]))
            self.family = "Body"
            self.unicode = True
        else:
            self.family = "Helvetica"
            self.unicode = False
        self.set_title("Chest X-ray decision-support report")
        self.set_creator("cxrtriage")

    def t(self, text: str) -> str:
        # Every text of the PDF passes here: no control character, an undecodable file-name byte as \xNN
        # (fpdf would drop it silently and show "Mller" for "M\xfcller").
        text = display_text(clean_text(text))
        return text if self.unicode else latin1(text)

    def footer(self) -> None:
        self.set_y(-14)
        self.set_font(self.family, "", 7)
        self.set_text_color(150, 30, 30)
        self.multi_cell(0, 3.5, self.t(self.disclaimer + f"   Page {self.page_no()}/{{nb}}"), align="C")
        self.set_text_color(0, 0, 0)

    def h2(self, text: str) -> None:
        self.ln(2)
        self.set_font(self.family, "B", 12)
        self.cell(0, 7, self.t(text), new_x="LMARGIN", new_y="NEXT")
        self.set_draw_color(200, 200, 200)
        self.line(self.l_margin, self.get_y(), self.w - self.r_margin, self.get_y())
        self.ln(1.5)
        self.set_font(self.family, "", 9)

    def para(self, text: str, *, size: float = 9, bold: bool = False, colour: tuple[int, int, int] = (0, 0, 0)) -> None:
        self.set_font(self.family, "B" if bold else "", size)
        self.set_text_color(*colour)
        self.multi_cell(0, size * 0.5, self.t(text), new_x="LMARGIN", new_y="NEXT")
        self.set_text_color(0, 0, 0)
        self.set_font(self.family, "", 9)

    def kv(self, rows: tuple[tuple[str, str], ...]) -> None:
        if not rows:
            return
        self.set_font(self.family, "", 8.5)
        head = FontFace(emphasis="BOLD", fill_color=(246, 248, 250))
        with self.table(col_widths=(30, 70), first_row_as_headings=False, line_height=4.6, text_align="LEFT") as table:
            for k, v in rows:
                r = table.row()
                r.cell(self.t(k), style=head)
                r.cell(self.t(v))
        self.ln(1)

    def grid(self, header: tuple[str, ...], rows: Sequence[Sequence[str]], widths: tuple[int, ...],
             emphasise: list[bool] | None = None) -> None:
        self.set_font(self.family, "", 8)
        with self.table(col_widths=widths, line_height=4.4, text_align="LEFT",
                        headings_style=FontFace(emphasis="BOLD", fill_color=(246, 248, 250))) as table:
            hr = table.row()
            for h in header:
                hr.cell(self.t(h))
            for n, row in enumerate(rows):
                r = table.row()
                style = FontFace(emphasis="BOLD", color=(180, 35, 24)) if emphasise and emphasise[n] else None
                for c in row:
                    r.cell(self.t(c), style=style)
        self.ln(1)


def render_study_pdf(view: StudyView) -> bytes:
    """The study report as PDF bytes."""
    font = find_unicode_font()
    if font is None:
        log.info("no DejaVu font found: PDF uses Helvetica and Latin-1 text (install fonts-dejavu-core for full Unicode)")
    pdf = _ReportPDF(view.disclaimer, font)
    pdf.alias_nb_pages()
    pdf.add_page()
    pdf.para(view.title, size=16, bold=True)
    pdf.ln(1)
    pdf.para(view.disclaimer, size=9.5, bold=True, colour=(180, 35, 24))
    if view.deidentified:
        pdf.para(DEIDENTIFIED_NOTE, size=8, colour=(90, 96, 105))
    pdf.h2("Patient and study")
    pdf.kv(view.header)
    pdf.h2("Triage priority")
    pdf.para(f"{view.priority}" + (f" - {view.priority_reason}" if view.priority_reason else ""), size=10, bold=True)
    if view.threshold_note:
        pdf.para(view.threshold_note, size=8, colour=(90, 96, 105))
    for img in view.images:
        pdf.h2(img.title)
        status = f"Source: {img.source}  |  status: {img.status}" + (f" ({img.reason})" if img.reason else "")
        if img.priority:
            status += f"  |  priority {img.priority}" + (f": {img.priority_reason}" if img.priority_reason else "")
        pdf.para(status, size=8, colour=(90, 96, 105))
        if img.shortcut:
            pdf.para(img.shortcut, size=9, bold=True, colour=(154, 103, 0))
        _figures(pdf, img.figures)
        if img.findings:
            only = [f.reported_only for f in img.findings]
            rows = [(f.label, f.score, f.threshold, f.kind, f.status + (", reported only" if o else ""), f.sensitivity,
                     f.specificity, f.population_auroc_short or "-") for f, o in zip(img.findings, only, strict=True)]
            pop = next((f.population for f in img.findings if f.population), "")
            pdf.grid(("Finding", "Score", "Threshold", "Operating point", "Status", "Sens. (pooled)", "Spec. (pooled)",
                      f"AUROC {pop}".strip()), rows,
                     (16, 8, 12, 19, 15, 11, 11, 16), emphasise=[f.positive and not o for f, o in zip(img.findings, only,
                                                                                                    strict=True)])
            if any(only):
                pops = sorted({f.role.split(": ", 1)[-1] for f, o in zip(img.findings, only, strict=True) if o})
                pdf.para(f"Reported only ({'; '.join(pops)}): shown, but it does not move the priority.", size=8,
                         colour=(90, 96, 105))
        elif img.status != Status.SCORED:
            pdf.para(f"Not scored: {img.reason or 'no reason recorded'}", bold=True, colour=(154, 103, 0))
        if img.measurements:
            pdf.para("Lung measurements", bold=True)
            pdf.kv(img.measurements)
        if img.notes:
            pdf.para("Quality notes", bold=True)
            for n in img.notes:
                pdf.para(f"- {n}", size=8.5, colour=(154, 103, 0))
    pdf.h2("Model")
    pdf.kv(view.model)
    if view.metrics:
        pdf.para("Validation metrics (from the model manifest)", bold=True)
        pdf.kv(view.metrics)
    pdf.h2("Run provenance")
    pdf.kv(view.provenance)
    for n in view.notes:
        pdf.para(f"- {n}", size=8, colour=(154, 103, 0))
    pdf.para(f"Generated {view.generated_at} by cxrtriage.", size=7.5, colour=(90, 96, 105))
    return bytes(pdf.output())


def _text_height(pdf: _ReportPDF, width: float, line_h: float, text: str) -> float:
    """How tall ``multi_cell`` would write ``text`` (left-aligned) in the current font."""
    lines = pdf.multi_cell(width, line_h, text, align="L", dry_run=True, output="LINES")
    assert isinstance(lines, list)
    return len(lines) * line_h


def _figures(pdf: _ReportPDF, figs: tuple[Figure, ...]) -> None:
    """Figures three per row, 58 mm wide, each with its whole caption below it; a new page when a row (pictures and
    captions) does not fit. The row's height counts the longest caption, so no caption runs into the next row."""
    col_w, gap, per_row, line_h = 58.0, 3.0, 3, 3.2
    for i in range(0, len(figs), per_row):
        row = figs[i:i + per_row]
        heights = [col_w * f.height / max(f.width, 1) for f in row]
        row_h = min(max(heights), 80.0)
        pdf.set_font(pdf.family, "", 7)
        captions = [pdf.t(f.caption) for f in row]
        caption_h = max(_text_height(pdf, col_w, line_h, c) for c in captions)
        if pdf.get_y() + row_h + 1 + caption_h > pdf.h - pdf.b_margin:
            pdf.add_page()
            pdf.set_font(pdf.family, "", 7)
        y0 = pdf.get_y()
        for n, (f, caption) in enumerate(zip(row, captions, strict=True)):
            x = pdf.l_margin + n * (col_w + gap)
            w_img = col_w if heights[n] <= row_h else col_w * row_h / heights[n]
            pdf.image(io.BytesIO(f.data), x=x, y=y0, w=w_img)
            pdf.set_xy(x, y0 + min(heights[n], row_h) + 1)
            pdf.multi_cell(col_w, line_h, caption, align="L")
        pdf.set_y(y0 + row_h + 1 + caption_h + 3)
        pdf.set_font(pdf.family, "", 9)
