"""A problem's rollout group (K, positives, negatives, who trains) against the authors' rule."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from rasft_mlx.data.problem import Problem
from rasft_mlx.generation.completions import Completion
from rasft_mlx.rasft.groups import build_group, select_negatives
from rasft_mlx.rasft.quality import (
    authors_boxed,
    has_valid_format,
    is_collapsed,
    is_shortcut,
    quality_failure,
)
from rasft_mlx.rasft.rollouts import Rollout, verify_samples
from rasft_mlx.rasft.weights import word_trigram_jaccard
from rasft_mlx.recipe.config import RasftConfig, recipe_from_dict

WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike".split()


def text(seed: int, answer: str = "7") -> str:
    """A distinct derivation (word 3-grams share nothing across seeds) ending in a boxed answer."""
    words = [f"{WORDS[(seed * 5 + i) % len(WORDS)]}{seed}" for i in range(24)]
    return "Let us solve it: " + " ".join(words) + f", so 3 + 4 = {answer}. \\boxed{{{answer}}}"


def rollout(sample: int, verdict: str, body: str | None = None) -> Rollout:
    correct = verdict == "correct"
    return Rollout(
        problem_id="p",
        sample=sample,
        text=body if body is not None else text(sample, "7" if correct else "9"),
        token_ids=(1, 2, 3),
        truncated=verdict == "truncated",
        extracted=None if verdict in ("truncated", "no_answer") else ("7" if correct else "9"),
        correct=correct,
        verdict=verdict,
    )


def authors_expert_weight(k_pos: int, k_neg: int, k_total: int) -> float:
    """The authors' expert advantage, transcribed: group z-scores, tanh(0.4 z), times 1/(1+k+)."""
    expert_reward = 1.0 + (1.0 - k_pos / k_total) * (3.0 - 1.0)
    group = [expert_reward] + [1.0] * k_pos + [0.0] * k_neg
    mean = sum(group) / len(group)
    std = math.sqrt(sum((g - mean) ** 2 for g in group) / len(group))
    return math.tanh(0.4 * (expert_reward - mean) / (std + 1e-6)) / (1 + k_pos)


def test_three_identical_correct_samples_are_one_and_a_degenerate_group():
    same = text(1)
    group = build_group([rollout(i, "correct", same) for i in range(3)], RasftConfig())
    assert group.group_size == 1
    assert group.weights.route == "fallback_degenerate"
    assert group.weights.expert_weight == 1.0 and group.trained == ()
    assert group.dropped["duplicate"] == 2


def test_one_correct_and_two_truncated_samples():
    """Truncated samples stay in K = 3 but are not negatives: the group is [R_exp, +1]."""
    samples = [rollout(0, "correct"), rollout(1, "truncated"), rollout(2, "truncated")]
    group = build_group(samples, RasftConfig())
    assert group.group_size == 3
    assert group.weights.expert_weight == pytest.approx(authors_expert_weight(1, 0, 3))
    assert group.weights.expert_weight == pytest.approx(0.190, abs=5e-4)
    assert [r.sample for r in group.trained] == [0]
    assert group.roles == {0: "positive", 1: "truncated", 2: "truncated"}


def test_a_mixed_group_trains_only_its_correct_rollouts():
    samples = [
        rollout(0, "wrong"),
        rollout(1, "correct"),
        rollout(2, "no_answer"),
        rollout(3, "wrong"),
        rollout(4, "correct"),
    ]
    group = build_group(samples, RasftConfig())
    assert group.group_size == 5
    assert [r.sample for r in group.trained] == [1, 4]
    assert all(r.correct for r in group.trained)
    assert group.weights.expert_weight == pytest.approx(authors_expert_weight(2, 2, 5))
    assert len(group.weights.rollout_weights) == 2
    assert group.roles == {
        0: "negative",
        1: "positive",
        2: "no_answer",
        3: "negative",
        4: "positive",
    }
    assert group.dropped == {"wrong": 2, "no_answer": 1}


def test_negatives_near_a_positive_leave_and_the_rest_are_capped_by_distance_to_045():
    positive = rollout(0, "correct")
    base = positive.text.split()
    near = " ".join(base[:-1] + ["\\boxed{9}"])  # all but one 3-gram shared with the positive
    half = " ".join(base[:8] + [w + "x" for w in base[8:]])
    negatives = [rollout(1, "wrong", near), rollout(2, "wrong"), rollout(3, "wrong", half)]
    # With dedup at 0.82 a negative this close to a positive is already a duplicate; dedup at 0.95
    # lets the 0.88 rule act.
    config = replace(RasftConfig(), max_negative_keep=1, dedup_jaccard=0.95)
    kept, too_similar = select_negatives(negatives, [positive], config)
    assert too_similar == 1
    assert [r.sample for r in kept] == [3]  # similarity nearer 0.45 than the unrelated one's 0
    group = build_group([positive, *negatives], config)
    assert group.roles[1] == "negative_left_out" and group.roles[2] == "negative_left_out"
    assert group.weights.expert_weight == pytest.approx(authors_expert_weight(1, 1, 4))


def test_quality_filters_keep_a_shortcut_in_k_but_out_of_the_group():
    shortcut = rollout(1, "correct", "The answer: \\boxed{7}")
    samples = [rollout(0, "correct"), shortcut, rollout(2, "wrong")]
    off = build_group(samples, RasftConfig())
    on = build_group(samples, replace(RasftConfig(), quality_filters=True))
    assert [r.sample for r in off.trained] == [0, 1]
    assert [r.sample for r in on.trained] == [0]
    assert on.group_size == 3 and on.roles[1] == "shortcut"
    assert on.weights.expert_weight == pytest.approx(authors_expert_weight(1, 1, 3))


