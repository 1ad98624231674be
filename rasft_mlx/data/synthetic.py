"""Seeded arithmetic word problems with step-by-step solutions, on a difficulty ladder.

Levels (every answer is a non-negative integer; every solution ends with ``\\boxed{ANSWER}``):

- 0: read-off. "Mia has 7 apples. How many apples does Mia have?" -> "Mia has 7 apples." Pure
  copying, so even a tiny randomly initialised model learns it quickly.
- 1: one addition or subtraction with numbers 1-20; the solution is the bare line "7 + 5 = 12".
- 2: two steps with numbers up to 20: add/subtract twice, or "4 bags with 6 apples in each bag"
  (a small product) followed by an addition or subtraction.
- 3: three steps: a product start, then two events among add, subtract, double/triple and
  keep half/a third/a quarter (division always comes out even).
- 4: four steps, numbers up to 50.
- 5: five steps, numbers up to 100.

From level 2 on each solution line reads "After selling: 24 - 5 = 19 apples.".

`solution_styles` N > 1 writes each solution in one of the first N styles of
`synthetic_solutions` (labelled lines, numbered steps, running sentences, worked lines, chained
equations), drawn per problem from its own random stream, so the questions stay those of N = 1
(N <= 3 writes what it always has); `style_per_line` draws a style for each line instead. With one
style, every correct solution of a problem is the same text, so RASFT's near-duplicate rule (word
3-gram Jaccard >= 0.82) keeps at most one correct rollout per problem: at most 1/K of the rollouts
can train. Real reasoning data has many ways to write a solution; the styles give the synthetic
task that property, and styles per line give it many texts per answer, not N.

Problems are deterministic in (seed, split). A question belongs to the test split iff a hash of
its text says so, so train and test never share a question, for any seed; within a split
questions are unique. Ids encode the level: "synthetic-train-L2-17".

The "ood" split is out of distribution: other names, objects, event phrasings and question
wording than any train or test problem, and numbers from a higher range (starts above the
level's training range, up to three times it), at the levels asked for (ids "synthetic-ood-L3-5").
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import re
from dataclasses import dataclass

from rasft_mlx.data.problem import Problem
from rasft_mlx.data.synthetic_solutions import Steps, write_mixed_solution, write_solution

MAX_LEVEL = 5
MAX_SOLUTION_STYLES = 5
SPLITS = ("train", "test", "ood", "validation")
TEST_FRACTION_DENOMINATOR = 5  # one question in five (by hash) belongs to the test split
MAX_ATTEMPTS_PER_PROBLEM = 2000

NAMES = ("Mia", "Leo", "Ava", "Sam", "Zoe", "Max", "Ivy", "Ben", "Ana", "Tom")
OBJECTS = (
    "apples",
    "marbles",
    "stickers",
    "cookies",
    "pencils",
    "cards",
    "books",
    "shells",
    "coins",
    "stamps",
)
PLACES = ("box", "bag", "basket", "jar", "drawer", "bowl")
CONTAINERS = (("bag", "bags"), ("box", "boxes"), ("jar", "jars"), ("pack", "packs"))

# (question sentence, solution label); {name}, {other}, {obj} and {b} are filled in.
ADD_EVENTS = (
    ("{name} buys {b} more.", "After buying"),
    ("{other} gives {name} {b} more.", "After the gift"),
    ("{name} finds {b} more.", "After finding more"),
)
SUB_EVENTS = (
    ("{name} gives {b} to {other}.", "After giving some away"),
    ("{name} sells {b} of them.", "After selling"),
    ("{name} loses {b}.", "After losing some"),
)
MUL_EVENTS = (
    ("The number of {obj} doubles.", 2, "After doubling"),
    ("The number of {obj} triples.", 3, "After tripling"),
)
DIV_EVENTS = (
    ("{name} keeps only half.", 2, "After keeping half"),
    ("{name} keeps only a third.", 3, "After keeping a third"),
    ("{name} keeps only a quarter.", 4, "After keeping a quarter"),
)

# The "ood" split's surface forms: none of these appear in train or test problems.
OOD_NAMES = ("Priya", "Kenji", "Olga", "Tariq", "Lucia", "Emeka", "Hana", "Mateo", "Ines", "Ravi")
OOD_OBJECTS = ("bolts", "tickets", "beads", "crayons", "buttons", "acorns", "keys", "badges")
OOD_CONTAINERS = (("crate", "crates"), ("tray", "trays"), ("sack", "sacks"))
OOD_ADD_EVENTS = (
    ("Later, {name} collects another {b}.", "After collecting"),
    ("{other} hands over {b} extra to {name}.", "After receiving"),
)
OOD_SUB_EVENTS = (
    ("Then {name} donates {b} to a school.", "After donating"),
    ("{b} of them get broken and are thrown away.", "After throwing some away"),
)
OOD_MUL_EVENTS = (
    ("After a trade, {name} owns twice as many {obj}.", 2, "After the trade"),
    ("A prize makes the pile three times as large.", 3, "After the prize"),
)
OOD_DIV_EVENTS = (
    ("{name} splits them evenly with a friend and keeps one share.", 2, "After sharing"),
    ("{name} divides them into 3 equal piles and keeps one pile.", 3, "After dividing"),
)


@dataclass(frozen=True)
class _Surface:
    names: tuple[str, ...]
    objects: tuple[str, ...]
    containers: tuple[tuple[str, str], ...]
    add: tuple
    sub: tuple
    mul: tuple
    div: tuple
    opening: str  # "{name} has {value} {obj}."
    grouped: str  # "{name} has {groups} {containers} with {per_group} {obj} in each {container}."
    question: str  # "How many {obj} does {name} have now?"
    number_scale: int  # starts and operands drawn above the level's range, up to this multiple


_TRAIN_SURFACE = _Surface(
    NAMES,
    OBJECTS,
    CONTAINERS,
    ADD_EVENTS,
    SUB_EVENTS,
    MUL_EVENTS,
    DIV_EVENTS,
    "{name} has {value} {obj}.",
    "{name} has {groups} {containers} with {per_group} {obj} in each {container}.",
    "How many {obj} does {name} have now?",
    1,
)
_OOD_SURFACE = _Surface(
    OOD_NAMES,
    OOD_OBJECTS,
    OOD_CONTAINERS,
    OOD_ADD_EVENTS,
    OOD_SUB_EVENTS,
    OOD_MUL_EVENTS,
    OOD_DIV_EVENTS,
    "At the start, {name} owns {value} {obj}.",
    "{name} starts with {groups} {containers}, each holding {per_group} {obj}.",
    "What is the final number of {obj} that {name} owns?",
    3,
)

_ID_LEVEL = re.compile(r"^synthetic-[a-z]+-L(\d+)-\d+$")


@dataclass(frozen=True)
class _LevelSpec:
    steps: int
    start_min: int
    start_max: int
    operand_max: int
    factor_max: int
    product_start_probability: float
    ops: tuple[str, ...]
    value_cap: int


_ALL_OPS = ("add", "sub", "mul", "div")
_LEVEL_SPECS = {
    1: _LevelSpec(1, 2, 20, 20, 0, 0.0, ("add", "sub"), 40),
    2: _LevelSpec(2, 2, 20, 20, 9, 0.5, ("add", "sub"), 120),
    3: _LevelSpec(3, 2, 20, 20, 10, 1.0, _ALL_OPS, 400),
    4: _LevelSpec(4, 10, 50, 50, 12, 0.5, _ALL_OPS, 1000),
    5: _LevelSpec(5, 20, 100, 100, 15, 0.5, _ALL_OPS, 5000),
}


def split_of_question(question: str) -> str:
    """The split a question text belongs to, fixed by a hash of the text (seed-independent)."""
    digest = hashlib.sha256(question.encode("utf-8")).digest()
    return "test" if digest[0] % TEST_FRACTION_DENOMINATOR == 0 else "train"


def level_of(problem: Problem) -> int:
    """The difficulty level encoded in a synthetic problem's id."""
    match = _ID_LEVEL.match(problem.id)
    if match is None:
        raise ValueError(f"not a synthetic problem id: {problem.id!r}")
    return int(match.group(1))


