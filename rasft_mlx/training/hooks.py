"""What the loop calls but does not own: held-out and validation scoring (implemented in
evaluation/)."""

from __future__ import annotations

from typing import Protocol


class ScoreSummary(Protocol):
    problems: int
    pass_at_1: float

    def as_dict(self) -> dict: ...


class HeldOutScoring(Protocol):
    """Scores the live model on the recipe's test problems and records it in the run dir."""

    @property
    def has_problems(self) -> bool: ...

    def score(self, epoch: int) -> ScoreSummary:
        """Evaluate after `epoch` (-1: the starting model); writes eval-epoch-N files and event."""
        ...

    def summary_from_dict(self, state: dict) -> ScoreSummary:
        """A summary written into a checkpoint, read back."""
        ...


class ValidationScoring(Protocol):
    """Scores the live model's greedy pass@1 on the validation problems (eval.val_every)."""

    def score(self, step: int) -> ScoreSummary:
        """Evaluate at optimizer step `step`; writes nothing (the loop logs the figure)."""
        ...
