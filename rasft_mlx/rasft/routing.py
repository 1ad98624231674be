"""Which problems get rollouts: everything, a random fraction, or the authors' NLL bands."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from rasft_mlx.recipe.config import RasftConfig


def select_all(ids: Iterable[str]) -> list[str]:
    """Every problem gets rollouts."""
    return list(ids)


def _random_count(size: int, fraction: float, rng: np.random.Generator) -> int:
    # Stochastic rounding keeps the expected count exact, so a 3 % probe of a small pool
    # still fires now and then instead of always rounding down to zero.
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    expected = fraction * size
    count = math.floor(expected)
    if rng.random() < expected - count:
        count += 1
    return min(count, size)


def select_fraction(ids: Iterable[str], fraction: float, rng: np.random.Generator) -> list[str]:
    """A random `fraction` of `ids` (kept in input order); deterministic given `rng`'s state."""
    ids = list(ids)
    count = _random_count(len(ids), fraction, rng)
    chosen = rng.choice(len(ids), size=count, replace=False) if count else []
    return [ids[i] for i in sorted(chosen)]


@dataclass(frozen=True)
class BandThresholds:
    """NLL thresholds from a calibration sample; the sorted sample maps any quantile to an NLL."""

    easy: float  # NLL at easy_quantile
    hard: float  # NLL at hard_quantile
    mid_start: tuple[float, float]  # NLLs at mid_window_start
    mid_end: tuple[float, float]  # NLLs at mid_window_end
    calibration_nll: tuple[float, ...] = field(repr=False)

    def nll_at(self, quantile: float) -> float:
        return float(np.quantile(self.calibration_nll, quantile))

    def to_dict(self) -> dict:
        """A checkpoint's JSON form (tuples as lists)."""
        return {
            "easy": self.easy,
            "hard": self.hard,
            "mid_start": list(self.mid_start),
            "mid_end": list(self.mid_end),
            "calibration_nll": list(self.calibration_nll),
        }

    @classmethod
    def from_dict(cls, saved: dict) -> BandThresholds:
        return cls(
            easy=saved["easy"],
            hard=saved["hard"],
            mid_start=tuple(saved["mid_start"]),
            mid_end=tuple(saved["mid_end"]),
            calibration_nll=tuple(saved["calibration_nll"]),
        )


def calibrate_thresholds(
    nll_values: Sequence[float], cfg: RasftConfig | None = None
) -> BandThresholds:
    """Quantile thresholds (np.quantile, linear) of the policy's mean demo NLL on a sample."""
    cfg = cfg or RasftConfig()
    values = np.sort(np.asarray(nll_values, dtype=np.float64))
    if values.size == 0:
        raise ValueError("calibration needs at least one NLL value")
    if not np.all(np.isfinite(values)):
        raise ValueError("calibration NLL values must be finite")
    sample = tuple(float(v) for v in values)

    def at(q: float) -> float:
        return float(np.quantile(values, q))

    return BandThresholds(
        easy=at(cfg.easy_quantile),
        hard=at(cfg.hard_quantile),
        mid_start=(at(cfg.mid_window_start[0]), at(cfg.mid_window_start[1])),
        mid_end=(at(cfg.mid_window_end[0]), at(cfg.mid_window_end[1])),
        calibration_nll=sample,
    )


def mid_window(progress: float, cfg: RasftConfig | None = None) -> tuple[float, float]:
    """The mid window in quantile space, sliding linearly from start to end as progress 0 -> 1."""
    cfg = cfg or RasftConfig()
    t = min(max(progress, 0.0), 1.0)
    (start_lo, start_hi), (end_lo, end_hi) = cfg.mid_window_start, cfg.mid_window_end
    return start_lo + t * (end_lo - start_lo), start_hi + t * (end_hi - start_hi)


@dataclass(frozen=True)
class RoutingDecision:
    easy_ids: tuple[str, ...]  # NLL <= q_easy: no rollouts, A = 1
    rollout_ids: tuple[str, ...]  # sampled from the mid window, then the probed hard-pool ids
    hard_ids: tuple[str, ...]  # between the window's top and q_hard: A = 1, joins the hard pool
    other_ids: tuple[str, ...]  # everything else (unselected mid, gaps, above q_hard): A = 1
    probed_ids: tuple[str, ...]  # the part of rollout_ids re-probed from the hard pool
    window_quantiles: tuple[float, float]
    window_nll: tuple[float, float]
    hard_pool: frozenset[str]  # the pool after this round: old pool plus hard_ids, less released
    released_ids: tuple[str, ...] = ()  # probes re-scored below the window: out of the pool


