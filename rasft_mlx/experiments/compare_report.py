"""The comparison's report: results.md, and the files written atomically (the console tables:
`compare_tables`). Rows are the comparison's arms: its modes, then its variants."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from rasft_mlx.reporting import mechanism
from rasft_mlx.reporting.mechanism import arm_names, arm_of
from rasft_mlx.runtime.fileio import atomic_write_text

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _spread(summary: dict) -> str:
    if summary["pass_at_1_mean"] is None:
        return "-"
    return f"{summary['pass_at_1_mean']:.3f} ± {summary['pass_at_1_std']:.3f}"


def _versus(summary: dict, reference: str) -> str:
    paired = summary.get(f"paired_vs_{reference}")
    if paired:
        return (
            f"{paired['difference']:+.3f} [{paired['low']:+.3f}, {paired['high']:+.3f}] "
            f"{paired['verdict']} (detectable {paired['detectable']:.3f})"
        )
    comparison = summary.get(f"vs_{reference}")
    if not comparison:
        return "-"
    text = f"{comparison['difference']:+.3f}"
    if comparison["beyond_spread"] is None:
        return text
    return text + (" (beyond spread)" if comparison["beyond_spread"] else " (within spread)")


def _paired_text(paired: dict | None) -> str:
    if not paired:
        return ""
    return (
        f" ({paired['difference']:+.3f} [{paired['low']:+.3f}, {paired['high']:+.3f}] "
        f"{paired['verdict']})"
    )


def _pairwise_lines(results: dict) -> list[str]:
    rows = results.get("pairwise", [])
    if not rows:
        return []
    lines = [
        "## Every pair of modes",
        "",
        "The same paired bootstrap between the other modes and variants (in-distribution test "
        "set), e.g. rasft - rft: RASFT's weighting against the same rollouts kept at weight 1.",
        "",
        "| mode | versus | difference [95 % interval] | verdict | detectable |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {arm_of(r)} | {r['versus']} | {r['difference']:+.3f} [{r['low']:+.3f}, "
            f"{r['high']:+.3f}] | {r['verdict']} | {r['detectable']:.3f} |"
        )
    return [*lines, ""]


def _extra_set_lines(results: dict) -> list[str]:
    """Each extra test set (e.g. synthetic-ood): mean ± std per mode and the paired difference."""
    modes, summaries = arm_names(results), results["summary"]
    reference = modes[0]
    names = sorted({n for s in summaries.values() for n in s.get("extra", {})})
    if not names:
        return []
    lines = [
        "## Other test sets (greedy pass@1, mean ± std over seeds; vs "
        f"{reference} with its 95 % paired interval)",
        "",
        "| mode | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    base_extra = results.get("base_extra") or {}
    if base_extra:
        cells = [_pct(base_extra.get(n, {}).get("pass_at_1")) for n in names]
        lines.append(f"| {mechanism.start_label(results)} | " + " | ".join(cells) + " |")
    for mode in modes:
        if mode not in summaries:
            continue
        summary, cells = summaries[mode], []
        paired = summary.get(f"extra_paired_vs_{reference}", {})
        for name in names:
            value = summary.get("extra", {}).get(name)
            text = (
                "-"
                if not value
                else f"{value['pass_at_1_mean']:.3f} ± {value['pass_at_1_std']:.3f}"
            )
            cells.append(text + _paired_text(paired.get(name)))
        lines.append(f"| {mode} | " + " | ".join(cells) + " |")
    sizes = ", ".join(f"{n} {base_extra[n]['problems']}" for n in names if n in base_extra)
    return lines + ["", f"Problems per set: {sizes}." if sizes else "", ""]


def _answer_shape_lines(results: dict) -> list[str]:
    summaries = results["summary"]
    rows = [(m, summaries[m].get("answer_shapes")) for m in arm_names(results) if m in summaries]
    rows = [(mechanism.start_label(results), results.get("base_answer_shapes")), *rows]
    rows = [(name, shapes) for name, shapes in rows if shapes]
    if not rows:
        return []
    lines = [
        "## Answer shapes (greedy, in-distribution test set; mean over seeds)",
        "",
        "| | final answer in \\boxed{} | ran out of new tokens | no answer found |",
        "|---|---|---|---|",
    ]
    for name, shapes in rows:
        lines.append(
            f"| {name} | {shapes['boxed']:.1%} | {shapes['truncated']:.1%} "
            f"| {shapes['no_answer']:.1%} |"
        )
    return lines + [
        "",
        "A mode that stops writing the demos' final `\\boxed{}` line is graded on the last number "
        "it writes; a truncated answer always counts as wrong.",
        "",
    ]


def _drift_lines(results: dict) -> list[str]:
    summaries = results["summary"]
    rows = [
        (m, summaries[m]["drift"]) for m in arm_names(results) if summaries.get(m, {}).get("drift")
    ]
    if not rows:
        return []
    lines = [
        "## Drift from the starting model (per answer token, mean ± std over seeds)",
        "",
        "| mode | KL(pi_ref ‖ pi_theta) | NLL rise of the starting model's answers |",
        "|---|---|---|",
    ]
    for mode, drift in rows:
        lines.append(
            f"| {mode} | {drift['kl_ref_policy_mean']:.4f} ± {drift['kl_ref_policy_std']:.4f} "
            f"| {drift['nll_increase_mean']:.4f} ± {drift['nll_increase_std']:.4f} |"
        )
    problems = rows[0][1]["problems"]
    return lines + [
        "",
        f"On the starting model's own greedy answers to {problems} held-out test prompts; the "
        "reference is the starting policy: the adapters off, or a full fine-tune's starting "
        "weights (0 before training).",
        "",
    ]


def _signal_lines(results: dict) -> list[str]:
    signal = results.get("refresh_signal") or {}
    if not signal:
        return []
    lines = [
        "## Is the mechanism at work? (per refresh, mean over seeds)",
        "",
        "| " + " | ".join(mechanism.HEADERS) + " |",
        "|" + "---|" * len(mechanism.HEADERS),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in mechanism.mechanism_rows(signal)]
    return lines + ["", mechanism.NOTE, ""]


def _share_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _code_lines(results: dict) -> list[str]:
    """Which code ran the runs (summary.json 'software', metrics 'process' records)."""
    counts: dict[str, int] = {}
    unrecorded = 0
    for run in results["runs"]:
        code = run.get("code") or []
        unrecorded += not code
        key = " then ".join(code)
        if key:
            counts[key] = counts.get(key, 0) + 1
    if not counts:
        return []
    parts = [f"{key} ({n} run{'s' * (n != 1)})" for key, n in counts.items()]
    if unrecorded:
        parts.append(f"not recorded ({unrecorded}: runs from before rasft-mlx recorded it)")
    return ["Code: " + "; ".join(parts) + ".", ""]


def _variant_lines(results: dict) -> list[str]:
    """What each variant arm trains: its mode, its recipe, and where that recipe departs from the
    comparison's."""
    lines = []
    for arm in mechanism.variant_arms(results):
        changed = arm.get("differences") or {}
        keys = "; ".join(f"{k} {theirs!r} ({ours!r})" for k, (ours, theirs) in changed.items())
        lines += [
            f"Variant **{arm['arm']}**: mode {arm['mode']}, recipe `{arm['recipe']}` (saved as "
            f"{arm['saved_recipe']}), the same seeds and step cap; it differs from the "
            f"comparison's recipe in: {keys or 'nothing but the mode'} (the comparison's value "
            "in parentheses).",
            "",
        ]
    return lines


