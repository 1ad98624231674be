"""Charts drawn with matplotlib (no pyplot state) and embedded as base64 SVG data URIs."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

WIDTH, HEIGHT = 6.4, 3.2  # inches at 100 dpi: 640 x 320 px
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


@dataclass(frozen=True)
class Chart:
    """One rendered chart: an id for the page, a title, the SVG as a data URI, a caption."""

    chart_id: str
    title: str
    data_uri: str
    caption: str = ""


def svg_text(chart: Chart) -> str:
    """The chart's SVG document, for writing it to a file."""
    return base64.b64decode(chart.data_uri.split(",", 1)[1]).decode("utf-8")


def _figure(integer_x: bool = False) -> tuple[Figure, object]:
    figure = Figure(figsize=(WIDTH, HEIGHT), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    axes.grid(True, alpha=0.3)
    if integer_x:  # steps, epochs
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.spines[["top", "right"]].set_visible(False)
    return figure, axes


def _render(chart_id: str, title: str, figure: Figure, caption: str = "") -> Chart:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return Chart(chart_id, title, f"data:image/svg+xml;base64,{encoded}", caption)


def line_chart(
    chart_id: str,
    title: str,
    series: Sequence[tuple[str, Sequence[float], Sequence[float]]],
    *,
    xlabel: str,
    ylabel: str,
    caption: str = "",
    log_y: bool = False,
) -> Chart:
    """Lines (label, xs, ys) over steps or epochs; a label starting with '_' has no legend entry."""
    figure, axes = _figure(integer_x=True)
    for index, (label, xs, ys) in enumerate(series):
        marker = "o" if len(xs) <= 12 else None
        axes.plot(xs, ys, label=label, color=COLORS[index % len(COLORS)], marker=marker, lw=1.5)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if log_y and all(y > 0 for _, _, ys in series for y in ys):
        axes.set_yscale("log")
    if any(not label.startswith("_") for label, _, _ in series):
        axes.legend(frameon=False)
    return _render(chart_id, title, figure, caption)


def band_chart(
    chart_id: str,
    title: str,
    series: Sequence[
        tuple[str, Sequence[float], Sequence[float], Sequence[float], Sequence[float]]
    ],
    *,
    xlabel: str,
    ylabel: str,
    caption: str = "",
) -> Chart:
    """Lines with a shaded band over steps or epochs: (label, xs, centre, low, high) per series."""
    figure, axes = _figure(integer_x=True)
    for index, (label, xs, centre, low, high) in enumerate(series):
        color = COLORS[index % len(COLORS)]
        axes.fill_between(xs, low, high, color=color, alpha=0.2, lw=0)
        axes.plot(
            xs, centre, label=label, color=color, lw=1.5, marker="o" if len(xs) <= 12 else None
        )
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.legend(frameon=False)
    return _render(chart_id, title, figure, caption)


def grouped_bar_chart(
    chart_id: str,
    title: str,
    categories: Sequence[str],
    groups: Sequence[tuple[str, Sequence[float]]],
    *,
    ylabel: str,
    caption: str = "",
    stacked: bool = False,
) -> Chart:
    """Bars per category, one colour per group (side by side, or stacked)."""
    figure, axes = _figure()
    positions = list(range(len(categories)))
    width = 0.8 if stacked else 0.8 / max(len(groups), 1)
    bottoms = [0.0] * len(categories)
    for index, (label, values) in enumerate(groups):
        color = COLORS[index % len(COLORS)]
        if stacked:
            axes.bar(positions, values, width, bottom=bottoms, label=label, color=color)
            bottoms = [b + v for b, v in zip(bottoms, values, strict=True)]
        else:
            offset = (index - (len(groups) - 1) / 2) * width
            axes.bar([p + offset for p in positions], values, width, label=label, color=color)
    axes.set_xticks(positions, list(categories))
    axes.set_ylabel(ylabel)
    if len(groups) > 1 or stacked:
        axes.legend(frameon=False, fontsize="small")
    return _render(chart_id, title, figure, caption)


def histogram_chart(
    chart_id: str,
    title: str,
    samples: Sequence[tuple[str, Sequence[float]]],
    *,
    xlabel: str,
    caption: str = "",
    bins: int = 20,
) -> Chart:
    """Overlaid histograms of several samples over shared bins."""
    figure, axes = _figure()
    values = [v for _, sample in samples for v in sample]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    if high <= low:
        low, high = low - 0.5, high + 0.5
    for index, (label, sample) in enumerate(samples):
        if sample:
            color = COLORS[index % len(COLORS)]
            axes.hist(sample, bins=bins, range=(low, high), alpha=0.6, label=label, color=color)
    axes.set_xlabel(xlabel)
    axes.set_ylabel("count")
    axes.legend(frameon=False, fontsize="small")
    return _render(chart_id, title, figure, caption)


def horizontal_bar_chart(
    chart_id: str, title: str, values: dict[str, float], *, xlabel: str, caption: str = ""
) -> Chart:
    """One horizontal bar per label, with its value and share written beside it."""
    figure, axes = _figure()
    labels = list(values)[::-1]
    numbers = [values[label] for label in labels]
    total = sum(numbers) or 1.0
    bars = axes.barh(labels, numbers, color=COLORS[0])
    axes.bar_label(bars, [f"{v:.1f} ({v / total:.0%})" for v in numbers], padding=3)
    axes.set_xlabel(xlabel)
    axes.set_xlim(0, max(numbers, default=1.0) * 1.3 or 1.0)
    return _render(chart_id, title, figure, caption)


def interval_chart(
    chart_id: str,
    title: str,
    rows: Sequence[tuple[str, float, float, float]],
    *,
    xlabel: str,
    caption: str = "",
) -> Chart:
    """Point estimates with their intervals, one row each: (label, estimate, low, high)."""
    figure, axes = _figure()
    for index, (_label, estimate, low, high) in enumerate(rows):
        axes.errorbar(
            [estimate],
            [index],
            xerr=[[estimate - low], [high - estimate]],
            fmt="o",
            capsize=4,
            color=COLORS[index % len(COLORS)],
        )
    axes.axvline(0.0, color="black", lw=0.8)
    axes.set_yticks(range(len(rows)), [label for label, *_ in rows])
    axes.set_ylim(-0.7, len(rows) - 0.3)
    axes.set_xlabel(xlabel)
    return _render(chart_id, title, figure, caption)
