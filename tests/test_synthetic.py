"""Synthetic generator: determinism, split disjointness, levels, and arithmetically correct steps."""

from __future__ import annotations

import hashlib
import re
from collections import Counter

import pytest

from rasft_mlx.data.problem import Problem
from rasft_mlx.data.synthetic import (
    CONTAINERS,
    MAX_LEVEL,
    NAMES,
    OBJECTS,
    OOD_NAMES,
    OOD_OBJECTS,
    generate_problems,
    level_of,
    split_of_question,
)

EQUATION = re.compile(r"(\d+) ([-+*/]) (\d+) = (\d+)")
NUMBER = re.compile(r"\d+")
# Operands that the question states in words rather than digits.
WORD_OPERANDS = {"half": 2, "third": 3, "quarter": 4, "doubles": 2, "triples": 3}
OOD_WORD_OPERANDS = {"twice as many": 2, "three times as large": 3, "with a friend": 2}


def solution_errors(problem: Problem, extra_steps: int = 0) -> list[str]:
    """Everything wrong with a solution's steps; empty when it is a correct derivation."""
    errors = []
    level = level_of(problem)
    lines = problem.solution.split("\n")
    if lines[-1] != f"\\boxed{{{problem.answer}}}":
        errors.append(f"last line {lines[-1]!r} is not \\boxed{{{problem.answer}}}")
    if level == 0:
        if lines[:-1] != [problem.question.split("?")[0].rsplit(". ", 1)[0] + "."]:
            errors.append("read-off solution does not restate the question's fact")
        return errors
    known = {int(number) for number in NUMBER.findall(problem.question)}
    known |= {value for word, value in WORD_OPERANDS.items() if f"{word}." in problem.question}
    known |= {value for word, value in OOD_WORD_OPERANDS.items() if word in problem.question}
    steps = lines[:-1]
    if len(steps) != level + extra_steps:
        errors.append(f"{len(steps)} steps for level {level} + {extra_steps}")
    previous = None
    for step in steps:
        found = EQUATION.findall(step)
        if len(found) != 1:
            errors.append(f"not exactly one equation in {step!r}")
            continue
        a, op, b, result = found[0]
        a, b, result = int(a), int(b), int(result)
        exact = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op]
        if exact != result:
            errors.append(f"wrong arithmetic: {step!r}")
        if previous is not None and a != previous:
            errors.append(f"{step!r} does not continue from {previous}")
        if b not in known or (previous is None and a not in known):
            errors.append(f"{step!r} uses a number the question does not give")
        known.add(result)
        previous = result
    if previous is not None and str(previous) != problem.answer:
        errors.append(f"last result {previous} is not the answer {problem.answer}")
    return errors


@pytest.fixture(scope="module")
def all_levels() -> list[Problem]:
    return generate_problems(600, seed=3, min_level=0, max_level=MAX_LEVEL)


def test_same_seed_gives_identical_problems():
    first = generate_problems(50, seed=7, min_level=0, max_level=5)
    assert first == generate_problems(50, seed=7, min_level=0, max_level=5)


def test_different_seeds_differ():
    questions_a = [p.question for p in generate_problems(50, seed=1)]
    questions_b = [p.question for p in generate_problems(50, seed=2)]
    assert questions_a != questions_b


@pytest.mark.parametrize("seed", [0, 1])
def test_train_and_test_questions_are_disjoint_and_unique(seed):
    train = generate_problems(1200, seed=seed, min_level=0, max_level=5, split="train")
    test = generate_problems(300, seed=seed, min_level=0, max_level=5, split="test")
    train_questions = {p.question for p in train}
    test_questions = {p.question for p in test}
    assert len(train_questions) == len(train)
    assert len(test_questions) == len(test)
    assert not train_questions & test_questions
    assert all(p.id.startswith("synthetic-test-") for p in test)


def test_every_solution_is_a_correct_derivation(all_levels):
    for problem in all_levels:
        assert solution_errors(problem) == [], problem


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda s: s.replace(" = ", " = 1", 1),  # wrong result
        lambda s: re.sub(r"\\boxed\{(\d+)\}", r"\\boxed{\g<1>0}", s),  # wrong boxed answer
        lambda s: s.split("\n", 1)[1],  # a step dropped
        lambda s: re.sub(r"^(\D*)(\d+)", r"\g<1>9\2", s),  # first operand not from the question
    ],
)
def test_solution_checker_catches_broken_solutions(all_levels, corrupt):
    for problem in [p for p in all_levels if level_of(p) >= 2][:20]:
        broken = Problem(problem.id, problem.question, corrupt(problem.solution), problem.answer)
        assert solution_errors(broken), broken.solution


