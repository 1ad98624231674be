"""The comparison's console tables: one row per arm (its modes, then its variants) and the base
model, and held-out pass@1 per epoch."""

from __future__ import annotations

from rich.table import Table

from rasft_mlx.experiments.compare_report import _duration, _pct, _spread, _versus
from rasft_mlx.reporting import mechanism
from rasft_mlx.reporting.mechanism import arm_names


def results_table(results: dict) -> Table:
    """The console table: one row per arm (and the base model), means over seeds."""
    reference = arm_names(results)[0]
    title = f"compare: {results['model']} ({results['test_problems']} test problems, greedy)"
    table = Table(
        title=title if results["complete"] else title + " [partial]",
        caption=f"budget: {results['budget']['rule']}, max_steps {results['budget']['max_steps']}",
    )
    table.add_column("mode", no_wrap=True)
    table.add_column("runs", justify="right")
    table.add_column("pass@1 mean ± std", justify="right", no_wrap=True)
    table.add_column("min", justify="right")
    table.add_column("max", justify="right")
    table.add_column(f"vs {reference}", justify="right")
    table.add_column("tokens trained", justify="right", no_wrap=True)
    table.add_column("steps", justify="right")
    table.add_column("wall / run", justify="right", no_wrap=True)
    base = results["base"]
    if base is not None:
        row = (mechanism.start_label(results), "1", f"{base['pass_at_1']:.3f}", "", "", "", "0")
        row += ("0",)
        table.add_row(*row, _duration(base["seconds"]))
    for mode in arm_names(results):
        s = results["summary"].get(mode)
        if s is None:
            continue
        table.add_row(
            f"[bold]{mode}[/bold]",
            str(s["runs"]),
            _spread(s),
            _pct(s["pass_at_1_min"]),
            _pct(s["pass_at_1_max"]),
            _versus(s, reference) if mode != reference else "",
            f"{s['trained_tokens_mean']:,.0f}",
            f"{s['steps_mean']:.0f}",
            _duration(s["total_seconds_mean"]),
        )
    return table


def curves_table(results: dict) -> Table:
    """Held-out pass@1 per epoch, mean over seeds, with the mean step of each point."""
    curves = results["curves"]
    table = Table(title="held-out pass@1 by epoch (mean over seeds @ step)")
    table.add_column("epoch", justify="right")
    modes = [m for m in arm_names(results) if m in curves]
    for mode in modes:
        table.add_column(mode, justify="right", no_wrap=True)
    epochs = sorted({p["epoch"] for points in curves.values() for p in points})
    for epoch in epochs:
        cells = []
        for mode in modes:
            point = next((p for p in curves[mode] if p["epoch"] == epoch), None)
            cells.append(
                "-"
                if point is None
                else f"{point['pass_at_1_mean']:.3f} @ {point['step_mean']:.0f}"
            )
        table.add_row(str(epoch), *cells)
    return table
