"""Paired comparison of two modes on the same test problems: a bootstrap interval and a verdict.

Outcomes are (seeds x problems) arrays of 0/1 (or per-problem accuracies), the columns the same
problems in the same order for both modes. The interval resamples problems (the same draw for
both modes, so pairs stay together) and, within each mode, seeds; a difference is "better" or
"worse" only when its 95 % interval excludes 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

Z_TWO_SIDED_95 = 1.959964
Z_POWER_80 = 0.841621


@dataclass(frozen=True)
class PairedDifference:
    difference: float  # mean accuracy of `candidate` minus `reference`
    low: float  # 95 % bootstrap interval
    high: float
    verdict: str  # better, worse, or no detectable difference
    detectable: float  # smallest difference this test set detects (alpha 0.05, power 0.8)
    problems: int
    seeds: tuple[int, int]

    def as_dict(self) -> dict:
        return asdict(self)


def _as_matrix(outcomes) -> np.ndarray:
    matrix = np.asarray(outcomes, dtype=np.float64)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2 or matrix.shape[1] == 0 or matrix.shape[0] == 0:
        raise ValueError(f"outcomes must be (seeds, problems) with both > 0, got {matrix.shape}")
    return matrix


def minimum_detectable_difference(
    per_problem_differences, z_alpha: float = Z_TWO_SIDED_95, z_power: float = Z_POWER_80
) -> float:
    """(z_alpha + z_power) * sd / sqrt(n) of the per-problem paired differences: the smallest true
    difference a paired two-sided test at 5 % finds with 80 % power on these n problems."""
    diffs = np.asarray(per_problem_differences, dtype=np.float64)
    if diffs.size < 2:
        return float("inf")
    return float((z_alpha + z_power) * diffs.std(ddof=1) / np.sqrt(diffs.size))


def paired_difference(
    candidate, reference, resamples: int = 10_000, seed: int = 0
) -> PairedDifference:
    """`candidate` minus `reference` on the same problems, with a 95 % percentile bootstrap
    interval over problems (paired) and seeds (per mode)."""
    a, b = _as_matrix(candidate), _as_matrix(reference)
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"the modes saw different test sets: {a.shape[1]} vs {b.shape[1]} problems"
        )
    rng = np.random.default_rng(seed)
    n = a.shape[1]
    problems = rng.integers(0, n, size=(resamples, n))
    seeds_a = rng.integers(0, a.shape[0], size=(resamples, a.shape[0]))
    seeds_b = rng.integers(0, b.shape[0], size=(resamples, b.shape[0]))
    # Mean over resampled seeds of each resampled problem, then over the problems.
    per_problem_a = a[seeds_a[:, :, None], problems[:, None, :]].mean(axis=(1, 2))
    per_problem_b = b[seeds_b[:, :, None], problems[:, None, :]].mean(axis=(1, 2))
    draws = per_problem_a - per_problem_b
    low, high = np.percentile(draws, [2.5, 97.5])
    difference = float(a.mean() - b.mean())
    verdict = "better" if low > 0 else "worse" if high < 0 else "no detectable difference"
    detectable = minimum_detectable_difference(a.mean(axis=0) - b.mean(axis=0))
    return PairedDifference(
        difference, float(low), float(high), verdict, detectable, n, (a.shape[0], b.shape[0])
    )