def test_level_distribution_covers_the_requested_range():
    for low, high in [(0, 5), (1, 3), (2, 2), (4, 5)]:
        problems = generate_problems(60, seed=0, min_level=low, max_level=high)
        counts = Counter(level_of(p) for p in problems)
        assert sorted(counts) == list(range(low, high + 1))
        assert max(counts.values()) - min(counts.values()) <= 1


def test_answers_are_non_negative_integers(all_levels):
    for problem in all_levels:
        assert problem.answer.isdigit() and str(int(problem.answer)) == problem.answer
        assert problem.solution.endswith(f"\\boxed{{{problem.answer}}}")


def test_questions_and_steps_stay_short(all_levels):
    for problem in all_levels:
        assert len(problem.question.split()) < 40, problem.question
        assert all(len(line.split()) <= 10 for line in problem.solution.split("\n"))


def test_easy_levels_have_the_documented_shape():
    read_off, one_step = generate_problems(2, seed=0, min_level=0, max_level=1)
    assert read_off.answer in read_off.question
    assert read_off.solution.count("\n") == 1
    assert EQUATION.fullmatch(one_step.solution.split("\n")[0])


def test_ids_encode_split_level_and_index():
    problems = generate_problems(4, seed=0, min_level=2, max_level=3, split="test")
    assert [p.id for p in problems] == [
        "synthetic-test-L2-0",
        "synthetic-test-L3-1",
        "synthetic-test-L2-2",
        "synthetic-test-L3-3",
    ]
    with pytest.raises(ValueError, match="not a synthetic problem id"):
        level_of(Problem("gsm8k-train-1", "q", "\\boxed{1}", "1"))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_level": 3, "max_level": 2},
        {"max_level": 6},
        {"min_level": -1},
        {"split": "dev"},
    ],
)
def test_invalid_arguments_are_rejected(kwargs):
    with pytest.raises(ValueError):
        generate_problems(5, seed=0, **kwargs)


def test_asking_for_more_than_a_level_holds_fails_clearly():
    with pytest.raises(ValueError, match="could not find"):
        generate_problems(5000, seed=0, min_level=0, max_level=0, split="test")


def _words(problems: list[Problem]) -> set[str]:
    return {word.strip(".,?") for p in problems for word in p.question.split()}


def test_the_ood_split_has_new_surface_forms_larger_numbers_and_correct_solutions():
    ood = generate_problems(500, seed=0, min_level=2, max_level=4, split="ood")
    train = generate_problems(600, seed=0, min_level=1, max_level=3, split="train")
    assert len({p.question for p in ood}) == 500
    assert all(p.id.startswith("synthetic-ood-L") for p in ood)
    assert {level_of(p) for p in ood} == {2, 3, 4}
    for problem in ood:
        assert solution_errors(problem) == [], problem
    ood_words, train_words = _words(ood), _words(train)
    surface = set(NAMES) | set(OBJECTS) | {plural for _, plural in CONTAINERS}
    assert not ood_words & surface  # no training name, object or container
    assert set(OOD_NAMES) | set(OOD_OBJECTS) <= ood_words and not train_words & set(OOD_NAMES)
    assert "How many" not in " ".join(p.question for p in ood)  # another question wording
    starts = [
        int(NUMBER.search(p.question).group())
        for p in ood
        if level_of(p) == 2 and "each holding" not in p.question
    ]
    assert starts and min(starts) > 20  # level 2 trains on starts <= 20
    assert generate_problems(20, seed=0, min_level=2, max_level=4, split="ood") == ood[:20]


def test_the_ood_split_starts_at_level_one():
    with pytest.raises(ValueError, match="ood split starts at level 1"):
        generate_problems(5, seed=0, min_level=0, max_level=2, split="ood")


def test_validation_problems_are_train_split_questions_outside_the_training_set():
    from rasft_mlx.data.sources import load_problems

    settings = {"seed": 4, "n_train": 300, "min_level": 1, "max_level": 2, "n_validation": 120}
    train = load_problems("synthetic", split="train", synthetic=settings)
    validation = load_problems("synthetic-validation", synthetic=settings)
    test = load_problems("synthetic", split="test", synthetic={**settings, "n_test": 300})
    assert len(validation) == 120 and validation[0].id.startswith("synthetic-validation-L1-")
    questions = {p.question for p in validation}
    assert not questions & {p.question for p in train}
    assert not questions & {p.question for p in test}
    assert all(split_of_question(q) == "train" for q in questions)
    for problem in validation:
        assert solution_errors(problem) == [], problem


