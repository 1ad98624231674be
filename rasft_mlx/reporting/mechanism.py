"""The mechanism table of a comparison: per rollout arm and refresh, whether RASFT acted.

Read before accuracy: a run whose groups are all wrong, whose rollouts are not trained, or whose
trained rollouts sit at the weight floor trains like SFT, whatever its pass@1 says. Plain data
in, (headers, rows) out: results.md and compare.html render the same table. Also the small
readers of results.json that both share: its arms, a run's arm, what the runs start from.
"""

from __future__ import annotations

HEADERS = (
    "mode",
    "refresh",
    "seeds",
    "mixed groups",
    "rollouts trained / generated",
    "median rollout weight",
    "rollouts at the weight floor",
    "problems weighted by their group",
    "sequences on the ratio floor before it",
)
NOTE = (
    "Mixed groups: selected problems with some but not all of their K samples right, the only "
    "ones whose expert weight and rollouts RASFT sets from the group. Rollouts at the weight "
    "floor (rollout_adv_coef x rollout_adv_floor) carry almost no gradient. A problem's expert "
    "weight departs from 1 only when its rollout group sets it ('weighted'). A sequence on the "
    "ratio floor has its loss scaled by rasft.ratio_min: the policy gives its tokens at least "
    "1/ratio_min times the reference's probability. Means over seeds."
)


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def mechanism_rows(signal: dict[str, list[dict]]) -> list[tuple[str, ...]]:
    """One row per arm and refresh of results.json's `refresh_signal`."""
    rows = []
    for arm, refreshes in signal.items():
        for row in refreshes:
            rows.append(
                (
                    arm,
                    str(row["refresh"]),
                    str(row["seeds"]),
                    _share(row.get("mixed_group_share")),
                    _share(row.get("trained_share")),
                    _number(row.get("rollout_weight_median")),
                    _share(row.get("rollout_weight_at_floor")),
                    _share(row.get("weighted_share")),
                    _share(row.get("ratio_at_min_before")),
                )
            )
    return rows


def start_label(results: dict) -> str:
    """What a comparison's runs start from: the base model, or the base with a fused adapter."""
    adapter = results.get("start_adapter")
    return f"start (base + {adapter})" if adapter else "base model"


def arm_names(results: dict) -> list[str]:
    """A comparison's arms in order, the reference first: its modes, then its variants (results
    written before variants existed list only `modes`)."""
    arms = results.get("arms")
    return [a["arm"] for a in arms] if arms else list(results["modes"])


def arm_of(entry: dict) -> str:
    """The arm of a run entry or a pairwise row: a variant's label, or its mode."""
    return entry.get("arm") or entry["mode"]


def variant_arms(results: dict) -> list[dict]:
    """The arms with a recipe of their own (`--variant LABEL=RECIPE`)."""
    return [a for a in results.get("arms") or [] if a.get("variant")]
