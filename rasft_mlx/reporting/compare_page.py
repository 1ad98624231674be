"""compare.html: a comparison's arms (its modes, then its variants) over seeds, curves with their
spread, paired differences."""

from __future__ import annotations

from pathlib import Path

from rasft_mlx.reporting import charts, mechanism, series
from rasft_mlx.reporting.mechanism import arm_names, arm_of
from rasft_mlx.reporting.page import Section, note, render_page, table
from rasft_mlx.reporting.run_reader import ReportError, read_metrics
from rasft_mlx.runtime.fileio import atomic_write_text

COMPARE_FILE = "compare.html"
FIGURES_DIR = "figures"


def loss_curves(results: dict) -> list[tuple[str, list, list, list, list]]:
    """Per arm: the smoothed training loss, mean and min-max over its seeds, per step."""
    found = []
    for mode in arm_names(results):
        per_seed = []
        for run in results["runs"]:
            if arm_of(run) != mode:
                continue
            try:
                steps, losses = series.step_series(read_metrics(Path(run["run_dir"])), "loss")
            except ReportError:
                continue
            per_seed.append((steps, series.smoothed(losses)))
        if per_seed:
            found.append((mode, *series.seed_spread(per_seed)))
    return found


def accuracy_curves(results: dict) -> list[tuple[str, list, list, list, list]]:
    """Per mode: held-out pass@1 per epoch, mean ± std over seeds (epoch 0: the base model)."""
    found = []
    for mode, points in results.get("curves", {}).items():
        if points:
            epochs = [p["epoch"] for p in points]
            mean = [p["pass_at_1_mean"] for p in points]
            std = [p["pass_at_1_std"] for p in points]
            low = [m - s for m, s in zip(mean, std, strict=True)]
            high = [m + s for m, s in zip(mean, std, strict=True)]
            found.append((mode, epochs, mean, low, high))
    return found


def paired_rows(results: dict) -> list[tuple[str, float, float, float]]:
    """(label, difference, low, high) per mode against the reference on the test set, then the
    other pairs of modes there, then each extra test set (labelled with its name)."""
    reference = arm_names(results)[0]
    rows = []
    for mode, summary in results.get("summary", {}).items():
        paired = summary.get(f"paired_vs_{reference}")
        if paired:
            rows.append(
                (f"{mode} − {reference}", paired["difference"], paired["low"], paired["high"])
            )
    for pair in results.get("pairwise", []):
        label = f"{arm_of(pair)} − {pair['versus']}"
        rows.append((label, pair["difference"], pair["low"], pair["high"]))
    for mode, summary in results.get("summary", {}).items():
        for name, paired in sorted(summary.get(f"extra_paired_vs_{reference}", {}).items()):
            if paired:
                label = f"{mode} − {reference} ({name})"
                rows.append((label, paired["difference"], paired["low"], paired["high"]))
    return rows


def _mean_std(summary: dict) -> str:
    if summary.get("pass_at_1_mean") is None:
        return "-"
    return f"{summary['pass_at_1_mean']:.3f} ± {summary['pass_at_1_std']:.3f}"


def _paired_text(summary: dict, reference: str) -> str:
    paired = summary.get(f"paired_vs_{reference}")
    if not paired:
        return "-"
    return (
        f"{paired['difference']:+.3f} [{paired['low']:+.3f}, {paired['high']:+.3f}] "
        f"{paired['verdict']}"
    )


def compare_charts(results: dict) -> list[charts.Chart]:
    """The comparison's charts: loss and accuracy by mode, paired differences."""
    found = []
    losses = loss_curves(results)
    if losses:
        found.append(
            charts.band_chart(
                "compare-loss",
                "Training loss by mode",
                losses,
                xlabel="step",
                ylabel="loss",
                caption="smoothed loss: mean over seeds, band from the lowest to the highest seed",
            )
        )
    accuracy = accuracy_curves(results)
    if accuracy:
        found.append(
            charts.band_chart(
                "compare-accuracy",
                "Held-out accuracy by mode",
                accuracy,
                xlabel="epoch (0 = the base model)",
                ylabel="pass@1",
                caption="mean over seeds, band ± one standard deviation",
            )
        )
    paired = paired_rows(results)
    if paired:
        found.append(
            charts.interval_chart(
                "compare-paired",
                "Paired differences between modes",
                paired,
                xlabel="difference in pass@1",
                caption="paired bootstrap over test problems and seeds, 95 % interval",
            )
        )
    return found


def write_compare_figures(out_dir: str | Path, drawn: list[charts.Chart]) -> list[tuple[str, str]]:
    """Each chart as OUT/figures/ID.svg (for results.md); returns (title, path relative to OUT)."""
    written = []
    for chart in drawn:
        relative = f"{FIGURES_DIR}/{chart.chart_id}.svg"
        path = Path(out_dir) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, charts.svg_text(chart))
        written.append((chart.title, relative))
    return written


def build_compare_report(results: dict, drawn: list[charts.Chart] | None = None) -> str:
    """The comparison page, from the dict results.json holds (`drawn`: its charts, when the
    caller has them already)."""
    reference = arm_names(results)[0]
    found = compare_charts(results) if drawn is None else drawn
    rows = []
    base = results.get("base")
    if base:
        rows.append((mechanism.start_label(results), 1, f"{base['pass_at_1']:.3f}", "-", "-", "-"))
    for mode in arm_names(results):
        summary = results.get("summary", {}).get(mode)
        if summary:
            rows.append(
                (
                    mode,
                    summary["runs"],
                    _mean_std(summary),
                    _paired_text(summary, reference),
                    f"{summary['trained_tokens_mean']:.0f}",
                    f"{summary['steps_mean']:.0f}",
                )
            )
    headers = ["mode", "runs", "pass@1 mean ± std", f"vs {reference} (paired, 95 %)"]
    headers += ["tokens trained", "steps"]
    body = table(headers, rows)
    body += note(f"Budget ({results['budget']['rule']}): {results['budget']['description']}.")
    for arm in mechanism.variant_arms(results):
        keys = ", ".join(arm.get("differences") or {}) or "nothing but the mode"
        body += note(
            f"Variant {arm['arm']}: mode {arm['mode']}, recipe {arm['recipe']}, the same seeds "
            f"and step cap; its recipe differs from the comparison's in {keys} "
            "(results.md lists the values)."
        )
    if not results.get("complete", True):
        body += note("Partial: some runs have not finished yet.")
    per_seed = [
        (
            arm_of(r),
            r["seed"],
            "-" if r["pass_at_1"] is None else f"{r['pass_at_1']:.3f}",
            r["steps"],
            r["run_dir"],
        )
        for r in results["runs"]
    ]
    runs = table(["mode", "seed", "pass@1", "steps", "run dir"], per_seed)
    sections = [
        Section("modes", "Modes over seeds", found, body),
        Section("runs", "Runs", [], runs + note("Each run dir holds its own report.html.")),
    ]
    signal = mechanism.mechanism_rows(results.get("refresh_signal") or {})
    if signal:
        gauges = table(list(mechanism.HEADERS), signal) + note(mechanism.NOTE)
        sections.insert(1, Section("mechanism", "Is the mechanism at work?", [], gauges))
    seeds = ", ".join(map(str, results["seeds"]))
    subtitle = f"{results['model']} · {results['recipe']} · seeds {seeds}"
    return render_page("rasft-mlx compare", subtitle, sections)


def write_compare_report(
    out_dir: str | Path, results: dict, drawn: list[charts.Chart] | None = None
) -> Path:
    path = Path(out_dir) / COMPARE_FILE
    atomic_write_text(path, build_compare_report(results, drawn))
    return path
