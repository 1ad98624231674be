"""The refresh under a step cap: roll out only the problems the steps left can train."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def problems_within_room(
    problem_ids: Sequence[str], room: int | None, rng: np.random.Generator
) -> frozenset[str] | None:
    """The problems an epoch capped at `room` sequences keeps: `room` of them drawn at random
    without replacement, or None (all) when the cap leaves room for one sequence per problem.

    Rolling out every problem when the cap trains only `room` of the epoch's shuffled sequences
    spends the refresh on groups whose demo and rollouts never train. With one demo per kept
    problem the epoch still holds at least `room` sequences, so the run takes all its steps, and
    demos and rollouts are mixed in the same expected proportion as in the full epoch."""
    if room is None or room >= len(problem_ids):
        return None
    chosen = rng.choice(len(problem_ids), size=max(room, 1), replace=False)
    return frozenset(problem_ids[i] for i in chosen)
