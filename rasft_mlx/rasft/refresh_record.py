"""What a refresh leaves behind: its ledger rows and the table it prints, in rows a person reads."""

from __future__ import annotations

from rich.table import Table

from rasft_mlx.console.display import readable
from rasft_mlx.rasft.gauges import cost_text, gauges_text
from rasft_mlx.rasft.groups import RolloutGroup


def ratio_cell(shares: dict | None) -> str:
    if not shares:
        return "-"
    return (
        f"{shares['at_min']:.0%} at the floor, {shares['at_max']:.0%} at the ceiling "
        f"(of {shares['sequences']} sequences since the last refresh)"
    )


def refresh_table(record: dict, floor: float | None = None) -> Table:
    """The refresh record (as written to metrics.jsonl) as a two-column table, the mechanism's
    gauges first."""
    table = Table(title=f"RASFT refresh {record['refresh']}", show_header=False)
    if record.get("mechanism"):
        table.add_row("mechanism", gauges_text(record["mechanism"], floor))
    for key in ("problems_selected", "rollouts_generated", "rollouts_trained"):
        table.add_row(key.replace("_", " "), str(record[key]))
    table.add_row("generation tok/s", f"{record['generation_tokens_per_second']:.0f}")
    if record.get("cost"):
        table.add_row("rollout cost", cost_text(record["cost"]))
    histogram = record["solvability_histogram"]
    k = len(histogram) - 1
    table.add_row("solvability", "  ".join(f"{i}/{k}: {n}" for i, n in enumerate(histogram)))
    table.add_row("routes", readable(record["routes"]))
    table.add_row("weight routes", readable(record["weight_routes"]))
    table.add_row("expert weight", readable(record["expert_weight"]))
    table.add_row("rollout weight", readable(record["rollout_weight"]))
    table.add_row("dropped", readable(record["dropped"]))
    table.add_row("ratio on bounds", ratio_cell(record["ratio_clip_since_last_refresh"]))
    return table


def ledger_row(problem, rollouts, group: RolloutGroup, trained: dict) -> dict:
    """One problem's line of rollouts/refresh-NNN.jsonl: every sample, its verdict, role, weight."""
    weights = group.weights
    return {
        "problem_id": problem.id,
        "gold": problem.answer,
        "group_size": group.group_size,
        "solvability": weights.solvability,
        "route": weights.route,
        "expert_weight": weights.expert_weight,
        "samples": [
            {
                "text": r.text,
                "extracted": r.extracted,
                "verdict": r.verdict,
                "role": group.roles[r.sample],
                "weight": trained.get(r.sample, 0.0),
            }
            for r in rollouts
        ],
    }
