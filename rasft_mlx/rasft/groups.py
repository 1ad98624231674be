"""One problem's rollout group, as the authors build it (train_RASFT.py, the rollout filter).

1. Near-duplicates are removed (word 3-gram Jaccard >= rasft.dedup_jaccard, the first kept);
   K = the samples left.
2. Samples that were truncated (unless rasft.grade_truncated, as the authors grade them), have no
   answer, or (with rasft.quality_filters) fail the quality filters stay in K but enter the group
   neither as positives nor as negatives.
3. Positives are the verified correct samples. A negative whose highest 3-gram Jaccard to any
   positive is >= rasft.negative_similarity_max is dropped; the rest are sorted by
   |similarity - 0.45| and at most rasft.max_negative_keep enter the group.
4. The weights follow from (k+, negatives, K) (`weights.problem_weights`); only positives train.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from rasft_mlx.rasft.quality import quality_failure
from rasft_mlx.rasft.rollouts import Rollout
from rasft_mlx.rasft.weights import (
    ProblemWeights,
    deduplicate_rollouts,
    problem_weights,
    word_trigram_jaccard,
)
from rasft_mlx.recipe.config import RasftConfig

NEGATIVE_SIMILARITY_TARGET = 0.45
UNGRADED_VERDICTS = ("truncated", "no_answer")


@dataclass(frozen=True)
class RolloutGroup:
    weights: ProblemWeights
    trained: tuple[Rollout, ...]  # the positives, in sample order, one per rollout weight
    group_size: int  # K: samples left after near-duplicate removal
    roles: dict[int, str]  # sample index -> positive, negative, or the reason it is outside
    dropped: Counter  # samples not trained, by cause: duplicate, truncated, wrong, shortcut, ...


def outside_group_reason(rollout: Rollout, config: RasftConfig) -> str | None:
    """Why a (deduplicated) sample is neither positive nor negative, or None when it is graded."""
    if rollout.verdict in UNGRADED_VERDICTS:
        return rollout.verdict
    if config.quality_filters:
        return quality_failure(rollout.text)
    return None


def select_negatives(
    negatives: Sequence[Rollout], positives: Sequence[Rollout], config: RasftConfig
) -> tuple[list[Rollout], int]:
    """The negatives that enter the group, and how many were dropped as too close to a positive.

    A negative's similarity is its highest word 3-gram Jaccard to any positive (0 without
    positives); at or above `negative_similarity_max` it is dropped; the rest are ordered by
    |similarity - 0.45| (stable) and the first `max_negative_keep` kept.
    """
    scored = []
    too_similar = 0
    authors = config.short_text_jaccard == "authors"
    for negative in negatives:
        similarity = max(
            (word_trigram_jaccard(negative.text, p.text, authors) for p in positives),
            default=0.0,
        )
        if similarity >= config.negative_similarity_max:
            too_similar += 1
            continue
        scored.append((abs(similarity - NEGATIVE_SIMILARITY_TARGET), negative))
    scored.sort(key=lambda pair: pair[0])
    return [negative for _, negative in scored[: config.max_negative_keep]], too_similar


def build_group(rollouts: Sequence[Rollout], config: RasftConfig) -> RolloutGroup:
    """Deduplicate, set K, filter, grade and weigh one problem's rollouts."""
    authors = config.short_text_jaccard == "authors"
    texts = [r.text for r in rollouts]
    kept_indices = deduplicate_rollouts(texts, config.dedup_jaccard, authors)
    roles = {r.sample: "duplicate" for r in rollouts}
    kept = [rollouts[i] for i in kept_indices]
    graded = []
    for rollout in kept:
        reason = outside_group_reason(rollout, config)
        if reason is None:
            graded.append(rollout)
        roles[rollout.sample] = reason or "graded"
    positives = [r for r in graded if r.correct]
    wrong = [r for r in graded if not r.correct]
    negatives, _ = select_negatives(wrong, positives, config)
    in_group = {r.sample for r in negatives}
    for rollout in positives:
        roles[rollout.sample] = "positive"
    for rollout in wrong:
        roles[rollout.sample] = "negative" if rollout.sample in in_group else "negative_left_out"
    weights = problem_weights(len(positives), len(negatives), config, num_sampled=len(kept))
    if not graded:  # nothing left after filtering: the expert alone (the authors' fallback)
        weights = ProblemWeights(1.0, (), weights.solvability, "fallback_empty")
    trained = tuple(positives[: len(weights.rollout_weights)])
    dropped = Counter(roles.values())
    dropped["wrong"] = dropped.pop("negative", 0) + dropped.pop("negative_left_out", 0)
    dropped["untrained_positive"] = dropped.pop("positive", 0) - len(trained)
    return RolloutGroup(weights, trained, len(kept), roles, +dropped)


def rejection_sampling_group(group: RolloutGroup, rollouts: Sequence[Rollout]) -> RolloutGroup:
    """The `rft` baseline on the same group: the demo and every kept correct rollout at weight 1,
    whatever the group statistics (rejection-sampling fine-tuning, which isolates what RASFT's
    weighting adds to on-policy data). A problem with no correct rollout keeps its demo alone."""
    positives = tuple(r for r in rollouts if group.roles[r.sample] == "positive")
    route = "rft" if positives else "fallback_unsolved"
    weights = ProblemWeights(1.0, (1.0,) * len(positives), group.weights.solvability, route)
    dropped = Counter(group.dropped)
    dropped.pop("untrained_positive", None)
    return RolloutGroup(weights, positives, group.group_size, group.roles, +dropped)