def generate_problems(
    n: int,
    *,
    seed: int,
    min_level: int = 1,
    max_level: int = 3,
    split: str = "train",
    exclude: frozenset[str] = frozenset(),
    extra_steps: int = 0,
    solution_styles: int = 1,
    style_per_line: bool = False,
) -> list[Problem]:
    """n unique problems of `split`; levels cycle min_level..max_level, so any prefix is balanced.

    "validation" draws from the train split's questions (the test split stays untouched) with its
    own random stream, skipping the questions in `exclude` (the training set's). `extra_steps`
    lengthens every chain by that many events of the level's own kinds (level 2 + 1: three
    add/subtract steps, between levels 2 and 3); 0 gives the ladder's problems unchanged.
    `solution_styles`, `style_per_line`: see the module docstring."""
    if not 1 <= solution_styles <= MAX_SOLUTION_STYLES:
        raise ValueError(f"solution_styles must be 1..{MAX_SOLUTION_STYLES}, got {solution_styles}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0 <= min_level <= max_level <= MAX_LEVEL:
        raise ValueError(
            f"need 0 <= min_level <= max_level <= {MAX_LEVEL}, got {min_level}..{max_level}"
        )
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "ood" and min_level < 1:
        raise ValueError("the ood split starts at level 1 (level 0 has no events to rephrase)")
    if extra_steps and min_level < 1:
        raise ValueError("extra steps need level 1 or above (level 0 has no events)")
    rng = random.Random(f"rasft-synthetic:{seed}:{split}")
    style_rng = random.Random(f"rasft-synthetic-style:{seed}:{split}")
    levels = range(min_level, max_level + 1)
    seen_questions: set[str] = set()
    problems = []
    for index in range(n):
        level = levels[index % len(levels)]
        for _ in range(MAX_ATTEMPTS_PER_PROBLEM):
            question, steps, answer = _make_problem(rng, level, split == "ood", extra_steps)
            membership = "train" if split == "validation" else split
            in_split = split == "ood" or split_of_question(question) == membership
            if question not in seen_questions and question not in exclude and in_split:
                break
        else:
            raise ValueError(
                f"could not find {n} unique level-{level} {split} problems "
                f"(stopped at {index}); ask for fewer or widen the level range"
            )
        seen_questions.add(question)
        style = None if style_per_line else style_rng.randrange(solution_styles)
        if isinstance(steps, str):
            solution = steps
        elif style is None:
            solution = write_mixed_solution(steps, answer, solution_styles, style_rng)
        else:
            solution = write_solution(steps, answer, style)
        problems.append(
            Problem(
                id=f"synthetic-{split}-L{level}-{index}",
                question=question,
                solution=solution,
                answer=str(answer),
            )
        )
    return problems


def _make_problem(
    rng: random.Random, level: int, ood: bool = False, extra_steps: int = 0
) -> tuple[str, str | Steps, int]:
    if level == 0:
        return _read_off_problem(rng)
    spec = _LEVEL_SPECS[level]
    if extra_steps:
        spec = dataclasses.replace(spec, steps=spec.steps + extra_steps)
    if ood:
        return _chain_problem(rng, _scaled(spec, 3), _OOD_SURFACE)
    return _chain_problem(rng, spec, _TRAIN_SURFACE)


def _scaled(spec: _LevelSpec, scale: int) -> _LevelSpec:
    """Numbers above the level's range: starts in (start_max, scale x start_max], operands and
    the value cap `scale` times larger."""
    return _LevelSpec(
        spec.steps,
        spec.start_max + 1,
        spec.start_max * scale,
        spec.operand_max * scale,
        spec.factor_max,
        spec.product_start_probability,
        spec.ops,
        spec.value_cap * scale,
    )


def _read_off_problem(rng: random.Random) -> tuple[str, str, int]:
    count = rng.randint(2, 20)
    obj = rng.choice(OBJECTS)
    if rng.random() < 0.5:
        name = rng.choice(NAMES)
        fact = f"{name} has {count} {obj}."
        question = f"{fact} How many {obj} does {name} have?"
    else:
        place = rng.choice(PLACES)
        fact = f"There are {count} {obj} in the {place}."
        question = f"{fact} How many {obj} are in the {place}?"
    return question, f"{fact}\n\\boxed{{{count}}}", count


def _chain_problem(
    rng: random.Random, spec: _LevelSpec, surface: _Surface
) -> tuple[str, Steps, int]:
    """A story that starts with a quantity and changes it step by step, one equation per step."""
    name, other = rng.sample(surface.names, 2)
    obj = rng.choice(surface.objects)
    sentences = []
    steps = []  # (label, expression, value)
    if rng.random() < spec.product_start_probability:
        groups, per_group = rng.randint(2, spec.factor_max), rng.randint(2, spec.factor_max)
        container, containers = rng.choice(surface.containers)
        value = groups * per_group
        sentences.append(
            surface.grouped.format(
                name=name,
                groups=groups,
                containers=containers,
                per_group=per_group,
                obj=obj,
                container=container,
            )
        )
        steps.append(("At first", f"{groups} * {per_group}", value))
    else:
        value = rng.randint(spec.start_min, spec.start_max)
        sentences.append(surface.opening.format(name=name, value=value, obj=obj))
    while len(steps) < spec.steps:
        sentence, label, expression, value = _next_event(rng, spec, value, surface)
        sentences.append(sentence.format(name=name, other=other, obj=obj))
        steps.append((label, expression, value))
    sentences.append(surface.question.format(name=name, obj=obj))
    return " ".join(sentences), Steps(tuple(steps), name, obj), value


def _next_event(
    rng: random.Random, spec: _LevelSpec, value: int, surface: _Surface
) -> tuple[str, str, str, int]:
    """One feasible event on the current value: (sentence template, label, expression, result).

    Subtraction takes at most half and division leaves at least 2, so every intermediate value
    stays >= 2 (plural nouns read right, and chains do not collapse to 0 or 1).
    """
    feasible = [op for op in spec.ops if _is_feasible(op, spec, value, surface)]
    op = rng.choice(feasible)
    if op == "add":
        operand = rng.randint(1, min(spec.operand_max, spec.value_cap - value))
        sentence, label = rng.choice(surface.add)
        return sentence.replace("{b}", str(operand)), label, f"{value} + {operand}", value + operand
    if op == "sub":
        operand = rng.randint(1, min(spec.operand_max, value // 2))
        sentence, label = rng.choice(surface.sub)
        return sentence.replace("{b}", str(operand)), label, f"{value} - {operand}", value - operand
    if op == "mul":
        sentence, factor, label = rng.choice(
            [event for event in surface.mul if value * event[1] <= spec.value_cap]
        )
        return sentence, label, f"{value} * {factor}", value * factor
    sentence, divisor, label = rng.choice(
        [event for event in surface.div if _divides(event[1], value)]
    )
    return sentence, label, f"{value} / {divisor}", value // divisor


def _is_feasible(op: str, spec: _LevelSpec, value: int, surface: _Surface) -> bool:
    if op == "add":
        return value < spec.value_cap
    if op == "sub":
        return value >= 3
    if op == "mul":
        return any(value * factor <= spec.value_cap for _, factor, _ in surface.mul)
    return any(_divides(divisor, value) for _, divisor, _ in surface.div)


def _divides(divisor: int, value: int) -> bool:
    return value % divisor == 0 and value >= 2 * divisor
