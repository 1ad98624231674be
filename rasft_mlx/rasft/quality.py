"""Quality filters for rollouts, after the behaviour the RASFT authors describe (spec section 2).

A rollout that fails one stays in the group size K but is neither a positive nor a negative:
too short, gibberish or collapsed (repeated lines or word 8-grams, self-correction loops, mostly
punctuation), a shortcut answer (a bare boxed choice or number with no working), or an invalid
format (too short for a derivation, no boxed answer, no step of reasoning). The boxed answer is
read as theirs is (`authors_boxed`): the last `\\boxed{` only, empty counts, unclosed does not.
"""

from __future__ import annotations

import re
from collections import Counter

MIN_CHARS = 20
MIN_FORMAT_CHARS = 80
REPEATED_LINE_MIN_CHARS = 12
REPEATS = 3
NGRAM_WORDS, NGRAM_MIN_TEXT_WORDS = 8, 30
SELF_CORRECTION_MARKERS = (
    "let me correct",
    "correcting the calculation",
    "i need to correct",
    "rechecking",
    "let's correct",
    "wait,",
    "however, this is incorrect",
    "the previous reasoning was wrong",
)
MAX_SELF_CORRECTIONS = 1
MAX_SYMBOL_SHARE = 0.42
SHORTCUT_PHRASES = tuple(
    re.compile(p)
    for p in (
        r"according to the problem[, ]+the correct answer is",
        r"based on the given information[, ]+we know that the correct answer is",
        r"the correct answer is\s*[:：]?\s*\\boxed",
        r"therefore[, ]+the correct answer is",
        r"thus[, ]+the correct answer is",
    )
)
BARE_CHOICE = re.compile(r"[A-Da-d①②③④⑤⑥⑦⑧⑨0-9,， ]{1,12}")
BARE_CHOICE_MAX_CHARS, BOXED_MIN_CHARS = 180, 120
REASONING_MARKERS = ("=", "therefore", "thus", "hence", "so ", "let ", "we have", "we get")
REASONING_MARKERS += ("substitute", "solve")
FILTER_REASONS = ("too_short", "collapsed", "shortcut", "invalid_format")


def _normalised(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower().strip())


def authors_boxed(text: str) -> str | None:
    """Their extract_boxed_content (T:139-162): the content of the last `\\boxed{` only (no
    \\fbox), stripped; None when there is none or that last one is unclosed; "" when empty."""
    start = text.rfind("\\boxed{")
    if start == -1:
        return None
    begin, depth = start + len("\\boxed{"), 1
    for end in range(begin, len(text)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if depth == 0:
            return text[begin:end].strip()
    return None


def strip_math_wrappers(text: str) -> str:
    """Their strip_math_wrappers (T:165-176)."""
    text = text.strip()
    for wrapper in ("$", "\\left", "\\right", "\\!", "\\,", "\\;", "\\:"):
        text = text.replace(wrapper, "")
    return text.replace("\n", " ").strip(" .,:;!?\t").strip()


def _boxed_answer(text: str) -> str | None:
    content = authors_boxed(text)
    return None if content is None else strip_math_wrappers(content)


def is_collapsed(text: str) -> bool:
    """Gibberish or a degenerate loop: a sentence or line of 12+ characters three times, a word
    8-gram three times (texts of 30+ words), two self-correction markers, or over 42 % of the
    characters neither letters, digits nor spaces."""
    stripped = text.strip()
    if len(stripped) < MIN_CHARS:
        return True
    flat = _normalised(stripped)
    pieces = [p.strip() for p in re.split(r"[.\n]", flat) if p.strip()]
    if any(n >= REPEATS for n in Counter(p for p in pieces if len(p) >= 12).values()):
        return True
    words = flat.split()
    if len(words) >= NGRAM_MIN_TEXT_WORDS:
        grams = Counter(
            tuple(words[i : i + NGRAM_WORDS]) for i in range(len(words) - NGRAM_WORDS + 1)
        )
        if max(grams.values()) >= REPEATS:
            return True
    if sum(marker in flat for marker in SELF_CORRECTION_MARKERS) > MAX_SELF_CORRECTIONS:
        return True
    symbols = sum(1 for c in stripped if not c.isalnum() and not c.isspace())
    return symbols / len(stripped) > MAX_SYMBOL_SHARE


def is_shortcut(text: str) -> bool:
    """An answer with no working: a stock 'the correct answer is' phrase, a bare boxed choice or
    short number in under 180 characters, or any boxed answer in under 120 characters."""
    stripped = text.strip()
    lowered = stripped.lower()
    if any(p.search(lowered) for p in SHORTCUT_PHRASES):
        return True
    boxed = _boxed_answer(stripped)
    if boxed is None:
        return False
    if BARE_CHOICE.fullmatch(boxed) and len(stripped) < BARE_CHOICE_MAX_CHARS:
        return True
    return len(stripped) < BOXED_MIN_CHARS


def has_valid_format(text: str) -> bool:
    """A derivation: at least 80 characters, not collapsed, a boxed answer and a reasoning step."""
    stripped = text.strip()
    if len(stripped) < MIN_FORMAT_CHARS or is_collapsed(stripped):
        return False
    if authors_boxed(stripped) is None:
        return False
    lowered = stripped.lower()
    return any(marker in lowered for marker in REASONING_MARKERS)


def quality_failure(text: str) -> str | None:
    """Why a rollout fails the filters (one of FILTER_REASONS), or None when it passes."""
    stripped = text.strip()
    if len(stripped) < MIN_CHARS:
        return "too_short"
    if is_collapsed(stripped):
        return "collapsed"
    if is_shortcut(stripped):
        return "shortcut"
    if not has_valid_format(stripped):
        return "invalid_format"
    return None
