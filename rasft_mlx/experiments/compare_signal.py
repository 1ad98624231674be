"""A comparison's mechanism gauges: per rollout arm and refresh, whether RASFT acted.

Pure functions over the run entries of results.json (`compare_results.collect_run`); results.md
and compare.html render the table (`reporting/mechanism.py`).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from rasft_mlx.reporting.mechanism import arm_of

RATIO_MODES = ("rasft",)  # modes whose loss carries the clipped inverse ratio rho


def _share(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def _mean_present(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


GAUGES = (
    "mixed_group_share",
    "trained_share",
    "rollout_weight_median",
    "rollout_weight_at_floor",
)


def refresh_signal(runs: list[dict]) -> dict[str, list[dict]]:
    """Per rollout arm (a rasft or rft mode, or a variant training one) and refresh, means over seeds of where the method departs from SFT: the
    share of problems whose expert weight came from their rollout group (route 'weighted'; the
    others keep weight 1: not rolled out, or a fallback), the rollouts trained and their mean
    weight, and the share of sequences on the ratio floor during the steps before the refresh
    (modes that train with the ratio only; rft's rho is 1)."""
    by_arm: dict[str, dict[int, list[dict]]] = {}
    mode_of: dict[str, str] = {}
    for run in runs:
        for row in run.get("refreshes") or []:
            by_arm.setdefault(arm_of(run), {}).setdefault(row["refresh"], []).append(row)
            mode_of[arm_of(run)] = run["mode"]
    signal = {}
    for arm, by_refresh in by_arm.items():
        rows = []
        for refresh, found in sorted(by_refresh.items()):
            routes = [row.get("weight_routes") or {} for row in found]
            clip = [row.get("ratio_clip_since_last_refresh") or {} for row in found]
            rollout_weight = [(row.get("rollout_weight") or {}).get("mean") for row in found]
            gauges = [row.get("mechanism") or {} for row in found]
            rows.append(
                {
                    "refresh": refresh,
                    "seeds": len(found),
                    "weighted_share": _mean_present(
                        [_share(r.get("weighted", 0), sum(r.values())) for r in routes]
                    ),
                    "rollouts_trained": statistics.fmean(r["rollouts_trained"] for r in found),
                    "rollout_weight": _mean_present(rollout_weight),
                    **{key: _mean_present([g.get(key) for g in gauges]) for key in GAUGES},
                    "ratio_at_min_before": (
                        _mean_present([c.get("at_min") for c in clip])
                        if mode_of[arm] in RATIO_MODES
                        else None
                    ),
                }
            )
        signal[arm] = rows
    return signal
