"""The HTML report, assembled: the headline and the sample grid, then one section per family in the
registry's order, each from the family's hook (`Family.section`), then any extra sections a stage
adds (e.g. the demo's inpainted lesions). Figures are PNGs embedded as base64, so the page is one
self-contained file; they are returned too, for figures/*.png. Pure: dicts in, bytes / text out (the
stage writes them). Drawing lives in `report_figures.py`, HTML in `report_html.py`.
"""

from __future__ import annotations

from collections.abc import Sequence

from . import metric_doc, report_figures, report_html
from .families import BY_NAME, NAMES, Family
from .report_html import Section, SectionInput


def examples_of(samples: dict, name: str) -> dict:
    """A family's example arrays from the report's sample store (keys `<family>_<key>`), prefix removed."""
    prefix = f"{name}_"
    return {k[len(prefix):]: v for k, v in samples.items() if k.startswith(prefix)}


def family_sections(diag: dict, details: dict, samples: dict) -> list[Section]:
    """One section per family that has a status, in the registry's order (unregistered ones after):
    the family's own section when it ran, a note saying why when it was skipped or failed."""
    statuses = diag.get("families", {})
    sections = []
    for name in [*NAMES, *(f for f in statuses if f not in BY_NAME)]:
        if name not in statuses:
            continue
        family = BY_NAME.get(name) or Family(name, name)  # unregistered (a stand-in): the default section
        status = statuses[name]
        note = report_html.status_note(status)
        if status.get("status") != "ok":
            sections.append(Section(family.title, note))
            continue
        view = SectionInput(name, family.title, diag, details.get(name), examples_of(samples, name), metric_doc.link)
        section = family.report_section(view)
        sections.append(Section(section.title, section.body + note, section.figures))
    return sections


def render(diag: dict, details: dict, samples: dict,
           extra_sections: Sequence[Section] = ()) -> tuple[dict[str, bytes], str]:
    """(figures: name -> PNG, the page's HTML) from diagnostics.json's record, the figure data and the
    sample arrays (sample grid, family examples)."""
    figures = {}
    for name, png in (("deviations", report_figures.deviation_figure(diag)),
                      ("samples", report_figures.sample_grid_figure(samples))):
        if png:
            figures[name] = png
    sections = family_sections(diag, details, samples)
    for section in [*sections, *extra_sections]:
        figures.update(section.figures)
    return figures, report_html.render_page(diag, figures, sections, extra_sections, metric_doc.link)