def test_validation_skips_training_questions_even_where_collisions_are_likely():
    from rasft_mlx.data.sources import load_problems

    # Level 0 has a few thousand questions, so 1,200 training ones cover much of the space.
    settings = {"seed": 0, "n_train": 1200, "min_level": 0, "max_level": 0, "n_validation": 300}
    train = {p.question for p in load_problems("synthetic", split="train", synthetic=settings)}
    validation = [p.question for p in load_problems("synthetic-validation", synthetic=settings)]
    assert len(set(validation)) == 300 and not train & set(validation)


def test_extra_steps_lengthen_a_level_with_its_own_kinds_of_events():
    """Level 2 + 1 step: three add/subtract lines (no doubling or halving, which level 3 brings),
    each a correct derivation; extra_steps 0 leaves the ladder's problems as they were."""
    plain = generate_problems(60, seed=3, min_level=2, max_level=2)
    assert generate_problems(60, seed=3, min_level=2, max_level=2, extra_steps=0) == plain
    longer = generate_problems(60, seed=3, min_level=2, max_level=2, extra_steps=1)
    for problem in longer:
        assert solution_errors(problem, extra_steps=1) == [], problem
        lines = problem.solution.splitlines()
        assert len(lines) == 4 and lines[-1].startswith("\\boxed{")
        events = [line for line in lines[:-1] if not line.startswith("At first")]
        assert all(re.search(r" [+-] ", line) for line in events), problem.solution
    assert not {p.question for p in longer} & {p.question for p in plain}
    with pytest.raises(ValueError, match="level 1 or above"):
        generate_problems(2, seed=0, min_level=0, max_level=1, extra_steps=1)


STYLE_OPENINGS = {
    "numbered": "Step 1:",
    "running": "To begin, there are",
    "worked": "We work out",
    "chained": "First, ",
}
STYLE_CLOSINGS = re.compile(
    r"^(So \w+ has \d+ \w+\.|The answer is:|That leaves \w+ with \d+ \w+\.|Final count: \d+ \w+\.)$"
)


@pytest.mark.parametrize("count", [3, 5])
def test_solution_styles_keep_the_questions_and_write_distinct_correct_texts(count):
    """N styles: the same questions as one style, each style about 1/N of the solutions, every
    one a correct derivation, and two styles of one problem far below RASFT's near-duplicate
    threshold (word 3-gram Jaccard 0.82), so correct rollouts in different styles are not
    collapsed into one."""
    from rasft_mlx.data.synthetic import _make_problem
    from rasft_mlx.data.synthetic_solutions import write_solution
    from rasft_mlx.rasft.groups import word_trigram_jaccard

    plain = generate_problems(300, seed=4, min_level=1, max_level=3)
    styled = generate_problems(300, seed=4, min_level=1, max_level=3, solution_styles=count)
    assert [p.question for p in styled] == [p.question for p in plain]
    assert [p.answer for p in styled] == [p.answer for p in plain]
    openings = list(STYLE_OPENINGS.items())[: count - 1]
    styles = {name: sum(p.solution.startswith(o) for p in styled) for name, o in openings}
    styles["ladder"] = len(styled) - sum(styles.values())
    expected = len(styled) / count
    assert all(0.7 * expected <= n <= 1.3 * expected for n in styles.values()), styles
    for problem in styled:
        kept = [line for line in problem.solution.split("\n") if not STYLE_CLOSINGS.match(line)]
        ladder_shaped = Problem(problem.id, problem.question, "\n".join(kept), problem.answer)
        assert solution_errors(ladder_shaped) == [], problem.solution
    import random

    rng = random.Random(0)
    for level in (1, 2, 3):
        question, steps, answer = _make_problem(rng, level)
        texts = [write_solution(steps, answer, style) for style in range(count)]
        for i in range(count):
            for j in range(i + 1, count):
                assert word_trigram_jaccard(texts[i], texts[j]) < 0.5, (texts[i], texts[j])
    with pytest.raises(ValueError, match="solution_styles must be 1..5"):
        generate_problems(2, seed=0, solution_styles=6)


