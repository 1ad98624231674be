"""Pearson's chi-square goodness of fit, for tests of sampled token distributions."""

import math

import numpy as np


def chi_square(counts: np.ndarray, probs: np.ndarray) -> tuple[float, int]:
    """The statistic of `counts` against `probs` (cells under 5 expected pooled into one) and its
    degrees of freedom."""
    n = counts.sum()
    expected = probs * n
    big = expected >= 5
    observed = np.append(counts[big], counts[~big].sum())
    expected = np.append(expected[big], expected[~big].sum())
    keep = expected > 0
    stat = float((((observed - expected) ** 2)[keep] / expected[keep]).sum())
    return stat, int(keep.sum()) - 1


def chi_square_bound(df: int, z: float = 4.0) -> float:
    """Wilson-Hilferty upper quantile of chi-square(df) at about z sigmas."""
    h = 2.0 / (9.0 * df)
    return df * (1.0 - h + z * math.sqrt(h)) ** 3


def assert_fits(counts: np.ndarray, probs: np.ndarray) -> None:
    """The counts are a plausible sample of probs (more than 5 cells, below the 4-sigma bound)."""
    stat, df = chi_square(counts.astype(float), probs)
    assert df > 5, "enough cells for the test to mean something"
    assert stat < chi_square_bound(df), (stat, df)
