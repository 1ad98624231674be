"""`rasft-mlx plan`'s table: the plan's figures as labelled rows."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from rasft_mlx.console.display import format_bytes
from rasft_mlx.experiments.mechanism_probe import mechanism_rows
from rasft_mlx.recipe.config import ROLLOUT_MODES
from rasft_mlx.recipe.protocols import protocol_report

if TYPE_CHECKING:
    from rasft_mlx.experiments.plan import ProbeResult, RunPlan


def format_seconds(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.1f} s"


def plan_rows(plan: RunPlan) -> list[tuple[str, str]]:
    """(label, value) rows in print order; render_plan puts them in a table."""
    m, p, z = plan.memory, plan.probe, format_bytes
    steps = f"{plan.steps_per_epoch} / epoch, {plan.planned_steps} planned"
    if plan.hard_pool_demos:
        steps += f" (the hard pool's {plan.hard_pool_demos} demos trained again included)"
    if plan.max_planned_steps > plan.planned_steps:
        steps += f", at most {plan.max_planned_steps} with rollouts"
    tokens = f"{plan.prompt_tokens_per_epoch:,} prompt, {plan.response_tokens_per_epoch:,} response"
    rows = [
        ("model", f"{plan.model} ({plan.mode})"),
        ("parameters", f"{plan.total_parameters:,} total, {plan.trainable_parameters:,} trained"),
        ("weights", z(plan.weight_bytes)),
        ("sequences / epoch", f"{plan.sequences_per_epoch} ({plan.skipped_too_long} too long)"),
        ("tokens / epoch", f"{plan.tokens_per_epoch:,} ({tokens})"),
        ("largest bucket", f"{plan.largest_bucket} tokens"),
        ("optimizer steps", steps),
    ]
    if plan.mode in ROLLOUT_MODES:
        volume = f"<= {plan.rollout_tokens_per_refresh:,} tokens"
        rows.append(
            ("rollouts / refresh", f"{plan.rollout_problems_per_refresh} problems, {volume}")
        )
        at = ", ".join(str(step) for step in plan.refresh_steps)
        refreshes = f"{plan.refreshes}" + (f", after step {at}" if at else "")
        full = plan.refreshes * plan.rollout_problems_per_refresh
        if plan.rollout_problems < full:
            refreshes += (
                f"; {plan.rollout_problems} problems rolled out in all, not {full}: the step cap "
                "trims the last (rasft.trim_capped_refresh)"
            )
        rows.append(("refreshes", refreshes))
    decode = f"eval {plan.eval_rows}" + (
        f", rollouts {plan.rollout_rows}" if plan.rollout_rows else ""
    )
    train = f"frozen weights {z(m.weights)}, trained + AdamW moments {z(m.trainable_state)}"
    if m.reference_weights:
        train += f", reference copy {z(m.reference_weights)}"
    train += f", update {z(m.update_temporaries)}"
    train += f", activations {z(m.activations)}, logits {z(m.logits)}"
    generate = f"KV cache {z(m.kv_cache)}, temporaries {z(m.generation_temporaries)}"
    rows += [
        ("eval tokens", f"<= {plan.eval_tokens:,}"),
        ("decode batch", f"{decode} sequences together"),
        ("peak memory (estimate)", f"{z(m.peak)} of {z(plan.machine_memory)}"),
        ("  training step", f"{z(m.training)}: {train}"),
        ("  generation", f"{z(m.generation)}: {generate}"),
    ]
    if p is not None:
        step = f"{p.seconds_per_step:.2f} s/step (first {p.first_step_seconds:.2f} s)"
        measured = f"training {z(p.measured_training_peak)}, generation "
        measured += f"{z(p.measured_generation_peak)}; process RSS {z(p.rss_peak)}"
        parts = zip(("train", "reference", "rollouts", "eval"), _seconds_parts(p), strict=True)
        wall = ", ".join(f"{name} {format_seconds(t)}" for name, t in parts)
        rows += [
            ("probe", f"{p.steps} steps: {step}; {p.generation_tokens_per_second:.0f} tok/s"),
            ("peak memory (measured)", measured),
            ("wall time (estimate)", f"<= {format_seconds(p.wall_seconds)}: {wall}"),
        ]
    if plan.mechanism is not None:
        rows += mechanism_rows(plan.mechanism)
    return rows


def _seconds_parts(p: ProbeResult) -> tuple[float, float, float, float]:
    return p.train_seconds, p.reference_seconds, p.rollout_seconds, p.eval_seconds


def render_plan(plan: RunPlan) -> Table:
    table = Table(title="Run plan", show_header=False)
    for label, value in plan_rows(plan):
        table.add_row(label, value)
    return table


def protocol_lines(recipe) -> list[str]:
    """What a recipe's protocol set: the keys holding its values and the ones the recipe changed."""
    if recipe.protocol == "project":
        return []
    held, changed = protocol_report(recipe)
    lines = [f"protocol {recipe.protocol}: {len(held)} keys hold its values: {', '.join(held)}"]
    if changed:
        lines.append(f"changed by the recipe or --set: {'; '.join(changed)}")
    return lines
