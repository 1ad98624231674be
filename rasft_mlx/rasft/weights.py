"""Per-problem sequence weights A from verified rollouts: solvability, dedup and both weightings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from rasft_mlx.recipe.config import RasftConfig

# Linear weighting ("follow the abstract literally"), see linear_weights.
LINEAR_EXPERT_WEIGHT_MIN = 0.2
LINEAR_ROLLOUT_WEIGHT_MAX = 0.5

ROUTES = ("fallback_unsolved", "fallback_degenerate", "fallback_empty", "weighted", "no_rollouts")
ROUTES += ("rft",)  # the rejection-sampling baseline: every correct rollout at weight 1
_STD_EPS = 1e-6


@dataclass(frozen=True)
class ProblemWeights:
    expert_weight: float
    rollout_weights: tuple[float, ...]  # one per correct rollout kept, in order
    solvability: float  # p_hat
    route: str  # one of ROUTES


def no_rollout_weights() -> ProblemWeights:
    """A problem that got no rollouts: the expert demo alone, with A = 1."""
    return ProblemWeights(1.0, (), 0.0, "no_rollouts")


def _words(text: str) -> list[str]:
    return text.lower().split()


def _ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def _jaccard_of_words(words_a: list[str], words_b: list[str], authors: bool = False) -> float:
    # Texts shorter than three words fall back to the longest n-gram both have (n = 1 or 2),
    # so two identical short answers still compare as 1.0 and different ones below it. The
    # authors' ngram_jaccard (T:296-312): such texts have no 3-grams; two empty sets are 1.0
    # (any two short texts are duplicates), one empty set against another 0.0.
    if authors:
        grams_a, grams_b = _ngrams(words_a, 3), _ngrams(words_b, 3)
        if not grams_a or not grams_b:
            return float(not grams_a and not grams_b)
        return len(grams_a & grams_b) / len(grams_a | grams_b)
    n = min(3, len(words_a), len(words_b))
    if n == 0:
        return 1.0 if not words_a and not words_b else 0.0
    grams_a, grams_b = _ngrams(words_a, n), _ngrams(words_b, n)
    return len(grams_a & grams_b) / len(grams_a | grams_b)


def word_trigram_jaccard(a: str, b: str, authors: bool = False) -> float:
    """Jaccard similarity of the (lower-cased, whitespace-split) word 3-gram sets of a and b;
    `authors`: texts under three words as theirs (see _jaccard_of_words)."""
    return _jaccard_of_words(_words(a), _words(b), authors)


def deduplicate_rollouts(
    texts: Sequence[str], threshold: float, authors: bool = False
) -> list[int]:
    """Indices of the texts kept, in order: a text within `threshold` of a kept one is dropped."""
    kept: list[int] = []
    kept_words: list[list[str]] = []
    for index, text in enumerate(texts):
        words = _words(text)
        if all(_jaccard_of_words(words, other, authors) < threshold for other in kept_words):
            kept.append(index)
            kept_words.append(words)
    return kept


def _solvability(correct: int, incorrect: int, num_sampled: int | None) -> tuple[float, int]:
    if correct < 0 or incorrect < 0:
        raise ValueError(
            f"rollout counts must be >= 0, got correct={correct} incorrect={incorrect}"
        )
    total = correct + incorrect if num_sampled is None else num_sampled
    if correct > total:
        raise ValueError(f"correct ({correct}) exceeds the number of rollouts K ({total})")
    return (correct / total if total else 0.0), total


def reference_weights(
    correct: int,
    incorrect: int,
    cfg: RasftConfig | None = None,
    *,
    num_sampled: int | None = None,
) -> ProblemWeights:
    """The authors' group-advantage weights (spec section 2).

    `correct` and `incorrect` count the positives and the negatives that enter the group; at
    most `cfg.max_negative_keep` negatives count. `num_sampled` is K in p_hat = k+ / K: the
    samples left after near-duplicate removal, including those outside the group (truncated,
    answerless, filtered); `rasft/groups.py` builds all three. It defaults to correct +
    incorrect.
    """
    cfg = cfg or RasftConfig()
    p_hat, total = _solvability(correct, incorrect, num_sampled)
    negatives = min(incorrect, cfg.max_negative_keep)
    if correct + incorrect == 0:
        return ProblemWeights(1.0, (), p_hat, "fallback_empty")
    if correct == 0:
        return ProblemWeights(1.0, (), p_hat, "fallback_unsolved")
    expert_reward = cfg.r_min + (1.0 - p_hat) * (cfg.r_max - cfg.r_min)
    group = np.array(
        [expert_reward] + [cfg.pos_reward] * correct + [cfg.neg_reward] * negatives,
        dtype=np.float64,
    )
    if np.ptp(group) <= 1e-12:
        return ProblemWeights(1.0, (), p_hat, "fallback_degenerate")
    z = (group - group.mean()) / (group.std() + _STD_EPS)
    advantage = np.tanh(cfg.adv_alpha * z)
    share = 1.0 / (1 + correct)
    clipped = np.clip(
        advantage[1 : 1 + correct] * share, cfg.rollout_adv_floor, cfg.rollout_adv_cap
    )
    rollout = tuple(float(w) for w in cfg.rollout_adv_coef * clipped)
    return ProblemWeights(float(advantage[0] * share), rollout, p_hat, "weighted")


def linear_weights(correct: int, total: int, cfg: RasftConfig | None = None) -> ProblemWeights:
    """Weights that follow the abstract literally, linear in p_hat = correct / total.

        A_expert          = w_min + (1 - w_min) * (1 - p_hat)    in [0.2, 1], w_min = 0.2
        A_correct_rollout = w_roll_max * p_hat                  in (0, 0.5], w_roll_max = 0.5

    The expert weight falls and each correct rollout's weight rises with p_hat; a K/K-solved
    problem keeps expert 0.2 and trains its own solutions at 0.5 each (no degenerate fallback).
    `total` is K, the number of rollouts drawn; k+ = 0 gives the expert alone at A = 1.
    w_min and w_roll_max are LINEAR_EXPERT_WEIGHT_MIN and LINEAR_ROLLOUT_WEIGHT_MAX; `cfg` is
    accepted for a uniform signature only.
    """
    del cfg
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    p_hat, total = _solvability(correct, 0, total)
    if total == 0:
        return ProblemWeights(1.0, (), 0.0, "fallback_empty")
    if correct == 0:
        return ProblemWeights(1.0, (), 0.0, "fallback_unsolved")
    expert = LINEAR_EXPERT_WEIGHT_MIN + (1.0 - LINEAR_EXPERT_WEIGHT_MIN) * (1.0 - p_hat)
    rollout = (LINEAR_ROLLOUT_WEIGHT_MAX * p_hat,) * correct
    return ProblemWeights(expert, rollout, p_hat, "weighted")


def problem_weights(
    correct: int,
    incorrect: int,
    cfg: RasftConfig | None = None,
    *,
    num_sampled: int | None = None,
) -> ProblemWeights:
    """Dispatch on `cfg.weighting`; `num_sampled` (K drawn) defaults to correct + incorrect."""
    cfg = cfg or RasftConfig()
    if cfg.weighting == "reference":
        return reference_weights(correct, incorrect, cfg, num_sampled=num_sampled)
    if cfg.weighting == "linear":
        total = correct + incorrect if num_sampled is None else num_sampled
        return linear_weights(correct, total, cfg)
    raise ValueError(f"unknown weighting {cfg.weighting!r}; expected 'reference' or 'linear'")


def solvability_histogram(correct_counts: Sequence[int], k: int) -> list[int]:
    """How many problems had 0, 1, ..., k correct rollouts (a list of k + 1 counts)."""
    histogram = [0] * (k + 1)
    for count in correct_counts:
        if not 0 <= count <= k:
            raise ValueError(f"correct count {count} is outside 0..{k}")
        histogram[count] += 1
    return histogram
