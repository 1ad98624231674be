"""The unit of training and evaluation data: one problem with its expert solution and gold answer."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    solution: str
    answer: str
    grader: str = "builtin"  # how rollouts and evaluations are graded: builtin or math-verify
