"""How a synthetic problem's worked steps are written out: five styles of solution line and closing.

Styles (each line carries the step's equation; every solution ends with ``\\boxed{ANSWER}``):

- 0, the ladder's labelled lines: "After selling: 24 - 5 = 19 apples." (a one-step chain: the bare
  equation "24 - 5 = 19"), no closing line;
- 1, numbered steps: "Step 2: 24 - 5 = 19.", closing "So Mia has 19 apples.";
- 2, running sentences: "Now there are 24 - 5 = 19 apples." (the first "To begin, there are"),
  closing "The answer is:";
- 3, worked lines: "We work out 24 - 5 = 19.", closing "That leaves Mia with 19 apples.";
- 4, chained equations: "Next, 24 - 5 = 19" (the first "First,"), closing "Final count: 19 apples.".

A solution is written in one style (`write_solution`) or with a style drawn for each line and for
the closing (`write_mixed_solution`): N styles then give up to N^(lines + 1) texts per answer, as
real solutions vary line by line, not only as a whole.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Steps:
    """A chain's worked steps, written out in one of the styles."""

    steps: tuple[tuple[str, str, int], ...]  # (label, expression, result)
    name: str
    obj: str


def write_solution(chain: Steps, answer: int, style: int) -> str:
    """The whole solution in one style."""
    return _assemble(chain, answer, [style] * len(chain.steps), style)


def write_mixed_solution(chain: Steps, answer: int, styles: int, rng: random.Random) -> str:
    """Each step line, and the closing, in a style drawn from the first `styles` ones."""
    line_styles = [rng.randrange(styles) for _ in chain.steps]
    return _assemble(chain, answer, line_styles, rng.randrange(styles))


def _assemble(chain: Steps, answer: int, line_styles: list[int], closing_style: int) -> str:
    lines = [_step_line(chain, position, style) for position, style in enumerate(line_styles)]
    closing = _closing_line(chain, answer, closing_style)
    return "\n".join([*lines, *([closing] if closing else []), f"\\boxed{{{answer}}}"])


def _step_line(chain: Steps, position: int, style: int) -> str:
    label, expression, result = chain.steps[position]
    equation, first = f"{expression} = {result}", position == 0
    if style == 0:
        return equation if len(chain.steps) == 1 else f"{label}: {equation} {chain.obj}."
    if style == 1:
        return f"Step {position + 1}: {equation}."
    if style == 2:
        return f"{'To begin, there are' if first else 'Now there are'} {equation} {chain.obj}."
    if style == 3:
        return f"We work out {equation}."
    return f"{'First,' if first else 'Next,'} {equation}"


def _closing_line(chain: Steps, answer: int, style: int) -> str | None:
    return {
        0: None,
        1: f"So {chain.name} has {answer} {chain.obj}.",
        2: "The answer is:",
        3: f"That leaves {chain.name} with {answer} {chain.obj}.",
        4: f"Final count: {answer} {chain.obj}.",
    }[style]
