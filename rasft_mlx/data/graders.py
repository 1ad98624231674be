"""Graders: the built-in verifier (numbers, short text) and math-verify for LaTeX answers
(fractions, roots, sets, intervals), used as TRL's accuracy reward uses it: the gold answer parsed
first-match, the completion's answer only from a \\boxed{}."""

from __future__ import annotations

import functools
import threading

from rasft_mlx.data.verify import Verdict, answers_match, last_boxed, verify_completion

GRADERS = ("builtin", "math-verify")
INSTALL_HINT = "pip install math-verify"
# Seconds math-verify may spend parsing or comparing one answer. Its timeouts use signal.alarm,
# which only the main thread can set: off the main thread they are None (unbounded).
TIMEOUT_SECONDS = 5


def grade(completion: str, gold: str, *, truncated: bool = False, grader: str = "builtin"):
    """The verdict of `grader` on a completion against the gold answer."""
    if grader == "builtin":
        return verify_completion(completion, gold, truncated=truncated)
    if grader == "math-verify":
        return math_verify_completion(completion, gold, truncated=truncated)
    raise ValueError(f"unknown grader {grader!r}; expected one of {GRADERS}")


def math_verify_completion(completion: str, gold: str, *, truncated: bool = False) -> Verdict:
    """math-verify's verdict. A completion without a \\boxed{} has no answer; a gold answer that
    math-verify cannot parse is compared by the built-in rules instead."""
    parse, verify, answer_config = _math_verify()
    boxed = last_boxed(completion)
    if truncated:
        return Verdict(boxed, False, "truncated")
    if boxed is None:
        return Verdict(None, False, "no_answer")
    timeout = TIMEOUT_SECONDS if threading.current_thread() is threading.main_thread() else None
    gold_parsed = parse(
        f"${gold}$", extraction_mode="first_match", parsing_timeout=timeout
    ) or parse(f"\\boxed{{{gold}}}", extraction_mode="first_match", parsing_timeout=timeout)
    if not gold_parsed:
        correct = answers_match(boxed, gold)
        return Verdict(boxed, correct, "correct" if correct else "wrong")
    answer_parsed = parse(
        completion,
        extraction_config=answer_config,
        extraction_mode="first_match",
        parsing_timeout=timeout,
    )
    if not answer_parsed:
        return Verdict(boxed, False, "wrong")
    correct = bool(verify(gold_parsed, answer_parsed, timeout_seconds=timeout))
    extracted = str(answer_parsed[-1]) if len(answer_parsed) > 1 else boxed
    return Verdict(extracted, correct, "correct" if correct else "wrong")


@functools.cache
def _math_verify():
    try:
        from math_verify import LatexExtractionConfig, parse, verify
        from math_verify.parser import NormalizationConfig
    except ImportError as exc:
        raise ImportError(
            f"grader 'math-verify' needs the math-verify package ({INSTALL_HINT})"
        ) from exc
    answer_config = [
        LatexExtractionConfig(
            normalization_config=NormalizationConfig(
                nits=False,
                malformed_operators=False,
                basic_latex=True,
                boxed="all",
                units=True,
            ),
            boxed_match_priority=0,
            try_extract_without_anchor=False,
        )
    ]
    return parse, verify, answer_config
