"""`rasft-mlx report RUN_DIR`: RUN_DIR/report.html from the run's metrics, summary and ledgers."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

from rasft_mlx.reporting import charts, series
from rasft_mlx.reporting.page import Section, escape, note, preformatted, render_page, table
from rasft_mlx.reporting.run_reader import RunFiles, read_run
from rasft_mlx.runtime.fileio import atomic_write_text

REPORT_FILE = "report.html"
STEP_CHARTS = (  # (metrics key, chart id, title, y label, caption)
    (
        "learning_rate",
        "learning-rate",
        "Learning rate",
        "learning rate",
        "the LR schedule per step",
    ),
    ("grad_norm", "grad-norm", "Gradient norm", "norm", "before clipping"),
    ("tokens_per_second", "tokens-per-second", "Training speed", "tokens / s", "input tokens"),
    ("peak_memory_gb", "peak-memory", "Peak memory", "GB", "process peak so far"),
)


def training_section(records: list[dict]) -> Section:
    steps, losses = series.step_series(records, "loss")
    lines = [("raw", steps, losses), ("smoothed (EMA 0.8)", steps, series.smoothed(losses))]
    caption = "per optimizer step; the smoothed line is a bias-corrected moving average"
    val_steps, val_losses = series.step_series(records, "loss", event="validation")
    if val_steps:
        lines.append(("validation", val_steps, val_losses))
        caption += "; validation: mean token cross-entropy of the validation demos"
    found = [
        charts.line_chart(
            "loss", "Training loss", lines, xlabel="step", ylabel="loss", caption=caption
        )
    ]
    val_steps, val_pass = series.step_series(records, "pass_at_1", event="validation")
    if val_steps:
        found.append(
            charts.line_chart(
                "validation-pass-at-1",
                "Validation pass@1",
                [("_pass@1", val_steps, val_pass)],
                xlabel="step",
                ylabel="pass@1",
                caption="greedy, on the first eval.val_pass_at_1_problems validation problems",
            )
        )
    for key, chart_id, title, ylabel, caption in STEP_CHARTS:
        xs, ys = series.step_series(records, key)
        if xs:
            found.append(
                charts.line_chart(
                    chart_id,
                    title,
                    [("_" + key, xs, ys)],
                    xlabel="step",
                    ylabel=ylabel,
                    caption=caption,
                )
            )
    body = "" if steps else note("No optimizer step has been logged yet.")
    return Section("training", "Training", found, body + validation_note(records))


def validation_note(records: list[dict]) -> str:
    """The last validation, and the best one kept in adapters-best/ (output.keep_best)."""
    found = [r for r in records if r.get("event") == "validation"]
    if not found:
        return ""
    last = found[-1]
    text = f"Validation at step {last['step']}: loss {last['loss']:.4f}"
    if "pass_at_1" in last:
        text += f", pass@1 {last['pass_at_1']:.3f}"
    best = next((r for r in found if r["step"] == last.get("best_step")), None)
    if best is not None:
        figures = f"loss {best['loss']:.4f}" + (
            f", pass@1 {best['pass_at_1']:.3f}" if "pass_at_1" in best else ""
        )
        text += f". Best at step {best['step']} ({figures}), kept in adapters-best/."
    return note(text)


def accuracy_section(records: list[dict]) -> Section | None:
    points = series.accuracy_by_epoch(records)
    if not points:
        return None
    epochs, values = [e for e, _ in points], [v for _, v in points]
    chart = charts.line_chart(
        "accuracy",
        "Held-out accuracy",
        [("_pass@1", epochs, values)],
        xlabel="epoch (0 = the starting model)",
        ylabel="pass@1",
        caption="greedy pass@1 on the test problems after each evaluated epoch",
    )
    rows = [("starting model" if e == 0 else f"epoch {e}", f"{v:.3f}") for e, v in points]
    return Section("accuracy", "Held-out accuracy", [chart], table(["after", "pass@1"], rows))


def beyond_section(records: list[dict]) -> Section | None:
    """The extra test sets (start and end of training) and the drift from the starting model."""
    by_set: dict[str, dict[str, dict]] = {}
    for record in records:
        if record.get("event") == "eval_extra":
            by_set.setdefault(record["set"], {})[record["stage"]] = record
    drift = next((r for r in reversed(records) if r.get("event") == "drift"), None)
    if not by_set and drift is None:
        return None
    body = ""
    if by_set:
        rows = []
        for name, stages in sorted(by_set.items()):
            start, final = stages.get("start"), stages.get("final")
            cells = [f"{s['pass_at_1']:.3f}" if s else "-" for s in (start, final)]
            change = f"{final['pass_at_1'] - start['pass_at_1']:+.3f}" if start and final else "-"
            problems = (final or start)["problems"]
            rows.append((name, str(problems), *cells, change))
        body += table(["test set", "problems", "starting model", "after training", "change"], rows)
    if drift is not None:
        body += note(
            f"Drift from the starting model on its own greedy answers to {drift['problems']} "
            f"held-out prompts ({drift['tokens']} tokens): KL(pi_ref || pi_theta) "
            f"{drift['kl_ref_policy']:.4f} per token, NLL rise {drift['nll_increase']:.4f} per token."
        )
    return Section("beyond", "Other test sets and drift", [], body)


def _count_groups(rows: list[dict], key: str) -> tuple[list[str], list[tuple[str, list[float]]]]:
    """Categories = refreshes, groups = the keys of each record's `key` dict (counts)."""
    names = sorted({name for r in rows for name in (r.get(key) or {})})
    groups = [(name, [float((r.get(key) or {}).get(name, 0)) for r in rows]) for name in names]
    return [f"refresh {r['refresh']}" for r in rows], groups


