"""Pure functions from metrics records (and ledgers) to the numbers the report plots."""

from __future__ import annotations

from dataclasses import dataclass

WALL_TIME_PHASES = ("rollout", "verify", "reference", "train", "eval", "checkpoint", "other")


def events(records: list[dict], name: str) -> list[dict]:
    return [r for r in records if r.get("event") == name]


def step_series(
    records: list[dict], key: str, event: str = "step"
) -> tuple[list[int], list[float]]:
    """(steps, values) of one numeric field of the `event` records (optimizer steps, or the
    validations); records missing it are left out."""
    steps, values = [], []
    for record in events(records, event):
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            steps.append(record["step"])
            values.append(float(value))
    return steps, values


def smoothed(values: list[float], weight: float = 0.8) -> list[float]:
    """Exponential moving average with TensorBoard's bias correction (early points not pulled to 0).

    s_t = weight * s_(t-1) + (1 - weight) * x_t, s_0 = 0, shown as s_t / (1 - weight^t).
    """
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    average, out = 0.0, []
    for t, value in enumerate(values, start=1):
        average = weight * average + (1.0 - weight) * value
        out.append(average / (1.0 - weight**t))
    return out


def accuracy_by_epoch(records: list[dict]) -> list[tuple[int, float]]:
    """(epoch, pass@1) per evaluation: epoch 0 is the starting model, then 1, 2, ... (1-based).

    When an epoch was evaluated twice (a resumed run repeats its last eval), the last one counts.
    """
    by_epoch: dict[int, float] = {}
    for record in events(records, "eval"):
        if record.get("pass_at_1") is not None:
            by_epoch[record["epoch"] + 1] = record["pass_at_1"]
    return sorted(by_epoch.items())


def refreshes(records: list[dict]) -> list[dict]:
    """The refresh records, the last one per refresh number (a resumed run may repeat one)."""
    by_number = {r["refresh"]: r for r in events(records, "refresh")}
    return [by_number[n] for n in sorted(by_number)]


@dataclass(frozen=True)
class RatioBoundShare:
    """The share of trained sequences whose importance ratio sat on each clip bound."""

    after_refresh: int  # the refresh whose sequences these steps trained on (0: none yet)
    steps: int
    sequences: int
    at_min: float
    at_max: float


def ratio_bound_shares(records: list[dict]) -> list[RatioBoundShare]:
    """Per stretch between two refreshes: sequences on the lower and upper ratio bound.

    Step records hold the fraction of their sequences on each bound; a stretch's share is the
    sequence-weighted mean (a step without a sequence count weighs 1). The refresh records
    only cover the stretch before them, so the last stretch is known only from the steps.
    """
    shares, current = [], 0
    totals = {"steps": 0, "sequences": 0, "at_min": 0.0, "at_max": 0.0}

    def close_stretch() -> None:
        if totals["sequences"]:
            shares.append(
                RatioBoundShare(
                    after_refresh=current,
                    steps=totals["steps"],
                    sequences=totals["sequences"],
                    at_min=totals["at_min"] / totals["sequences"],
                    at_max=totals["at_max"] / totals["sequences"],
                )
            )

    for record in records:
        if record.get("event") == "refresh":
            close_stretch()
            current = record["refresh"]
            totals = {"steps": 0, "sequences": 0, "at_min": 0.0, "at_max": 0.0}
        elif record.get("event") == "step" and "ratio_at_min" in record:
            count = record.get("sequences") or 1
            totals["steps"] += 1
            totals["sequences"] += count
            totals["at_min"] += record["ratio_at_min"] * count
            totals["at_max"] += record.get("ratio_at_max", 0.0) * count
    close_stretch()
    return shares


def wall_time_split(summary: dict | None, records: list[dict]) -> dict[str, float]:
    """Seconds per phase: summary.json's split, or while the run goes on the latest refresh's
    running totals. Known phases first in a fixed order, then any others."""
    split = (summary or {}).get("wall_time_split_seconds")
    if not split:
        latest = refreshes(records)
        split = latest[-1].get("timings", {}) if latest else {}
    ordered = {phase: float(split[phase]) for phase in WALL_TIME_PHASES if phase in split}
    ordered.update({k: float(v) for k, v in split.items() if k not in ordered})
    return ordered


def ledger_weights(rows: list[dict]) -> tuple[list[float], list[float]]:
    """One refresh's expert weight per problem, and the weight of every trained rollout."""
    expert = [float(row["expert_weight"]) for row in rows if row.get("expert_weight") is not None]
    rollout = [
        float(sample["weight"])
        for row in rows
        for sample in row.get("samples", [])
        if sample.get("weight")
    ]
    return expert, rollout


def example_rollouts(rows: list[dict], per_verdict: int = 3) -> list[dict]:
    """A few correct rollouts (trained ones first) and a few wrong ones from one ledger."""
    flat = [
        {
            "problem_id": row.get("problem_id"),
            "gold": row.get("gold"),
            "route": row.get("route"),
            "solvability": row.get("solvability"),
            **sample,
        }
        for row in rows
        for sample in row.get("samples", [])
    ]
    correct = [s for s in flat if s.get("verdict") == "correct"]
    correct.sort(key=lambda s: -(s.get("weight") or 0.0))  # stable: ledger order otherwise
    wrong = [s for s in flat if s.get("verdict") != "correct"]
    return correct[:per_verdict] + wrong[:per_verdict]


def example_completions(eval_rows: list[dict], per_verdict: int = 3) -> list[dict]:
    """A few correct and wrong greedy completions of the latest evaluation."""
    greedy = [r for r in eval_rows if r.get("sample", -1) == -1]
    correct = [r for r in greedy if r.get("correct")]
    wrong = [r for r in greedy if not r.get("correct")]
    return correct[:per_verdict] + wrong[:per_verdict]


def seed_spread(
    curves: list[tuple[list[int], list[float]]],
) -> tuple[list[int], list[float], list[float], list[float]]:
    """Across seeds, per step: (steps, mean, min, max) over the seeds that logged that step."""
    by_step: dict[int, list[float]] = {}
    for steps, values in curves:
        for step, value in zip(steps, values, strict=True):
            by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    means = [sum(by_step[s]) / len(by_step[s]) for s in steps]
    return steps, means, [min(by_step[s]) for s in steps], [max(by_step[s]) for s in steps]
