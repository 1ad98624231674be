"""Whether RASFT's mechanism is at work in a refresh: mixed groups, rollouts trained, weights.

RASFT only differs from SFT where a problem's K samples are partly right: an all-wrong group
leaves the demo at weight 1 and trains no rollout, an all-right one falls back. These gauges,
written with every refresh, tell an idle mechanism from a working one before any accuracy is read.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rasft_mlx.recipe.config import RasftConfig

FLOOR_TOLERANCE = 1e-9


def rollout_weight_floor(cfg: RasftConfig) -> float:
    """The lowest weight a correct rollout can get under the reference weighting."""
    return cfg.rollout_adv_coef * cfg.rollout_adv_floor


def mechanism_gauges(
    correct_counts: Sequence[int],
    k: int,
    generated: int,
    rollout_weights: Sequence[float],
    floor: float | None,
) -> dict:
    """Per refresh: the share of selected problems whose group is mixed (0 < correct < K), the
    share of generated rollouts that train, and the trained rollouts' median weight and share at
    the floor (`floor` None: a weighting without one, e.g. rft's weight 1 or the linear rule)."""
    problems = len(correct_counts)
    mixed = sum(1 for c in correct_counts if 0 < c < k)
    weights = np.asarray(rollout_weights, dtype=np.float64)
    gauges = {
        "mixed_group_share": round(mixed / problems, 4) if problems else None,
        "trained_share": round(len(weights) / generated, 4) if generated else None,
        "rollout_weight_median": round(float(np.median(weights)), 6) if len(weights) else None,
        "rollout_weight_at_floor": None,
    }
    if floor is not None and len(weights):
        gauges["rollout_weight_at_floor"] = round(
            float(np.mean(weights <= floor + FLOOR_TOLERANCE)), 4
        )
    return gauges


def rollout_cost(seconds: float, generated_tokens: int, trained_tokens: int) -> dict:
    """A refresh's generation time and what share of it trained: `unused_seconds` prices the
    generated tokens of rollouts that train nothing (wrong, duplicate, filtered, truncated) at
    the refresh's own decode rate."""
    unused = 1.0 - trained_tokens / generated_tokens if generated_tokens else 0.0
    return {
        "rollout_seconds": round(seconds, 2),
        "generated_tokens": generated_tokens,
        "trained_tokens": trained_tokens,
        "unused_seconds": round(seconds * unused, 2),
    }


def total_rollout_cost(costs: list[dict]) -> dict | None:
    """The run's rollout cost from its refreshes' `cost` records (None without refreshes)."""
    if not costs:
        return None
    keys = ("rollout_seconds", "generated_tokens", "trained_tokens", "unused_seconds")
    total = {key: sum(cost[key] for cost in costs) for key in keys}
    total["rollout_seconds"] = round(total["rollout_seconds"], 2)
    total["unused_seconds"] = round(total["unused_seconds"], 2)
    return {"refreshes": len(costs), **total}


def cost_text(cost: dict) -> str:
    """`83 s: 1,204 of 9,310 generated tokens trained; 72 s on rollouts that train nothing`."""
    return (
        f"{cost['rollout_seconds']:.0f} s: {cost['trained_tokens']:,} of "
        f"{cost['generated_tokens']:,} generated tokens trained; "
        f"{cost['unused_seconds']:.0f} s on rollouts that train nothing"
    )


def gauges_text(gauges: dict, floor: float | None) -> str:
    """One line: `62% mixed groups, 31% of rollouts trained, median weight 0.012 (18% at the
    floor 0.005)`."""

    def share(value) -> str:
        return "-" if value is None else f"{value:.0%}"

    text = f"{share(gauges['mixed_group_share'])} mixed groups, "
    text += f"{share(gauges['trained_share'])} of rollouts trained"
    median = gauges["rollout_weight_median"]
    if median is not None:
        text += f", median weight {median:.3g}"
        if floor is not None and gauges["rollout_weight_at_floor"] is not None:
            text += f" ({share(gauges['rollout_weight_at_floor'])} at the floor {floor:.3g})"
    return text


def summary_stats(values: np.ndarray) -> dict:
    """Mean, min and max, rounded for the metrics."""
    return {
        "mean": round(float(values.mean()), 4),
        "min": round(float(values.min()), 4),
        "max": round(float(values.max()), 4),
    }
