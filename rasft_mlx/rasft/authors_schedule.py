"""The authors' schedule (train_RASFT.py `continuous_train`, `apply_refresh`), as pure decisions.

One pass over the data in file order:
1. Every problem is routed once by the starting policy's mean demo NLL: easy (<= q_easy), other
   and hard (above the window, up to the ceiling q_hard) are queued as demos with A = 1 (hard ones
   also join the hard pool); mid-window problems wait.
2. After every `--refresh_interval_steps`-th optimizer step while mid problems wait, and when the
   queue runs dry while they wait, a refresh of all of them (its queue goes after the current one):
   ceil(35 %) of the waiting mid band get rollouts, the rest are queued as demos (A = 1); int(3 %)
   (at least one) of the hard pool are probed: re-scored by NLL, below the window they leave the
   pool and are queued (A = 1), up to the ceiling they get rollouts, above it they stay. Problems
   whose rollouts train (a correct one in a group that is not degenerate) leave the pool. Routed
   once, the mid band waits only until the first refresh: there is one.
3. When nothing waits, the hard pool is flushed: its demos are trained a second time (A = 1).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from rasft_mlx.rasft.routing import BandThresholds


@dataclass(frozen=True)
class InitialRouting:
    queue: tuple[str, ...]  # demos to train now, A = 1: data order, or per chunk by band
    pending: tuple[str, ...]  # mid-window problems waiting for the refresh, in data order
    hard_pool: tuple[str, ...]  # hard-band problems (also in the queue), in data order
    counts: dict[str, int]


BAND_ORDER = {"easy": 0, "hard": 1, "other": 2}  # the authors' enqueue order (T:1501-1517)


def route_once(
    ordered_nll: Sequence[tuple[str, float]],
    thresholds: BandThresholds,
    window: tuple[float, float],
    chunk_size: int = 0,
) -> InitialRouting:
    """Step 1 over (problem id, NLL) pairs in data order; `window`: the mid window's NLLs. The
    queue keeps data order, or with `chunk_size` the authors' order: per chunk of that many
    problems, its easy demos, then its hard ones, then the rest."""
    low, high = window
    keyed, pending, pool = [], [], []
    counts = {"easy": 0, "mid_pending": 0, "hard": 0, "other": 0}
    for position, (problem_id, nll) in enumerate(ordered_nll):
        if nll <= thresholds.easy:
            band = "easy"
        elif low <= nll <= high:
            counts["mid_pending"] += 1
            pending.append(problem_id)
            continue
        elif high < nll <= thresholds.hard:
            band = "hard"
            pool.append(problem_id)
        else:
            band = "other"
        counts[band] += 1
        order = (position // chunk_size, BAND_ORDER[band]) if chunk_size else (0, 0)
        keyed.append((*order, position, problem_id))
    queue = tuple(problem_id for *_, problem_id in sorted(keyed))
    return InitialRouting(queue, tuple(pending), tuple(pool), counts)


def interval_refresh_due(step: int, every: int, pending: Sequence[str]) -> bool:
    """The authors' interval refresh after optimizer step `step` (train_RASFT.py L1521-1524:
    `optimizer_step > 0 and optimizer_step % args.refresh_interval_steps == 0 and
    len(pending_mid) > 0`); `every` 0 turns it off."""
    return every > 0 and step > 0 and step % every == 0 and bool(pending)


def refresh_step(first_queue_steps: int, every: int) -> int:
    """The step of the one refresh of a run routed at the start: the interval's first step when
    the first queue lasts that long, else the step at which that queue runs dry."""
    return every if 0 < every <= first_queue_steps else first_queue_steps


SOLVED_ROUTES = ("weighted", "fallback_degenerate", "rft")  # a correct rollout was kept
AUTHORS_SOLVED_ROUTES = ("weighted", "rft")  # rollouts were trained


def solved_ids(routes: dict[str, str], authors: bool) -> set[str]:
    """The rolled-out problems that leave the hard pool, from each one's weight route. The
    authors delete a problem after queueing its rollouts (T:1339-1340). A K-of-K-solved group
    (expert reward r_min = the positives' reward) is degenerate: their filter returns None
    (T:821-822), the demo is queued and the problem stays (T:1256-1258); the deletion for a
    degenerate group with k+ > 0 (T:1270-1276) is unreachable behind that filter. The project's
    schedule also releases such problems: they are solved."""
    leaving = AUTHORS_SOLVED_ROUTES if authors else SOLVED_ROUTES
    return {pid for pid, route in routes.items() if route in leaving}


@dataclass(frozen=True)
class RefreshSelection:
    rollout_ids: tuple[str, ...]  # sorted: the drawn mid problems and the probes in the band
    direct_ids: tuple[str, ...]  # queued as demos with A = 1: undrawn mid, probes now easy
    hard_pool: tuple[str, ...]  # the pool after probing (solved ones leave after the rollouts)
    counts: dict[str, int]


def select_for_refresh(
    pending: Sequence[str],
    hard_pool: Sequence[str],
    score_nll: Callable[[list[str]], list[float]],
    thresholds: BandThresholds,
    progress: float,
    mid_fraction: float,
    probe_fraction: float,
    rng: np.random.Generator,
) -> RefreshSelection:
    """Step 2's choices. `score_nll` gives the current policy's mean demo NLL of the ids it is
    handed (only the probed ones are re-scored); `progress` slides the window (step / horizon)
    between the calibrated NLLs, as theirs does (T:1053-1056), not between quantiles."""
    t = min(max(progress, 0.0), 1.0)
    low = (1 - t) * thresholds.mid_start[0] + t * thresholds.mid_end[0]
    drawn: list[str] = []
    if pending:
        count = min(max(1, math.ceil(len(pending) * mid_fraction)), len(pending))
        drawn = [pending[i] for i in sorted(rng.choice(len(pending), count, replace=False))]
    chosen = set(drawn)
    direct = [p for p in pending if p not in chosen]
    probes: list[str] = []
    if hard_pool and probe_fraction > 0:
        count = min(max(1, int(len(hard_pool) * probe_fraction)), len(hard_pool))
        probes = [hard_pool[i] for i in sorted(rng.choice(len(hard_pool), count, replace=False))]
    pool = list(hard_pool)
    counts = {"mid_rollouts": len(drawn), "mid_direct": len(direct), "probed": len(probes)}
    counts |= {"probe_released": 0, "probe_rollouts": 0, "probe_kept": 0}
    probe_rollouts = []
    for problem_id, nll in zip(probes, score_nll(probes) if probes else [], strict=True):
        if nll < low:
            pool.remove(problem_id)
            direct.append(problem_id)
            counts["probe_released"] += 1
        elif nll <= thresholds.hard:
            probe_rollouts.append(problem_id)
            counts["probe_rollouts"] += 1
        else:
            counts["probe_kept"] += 1
    rollout_ids = tuple(sorted(set(drawn) | set(probe_rollouts)))
    return RefreshSelection(rollout_ids, tuple(direct), tuple(pool), counts)