def test_up_to_three_styles_write_the_texts_they_always_have():
    """Styles 4 and 5 came later: the staged setting's start was trained on three styles' texts,
    which must not move (sha256 of the 300 solutions, as written before the new styles)."""
    styled = generate_problems(300, seed=4, min_level=1, max_level=3, solution_styles=3)
    digest = hashlib.sha256("\n".join(p.solution for p in styled).encode()).hexdigest()
    assert digest == "56e005b9b36d7abc870a41ad8cb0ecbb17dae9565c6989d21ef2c102207365dc"


LINE_STYLES = {
    "labelled": re.compile(r"^After [\w ]+: |^At first: "),
    "numbered": re.compile(r"^Step \d+: "),
    "running": re.compile(r"^(To begin, there are|Now there are) "),
    "worked": re.compile(r"^We work out "),
    "chained": re.compile(r"^(First|Next), "),
}


def line_style(line: str) -> str:
    (style,) = [name for name, pattern in LINE_STYLES.items() if pattern.match(line)]
    return style


def test_styles_per_line_write_many_correct_texts_per_answer():
    """style_per_line: the same questions and answers, every solution a correct derivation, the
    lines of one solution in different styles, and so many texts per answer that RASFT's
    near-duplicate rule (word 3-gram Jaccard >= 0.82) almost never joins two draws of one problem
    (one style per solution: 5 texts, so 1 pair in 5 is a duplicate)."""
    import random

    from rasft_mlx.data.synthetic import _make_problem
    from rasft_mlx.data.synthetic_solutions import write_mixed_solution
    from rasft_mlx.rasft.groups import word_trigram_jaccard

    plain = generate_problems(300, seed=4, min_level=2, max_level=3, solution_styles=5)
    mixed = generate_problems(
        300, seed=4, min_level=2, max_level=3, solution_styles=5, style_per_line=True
    )
    assert [(p.question, p.answer) for p in mixed] == [(p.question, p.answer) for p in plain]
    mixed_within = 0
    for problem in mixed:
        kept = [line for line in problem.solution.split("\n") if not STYLE_CLOSINGS.match(line)]
        ladder_shaped = Problem(problem.id, problem.question, "\n".join(kept), problem.answer)
        assert solution_errors(ladder_shaped) == [], problem.solution
        mixed_within += len({line_style(line) for line in kept[:-1]}) > 1
    assert mixed_within > 0.6 * len(mixed)  # 3 lines: 1 - 5 * (1/5)^3 = 96 % of level 3
    rng = random.Random(0)
    pairs = duplicates = 0
    for _ in range(100):
        _, steps, answer = _make_problem(rng, 3)
        texts = [write_mixed_solution(steps, answer, 5, rng) for _ in range(4)]
        for i in range(4):
            for j in range(i + 1, 4):
                pairs += 1
                duplicates += word_trigram_jaccard(texts[i], texts[j]) >= 0.82
    assert duplicates / pairs < 0.02, duplicates / pairs
    one_style = generate_problems(30, seed=0, solution_styles=1, style_per_line=True)
    assert one_style == generate_problems(30, seed=0, solution_styles=1)


def test_the_kept_starts_training_texts_do_not_move():
    """Five styles per solution (stop 46's probe start) and styles per line (the staged-varied
    start kept in git, trained on these 960 solutions): sha256 as written when they were trained."""

    def digest(problems):
        return hashlib.sha256("\n".join(p.solution for p in problems).encode()).hexdigest()

    five = generate_problems(300, seed=4, min_level=1, max_level=3, solution_styles=5)
    assert digest(five) == "2236c94c9cc19031189bdf453ef6b3b497afa1fe6419e2f6b77671183b54edf3"
    varied = generate_problems(
        960, seed=0, min_level=1, max_level=3, solution_styles=5, style_per_line=True
    )
    assert digest(varied) == "f2a90113c2f7ea62d7defd975a70e8f7688b4563d6c2fc5e6c347c2845030414"


def test_a_recipe_asks_for_solution_styles(tmp_path):
    from rasft_mlx.data.sources import load_problems

    problems = load_problems(
        "synthetic", split="train", synthetic={"n_train": 30, "solution_styles": 3}
    )
    assert any(p.solution.startswith("Step 1:") for p in problems)
    assert generate_problems(30, seed=0, solution_styles=3) == problems
    lines = load_problems(
        "synthetic",
        split="train",
        synthetic={"n_train": 30, "solution_styles": 5, "style_per_line": True},
    )
    assert lines == generate_problems(30, seed=0, solution_styles=5, style_per_line=True)
    assert lines != generate_problems(30, seed=0, solution_styles=5)