def route_by_nll(
    problem_nll: dict[str, float],
    thresholds: BandThresholds,
    progress: float,
    cfg: RasftConfig | None,
    rng: np.random.Generator,
    hard_pool: Iterable[str] = (),
) -> RoutingDecision:
    """Route problems by the current policy's mean demo NLL (spec section 3, "nll-band").

    Mapping to the spec: easy <= q_easy (0.10) gets A = 1 and no rollouts; the mid window
    [lo, hi] (quantiles sliding [0.20, 0.45] -> [0.50, 0.75] with `progress`, converted to NLL
    through the calibration sample) gives a random `selection_fraction` (35 %) rollouts; NLL in
    (hi, q_hard] (0.90) is trained now at A = 1 and added to the hard pool; a random
    `hard_probe_fraction` (3 %) of the incoming pool is probed and re-scored by its current
    NLL, as the authors do: below the window it leaves the pool (trained at A = 1 in its band),
    up to q_hard it gets rollouts, above q_hard it stays in the pool without rollouts.
    Everything else (mid problems not drawn, NLL between q_easy and lo, NLL above q_hard) is
    "other". Each id lands in exactly one of easy/rollout/hard/other; a probe with rollouts wins
    over its band. Ids are visited in sorted order, so the result depends only on the inputs and
    `rng`. Probes with rollouts stay in the returned pool; the refresh drops the solved ones.
    """
    cfg = cfg or RasftConfig()
    pool = frozenset(hard_pool)
    window_q = mid_window(progress, cfg)
    window_lo, window_hi = thresholds.nll_at(window_q[0]), thresholds.nll_at(window_q[1])

    easy, mid, hard, other = [], [], [], []
    for problem_id in sorted(problem_nll):
        nll = problem_nll[problem_id]
        if nll <= thresholds.easy:
            easy.append(problem_id)
        elif window_lo <= nll <= window_hi:
            mid.append(problem_id)
        elif window_hi < nll <= thresholds.hard:
            hard.append(problem_id)
        else:
            other.append(problem_id)

    selected = select_fraction(mid, cfg.selection_fraction, rng)
    chosen = set(selected)
    other.extend(problem_id for problem_id in mid if problem_id not in chosen)

    probe_candidates = sorted(pool - chosen)
    probes = select_fraction(probe_candidates, cfg.hard_probe_fraction, rng)
    released = [p for p in probes if problem_nll[p] < window_lo]  # now easier: leave the pool
    probed = [p for p in probes if window_lo <= problem_nll[p] <= thresholds.hard]
    probed_set = set(probed)

    def without_probed(group: list[str]) -> tuple[str, ...]:
        return tuple(sorted(problem_id for problem_id in group if problem_id not in probed_set))

    hard_ids = without_probed(hard)
    return RoutingDecision(
        easy_ids=without_probed(easy),
        rollout_ids=tuple(selected) + tuple(probed),
        hard_ids=hard_ids,
        other_ids=without_probed(other),
        probed_ids=tuple(probed),
        window_quantiles=window_q,
        window_nll=(window_lo, window_hi),
        hard_pool=(pool - frozenset(released)) | frozenset(hard_ids),
        released_ids=tuple(released),
    )


def expected_rollout_problems(problems: int, config: RasftConfig) -> int:
    """Problems given rollouts per refresh.

    all: every problem. fraction: round(selection_fraction x problems), the expectation of the
    selection's stochastic rounding. nll_band: selection_fraction x the widest mid window (in
    quantiles) plus hard_probe_fraction x the widest hard band (hard_quantile minus the lowest top
    of the window), the most the hard pool can hold; both shares of all problems.
    """
    if config.selection == "all":
        return problems
    if config.selection == "fraction":
        return round(config.selection_fraction * problems)
    (start_lo, start_hi), (end_lo, end_hi) = config.mid_window_start, config.mid_window_end
    hard = max(config.hard_quantile - min(start_hi, end_hi), 0.0)
    share = config.selection_fraction * max(start_hi - start_lo, end_hi - end_lo)
    return min(problems, round((share + config.hard_probe_fraction * hard) * problems))