def refresh_section(run: RunFiles) -> Section | None:
    rows = series.refreshes(run.records)
    if not rows:
        return None
    labels = [f"refresh {r['refresh']}" for r in rows]
    k = max(len(r["solvability_histogram"]) for r in rows) - 1
    found = [
        charts.grouped_bar_chart(
            "solvability",
            "Solvability histogram",
            [f"{i}/{k}" for i in range(k + 1)],
            [(label, r["solvability_histogram"]) for label, r in zip(labels, rows, strict=True)],
            ylabel="problems",
            caption="problems by how many of their rollouts were correct",
        )
    ]
    expert = [(f"refresh {n}", series.ledger_weights(rs)[0]) for n, rs in run.ledgers.items()]
    rollout = [(f"refresh {n}", series.ledger_weights(rs)[1]) for n, rs in run.ledgers.items()]
    if any(sample for _, sample in expert):
        found.append(
            charts.histogram_chart(
                "expert-weights",
                "Expert weights",
                expert,
                xlabel="expert weight A",
                caption="per selected problem, from the rollout ledgers",
            )
        )
    if any(sample for _, sample in rollout):
        found.append(
            charts.histogram_chart(
                "rollout-weights",
                "Rollout weights",
                rollout,
                xlabel="rollout weight",
                caption="per trained (correct, kept) rollout",
            )
        )
    for key, chart_id, title, caption in (
        ("weight_routes", "routes", "Routes", "how each problem was weighted"),
        ("dropped", "dropped", "Dropped rollouts by cause", "rollouts not trained on"),
    ):
        categories, groups = _count_groups(rows, key)
        if groups:
            found.append(
                charts.grouped_bar_chart(
                    chart_id,
                    title,
                    categories,
                    groups,
                    ylabel="count",
                    caption=caption,
                    stacked=True,
                )
            )
    shares = series.ratio_bound_shares(run.records)
    if shares:
        found.append(
            charts.grouped_bar_chart(
                "ratio-bounds",
                "Sequences on a ratio bound",
                [f"after refresh {s.after_refresh}" for s in shares],
                [
                    ("at ratio_min", [s.at_min for s in shares]),
                    ("at ratio_max", [s.at_max for s in shares]),
                ],
                ylabel="share of sequences",
                caption="importance ratio clipped at each bound, between refreshes",
            )
        )
    speeds = [r.get("generation_tokens_per_second") or 0.0 for r in rows]
    found.append(
        charts.grouped_bar_chart(
            "generation-speed",
            "Rollout generation speed",
            labels,
            [("tok/s", speeds)],
            ylabel="tokens / s",
            caption="decoding throughput during each refresh",
        )
    )
    summary_rows = [
        (
            r["refresh"],
            r.get("problems_selected"),
            r.get("rollouts_generated"),
            r.get("rollouts_trained"),
            ", ".join(f"{k}: {v}" for k, v in (r.get("routes") or {}).items()),
            _stats_text(r.get("expert_weight")),
            _stats_text(r.get("rollout_weight")),
            _cost_text(r.get("cost")),
        )
        for r in rows
    ]
    headers = ["refresh", "selected", "generated", "trained", "selection", "expert A", "rollout w"]
    headers.append("rollout time (spent on untrained rollouts)")
    body = table(headers, summary_rows)
    if not any(sample for _, sample in rollout):
        body += note(
            "No rollout has been trained on yet (none correct and kept): no rollout weights."
        )
    return Section("refreshes", "Rollout refreshes", found, body)


def _cost_text(cost: dict | None) -> str:
    if not cost:
        return ""
    return f"{cost['rollout_seconds']:.0f} s ({cost['unused_seconds']:.0f} s)"


def _stats_text(stats: dict | None) -> str:
    if not stats:
        return "-"
    return f"mean {stats['mean']:.3g} (min {stats['min']:.3g}, max {stats['max']:.3g})"


