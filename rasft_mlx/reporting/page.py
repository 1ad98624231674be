"""HTML assembly: one self-contained page (inline CSS, charts as data URIs, no scripts)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field

from rasft_mlx.reporting.charts import Chart

STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1400px; padding: 1em 2em;
       color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; }
.subtitle { color: #555; margin-top: 0; }
.charts { display: flex; flex-wrap: wrap; gap: 1em; }
figure.chart { margin: 0; width: 640px; max-width: 100%; }
figure.chart img { width: 100%; height: auto; display: block; }
figcaption { font-size: 0.85em; color: #555; }
figcaption strong { color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.text { font-family: ui-monospace, monospace; white-space: pre-wrap; max-width: 60em; }
.correct { color: #1a7f37; font-weight: bold; } .wrong { color: #cf222e; font-weight: bold; }
pre { background: #f6f8fa; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
.note { color: #555; font-style: italic; }
"""


@dataclass
class Section:
    """A titled part of the page: some charts, then any extra HTML (tables, notes)."""

    section_id: str
    title: str
    charts: list[Chart] = field(default_factory=list)
    body: str = ""


def escape(value) -> str:
    return html.escape("" if value is None else str(value))


def table(headers: Sequence[str], rows: Sequence[Sequence], *, raw_columns=()) -> str:
    """An HTML table; cells are escaped, except the columns named in raw_columns."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    lines = []
    for row in rows:
        cells = []
        for header, cell in zip(headers, row, strict=True):
            cells.append(cell if header in raw_columns else f"<td>{escape(cell)}</td>")
        lines.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"


def note(text: str) -> str:
    return f'<p class="note">{escape(text)}</p>'


def preformatted(text: str) -> str:
    return f"<pre>{escape(text)}</pre>"


def _figure(chart: Chart) -> str:
    caption = f"<strong>{escape(chart.title)}</strong>"
    if chart.caption:
        caption += f" {escape(chart.caption)}"
    return (
        f'<figure class="chart" id="{escape(chart.chart_id)}">'
        f'<img src="{chart.data_uri}" alt="{escape(chart.title)}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def render_page(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    """The whole page as one string."""
    toc = " · ".join(f'<a href="#{escape(s.section_id)}">{escape(s.title)}</a>' for s in sections)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="subtitle">{escape(subtitle)}</p>',
        f"<nav>{toc}</nav>",
    ]
    for section in sections:
        parts.append(f'<section id="{escape(section.section_id)}"><h2>{escape(section.title)}</h2>')
        if section.charts:
            parts.append('<div class="charts">' + "".join(map(_figure, section.charts)) + "</div>")
        parts.append(section.body)
        parts.append("</section>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
