"""The unit of training and evaluation data: one problem with its expert solution and gold answer."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    solution: str
    answer: str
    grader: str = "builtin"  # how rollouts and evaluations are graded: builtin or math-verify


def problems_digest(problems: list[Problem]) -> str:
    """sha256 of the problems in order: id, question, answer and grader of each."""
    digest = hashlib.sha256()
    for problem in problems:
        row = [problem.id, problem.question, problem.answer, problem.grader]
        digest.update(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n")
    return digest.hexdigest()