def wall_time_section(run: RunFiles) -> Section | None:
    split = series.wall_time_split(run.summary, run.records)
    if not split:
        return None
    final = bool(run.summary and run.summary.get("wall_time_split_seconds"))
    chart = charts.horizontal_bar_chart(
        "wall-time",
        "Wall-time split",
        split,
        xlabel="seconds",
        caption="the whole run" if final else "so far (the run has not finished)",
    )
    cost = (run.summary or {}).get("rollout_cost")
    body = ""
    if cost:
        body = note(
            f"Rollouts: {cost['rollout_seconds']:.0f} s over {cost['refreshes']} refreshes; "
            f"{cost['trained_tokens']:,} of {cost['generated_tokens']:,} generated tokens were "
            f"trained on, {cost['unused_seconds']:.0f} s went to rollouts that train nothing."
        )
    return Section("wall-time", "Wall time", [chart], body)


def _verdict_cell(verdict) -> str:
    css = "correct" if verdict == "correct" else "wrong"
    return f'<td class="{css}">{escape(verdict)}</td>'


def examples_section(run: RunFiles) -> Section | None:
    if run.ledgers:
        latest = max(run.ledgers)
        picked = series.example_rollouts(run.ledgers[latest])
        headers = ["problem", "gold", "route", "rollout", "extracted", "verdict", "weight"]
        rows = [
            (
                s["problem_id"],
                s["gold"],
                s["route"],
                f'<td class="text">{escape(s.get("text"))}</td>',
                s.get("extracted"),
                _verdict_cell(s.get("verdict")),
                f"{s.get('weight') or 0.0:.4g}",
            )
            for s in picked
        ]
        intro = note(f"From the latest refresh's ledger, rollouts/refresh-{latest:03d}.jsonl.")
    elif run.last_eval_rows:
        picked = series.example_completions(run.last_eval_rows)
        headers = ["problem", "gold", "rollout", "extracted", "verdict", "weight"]
        rows = [
            (
                r.get("id"),
                r.get("gold"),
                f'<td class="text">{escape(r.get("completion"))}</td>',
                r.get("extracted"),
                _verdict_cell(r.get("verdict")),
                "- (evaluation)",
            )
            for r in picked
        ]
        intro = note("This mode samples no rollouts: greedy completions of the latest evaluation.")
    else:
        return None
    body = intro + table(headers, rows, raw_columns=("rollout", "verdict"))
    return Section("examples", "Example rollouts", [], body)


def environment_rows() -> list[tuple[str, str]]:
    """Versions and machine, as seen by the process writing the report."""
    rows = []
    for package in ("rasft-mlx", "mlx", "mlx-lm", "numpy", "matplotlib"):
        try:
            rows.append((package, metadata.version(package)))
        except metadata.PackageNotFoundError:
            rows.append((package, "not installed"))
    rows += [
        ("python", platform.python_version()),
        ("platform", platform.platform()),
        ("machine", f"{platform.machine()}, {os.cpu_count()} CPUs"),
    ]
    return rows


def recipe_section(run: RunFiles) -> Section:
    summary = run.summary or {}
    facts = [
        (k, summary[k]) for k in ("mode", "steps", "trained_tokens", "final_loss") if k in summary
    ]
    body = (
        table(["", "value"], facts) if facts else note("summary.json is written when the run ends.")
    )
    body += "<h3>Versions and machine</h3>" + table(["", "version"], environment_rows())
    body += "<h3>recipe.yaml</h3>" + (
        preformatted(run.recipe_text) if run.recipe_text else note("no recipe.yaml")
    )
    return Section("recipe", "Recipe, versions and machine", [], body)


def build_run_report(run_dir: str | Path) -> str:
    """The report page of one run dir, as HTML text (ReportError when it is no run dir)."""
    run = read_run(run_dir)
    builders = (
        training_section,
        accuracy_section,
        beyond_section,
        refresh_section,
        wall_time_section,
        examples_section,
        recipe_section,
    )
    sections = []
    for build in builders:
        section = (
            build(run.records)
            if build in (training_section, accuracy_section, beyond_section)
            else build(run)
        )
        if section is not None:
            sections.append(section)
    mode = (run.summary or {}).get("mode") or run.recipe.get("training", {}).get("mode", "?")
    model = run.recipe.get("model", {}).get("path", "?")
    state = "finished" if run.summary else "in progress"
    subtitle = f"{mode} on {model} · {state} · {Path(run_dir).resolve()}"
    return render_page(f"rasft-mlx run report: {Path(run_dir).name}", subtitle, sections)


def write_report_quietly(run_dir: Path, console) -> Path | None:
    """Write the report during or after training; a failure is a warning, never a stopped run."""
    try:
        return write_run_report(run_dir)
    except Exception as error:
        console.print(f"[yellow]warning[/yellow]: could not write {run_dir / REPORT_FILE}: {error}")
        return None


def write_run_report(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write the report (default RUN_DIR/report.html) atomically; returns its path."""
    page = build_run_report(run_dir)
    path = Path(output) if output is not None else Path(run_dir) / REPORT_FILE
    atomic_write_text(path, page)
    return path