def test_nothing_left_after_filtering_trains_the_expert_alone():
    samples = [rollout(0, "truncated"), rollout(1, "no_answer")]
    group = build_group(samples, RasftConfig())
    assert group.weights.route == "fallback_empty"
    assert group.weights.expert_weight == 1.0 and group.trained == ()


@pytest.mark.parametrize(
    ("sample", "reason"),
    [
        ("too short", "too_short"),
        ("The total is 12 apples. " * 4 + "\\boxed{12}", "collapsed"),  # a sentence three times
        (
            "Wait, 2 + 2 = 5. Wait, that is wrong. Let me correct it: 4. \\boxed{4} " * 1,
            "collapsed",
        ),
        ("!!!! ### $$$ %%% ^^^ &&& *** ((( ))) --- +++ ??? <<<>>> 12", "collapsed"),
        (
            "Therefore, the correct answer is 42 and nothing else needs to be said. \\boxed{42}",
            "shortcut",
        ),
        ("We count the items carefully one by one and find twelve. \\boxed{12}", "shortcut"),
        (
            "We add the numbers in the list together one after the other and write the total"
            " down in the end without any more words about it.",
            "invalid_format",
        ),
        (
            "First we note the price of one pen and of one book in the shop, then the number of"
            " each bought today, and multiply: 3 * 4 = 12, plus 5 * 2 = 10, giving 22 in total,"
            " which is what the two purchases cost together. \\boxed{22}",
            None,
        ),
    ],
)
def test_quality_filters_by_hand(sample, reason):
    assert quality_failure(sample) == reason


def test_filter_pieces():
    assert is_collapsed("x" * 19)
    loop = " ".join(["we add one to the running total again"] * 3) + " " + "z " * 10
    assert is_collapsed(loop)  # a word 8-gram three times in 30+ words
    assert not is_shortcut("x" * 200)  # no boxed answer, no stock phrase
    assert is_shortcut("A" * 150 + " \\boxed{B}")  # a bare choice under 180 characters
    assert not has_valid_format("a" * 100 + " = \\boxed{1}".replace("=", ""))  # no reasoning step


def test_truncated_samples_are_graded_under_the_authors_protocol():
    """The authors keep only each sample's text (T:905) and grade it like any other (T:775-779):
    a sample cut at max tokens is a positive or a negative by its answer. The project's default
    keeps it out of the group."""
    problem = Problem("p", "question", "solution", "7")
    cut = [Completion(text(0, "7"), (1, 2), True), Completion(text(1, "9"), (1, 2), True)]
    assert [r.verdict for r in verify_samples(problem, cut)] == ["truncated", "truncated"]
    graded = verify_samples(problem, cut, grade_truncated=True)
    assert [(r.verdict, r.correct, r.truncated) for r in graded] == [
        ("correct", True, True),
        ("wrong", False, True),
    ]
    group = build_group(graded, RasftConfig())
    assert group.roles == {0: "positive", 1: "negative"} and group.weights.route == "weighted"
    assert recipe_from_dict({"protocol": "authors"}).rasft.grade_truncated
    assert not RasftConfig().grade_truncated


def test_the_filters_read_the_boxed_answer_as_the_authors_do():
    """extract_boxed_content (T:139-162): the last `\\boxed{` only, None when unclosed, "" when
    empty; is_shortcut strips math wrappers (T:165-176, T:407-410) before the bare-choice test."""
    body = "Let x be the count; then x = 3 + 4, so we have the result. " * 2
    assert authors_boxed("\\boxed{1} then \\boxed{2") is None  # the last one is unclosed
    assert authors_boxed("\\boxed{}") == "" and authors_boxed("\\fbox{7}") is None
    assert has_valid_format(body + "\\boxed{7}")
    assert not has_valid_format(body + "\\fbox{7}")
    assert not has_valid_format(body + "\\boxed{7} and \\boxed{8")
    assert has_valid_format(body + "\\boxed{}")  # an empty box is a box
    assert is_shortcut("So the answer: \\boxed{}.")  # any box in under 120 characters
    wrapped = "Adding the two parts gives the total; " * 4 + "\\boxed{\\,7}"
    assert 120 <= len(wrapped) < 180 and is_shortcut(wrapped)  # "\\,7" -> "7": a bare number


def test_texts_under_three_words_compare_as_the_authors_do():
    """ngram_jaccard (T:303-312) over word_ngrams (T:296-300): a text under three words has no
    3-grams; two such texts score 1.0 (the second is a duplicate, K shrinks), one against a
    longer text 0.0. The project compares them by their 1- or 2-grams."""
    assert word_trigram_jaccard("42", "17", authors=True) == 1.0
    assert word_trigram_jaccard("42", "17") == 0.0
    assert word_trigram_jaccard("x 42", text(0), authors=True) == 0.0
    samples = [rollout(0, "wrong", "42"), rollout(1, "wrong", "17"), rollout(2, "correct")]
    ours = build_group(samples, RasftConfig())
    theirs = build_group(samples, RasftConfig(short_text_jaccard="authors"))
    assert (ours.group_size, theirs.group_size) == (3, 2)
    assert theirs.roles[1] == "duplicate"
    assert recipe_from_dict({"protocol": "authors"}).rasft.short_text_jaccard == "authors"