def _figure_lines(figures: Sequence[tuple[str, str]]) -> list[str]:
    if not figures:
        return []
    lines = ["## Figures", ""]
    for title, path in figures:
        lines += [f"![{title}]({path})", ""]
    return lines


def results_markdown(results: dict, figures: Sequence[tuple[str, str]] = ()) -> str:
    """results.md; `figures` are (title, path relative to the compare dir) of its charts."""
    modes = arm_names(results)
    reference = modes[0]
    base, summaries = results["base"], results["summary"]
    lines = [
        f"# rasft-mlx compare: `{results['recipe']}`",
        "",
        f"Model `{results['model']}`; train `{results['data']['train']}` "
        f"({results['train_problems']} problems), test `{results['data']['test']}` "
        f"({results['test_problems']} problems, greedy pass@1, "
        f"max_new_tokens {results['eval']['max_new_tokens']}); seeds "
        f"{', '.join(map(str, results['seeds']))}."
        + ("" if results["complete"] else " **Partial: some runs have not finished yet.**"),
        "",
        f"**Budget** ({results['budget']['rule']}): {results['budget']['description']}.",
        "",
        *([f"Command: `{results['command']}`", ""] if results.get("command") else []),
        *_variant_lines(results),
        "Settings: "
        + ", ".join(f"{k} {v}" for k, v in results.get("settings", {}).items())
        + " (everything else: compare-recipe.yaml).",
        "",
        *_code_lines(results),
        f"| mode | runs | pass@1 mean ± std | min | max | vs {reference} | tokens trained "
        "| steps | wall time / run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    if base is not None:
        lines.append(
            f"| {mechanism.start_label(results)} | 1 | {base['pass_at_1']:.3f} | | | | 0 | 0 "
            f"| {_duration(base['seconds'])} (eval) |"
        )
    for mode in modes:
        if mode not in summaries:
            continue
        s = summaries[mode]
        lines.append(
            f"| {mode} | {s['runs']} | {_spread(s)} | {_pct(s['pass_at_1_min'])} "
            f"| {_pct(s['pass_at_1_max'])} | {_versus(s, reference) if mode != reference else ''} "
            f"| {s['trained_tokens_mean']:,.0f} | {s['steps_mean']:.0f} "
            f"| {_duration(s['total_seconds_mean'])} |"
        )
    lines += [
        "",
        f"std is the sample standard deviation over seeds. vs {reference}: the difference of "
        "mean pass@1 on the same test problems with its 95 % bootstrap interval (problems "
        "resampled in pairs, seeds within each mode; 10,000 draws); 'better' or 'worse' only when "
        "the interval excludes 0; 'detectable': the smallest true difference this test set finds "
        "with 80 % power at 5 % (paired).",
        "",
        *_pairwise_lines(results),
        *_extra_set_lines(results),
        *_answer_shape_lines(results),
        *_drift_lines(results),
        *_signal_lines(results),
        *_figure_lines(figures),
        "## Held-out pass@1 over training (mean ± std over seeds; @ mean step)",
        "",
    ]
    curves = results["curves"]
    epochs = sorted({p["epoch"] for points in curves.values() for p in points})
    lines += [
        "| epoch | " + " | ".join(m for m in modes if m in curves) + " |",
        "|---|" + "---|" * len(curves),
    ]
    for epoch in epochs:
        cells = []
        for mode in modes:
            if mode not in curves:
                continue
            point = next((p for p in curves[mode] if p["epoch"] == epoch), None)
            cells.append(
                "-"
                if point is None
                else f"{point['pass_at_1_mean']:.3f} ± {point['pass_at_1_std']:.3f} "
                f"@ {point['step_mean']:.0f}"
            )
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Epoch 0 is the base model. Under the step budget the rollout modes' (rasft, rft) epochs "
        "are longer (demos plus rollouts), so their later points sit at other steps; their last "
        "point is at the cap.",
        "",
        "## Runs",
        "",
        "| mode | seed | pass@1 | final loss | steps | tokens trained | wall time | run dir |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        lines.append(
            f"| {arm_of(run)} | {run['seed']} | {_pct(run['pass_at_1'])} "
            f"| {run['final_loss']:.4f} | {run['steps']} | {run['trained_tokens']:,} "
            f"| {_duration(run['total_seconds'])} | `{run['run_dir']}` |"
        )
    refresh_lines = []
    for run in results["runs"]:
        for row in run.get("refreshes", []):
            rollout_weight = row["rollout_weight"] or {}
            expert_weight = row["expert_weight"] or {}
            generated, reused = str(row["rollouts_generated"]), row.get("rollouts_reused")
            if reused:  # read from another run of the comparison: its decode time not spent here
                generated += f" (read from {reused['from']}: {reused['seconds']:.0f} s not spent)"
            refresh_lines.append(
                f"| {arm_of(run)} | {run['seed']} | {row['refresh']} | {row['problems_selected']} "
                f"| {generated} | {row['rollouts_trained']} "
                f"| {row['solvability_histogram']} | {_pct(expert_weight.get('mean'))} "
                f"| {_pct(rollout_weight.get('mean'))} | {row['dropped']} |"
            )
    if refresh_lines:
        lines += [
            "",
            "## Rollout refreshes",
            "",
            "Solvability histogram: problems with 0..k correct rollouts. Weights are means over "
            "problems (expert) and trained rollouts (rollout).",
            "",
            "| mode | seed | refresh | selected | generated | trained | solvability "
            "| expert weight | rollout weight | dropped |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *refresh_lines,
        ]
        clipping = [
            f"{arm_of(r)} seed {r['seed']}: {r['ratio_at_min_mean']:.3f} at ratio_min, "
            f"{r['ratio_at_max_mean']:.3f} at ratio_max"
            for r in results["runs"]
            if r["mode"] == "rasft" and r.get("ratio_at_min_mean") is not None
        ]
        bounds = results.get("settings", {}).get("rasft.ratio clip")
        if bounds and bounds[0] == bounds[1]:  # every sequence sits on both bounds: no signal
            lines += ["", f"The inverse ratio is fixed at {bounds[0]} (ratio_min = ratio_max)."]
        elif clipping:
            lines += ["", "Mean fraction of sequences on the ratio clip bounds per step: "]
            lines[-1] += "; ".join(clipping) + "."
    return "\n".join(lines) + "\n"


def write_results(
    out_dir: Path, results: dict, figures: Sequence[tuple[str, str]] = ()
) -> tuple[Path, Path]:
    json_path, md_path = out_dir / RESULTS_JSON, out_dir / RESULTS_MD
    atomic_write_text(json_path, json.dumps(results, indent=2) + "\n")
    atomic_write_text(md_path, results_markdown(results, figures))
    return json_path, md_path
