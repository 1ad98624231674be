"""Answer extraction, normalisation and equivalence checks for verifying model rollouts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

VerdictReason = Literal["correct", "wrong", "no_answer", "truncated"]

_MINUS_SIGNS = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2014": "-"})

# A number as written in prose: optional sign, thousands commas, decimals, an optional "/b".
# The look-behind keeps "10-20" from yielding -20 and "x2" from yielding 2; the look-ahead skips
# ordinals ("the 3rd turn") and stops a backtracked match from ending mid-number.
_PROSE_NUMBER = re.compile(
    r"(?<![\w.])[-\u2212]?(?:\d{1,3}(?:,\d{3})+|\d+|(?=\.\d))(?:\.\d+)?(?:/\d+(?:\.\d+)?)?"
    r"(?!\d|,\d|(?:st|nd|rd|th)\b)"
)
_GSM8K_MARKER = re.compile(r"####\s*([^\n]*)")
_ANSWER_PHRASE = re.compile(r"\bthe\s+(?:final\s+)?answer\s+is\s*:?|\banswer\s*:", re.IGNORECASE)
_LEADING_MATH_SPAN = re.compile(r"^\s*(?:\$\$?([^$]+)\$|\\\((.+?)\\\))")
_SENTENCE_END = re.compile(r"\.(?:\s|$)")
_ENGLISH_WORD = re.compile(r"(?<!\\)\b[a-zA-Z]{2,}\b")

_TEXT_WRAPPER = re.compile(
    r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}"
)
_UNIT_SUFFIX = re.compile(
    r"^([-+]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)(?:/\d+)?)\s*"
    r"(?:%|(?<=\s)[a-zA-Z][a-zA-Z .]*"  # "18 dollars"; "2x" is not a unit, "3cm" is
    r"|(?:cm|mm|km|m|kg|g|mg|ml|l|h|hr|hrs|min|s|mph|ft|in|lbs?|oz)\b\.?)$"
)
_PLAIN_NUMBER = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d{1,3})?$")
_MIXED_NUMBER = re.compile(r"^-?(\d+)\s+(\d+)/(\d+)$")
_LATEX_FRACTION = re.compile(r"^([-+]?)\\frac(?:\{([^{}]+)\}|(\d))(?:\{([^{}]+)\}|(\d))$")
_VARIABLE_ASSIGNMENT = re.compile(r"^[a-zA-Z]\s*=(?!=)")


def _boxed_contents(text: str) -> list[str]:
    """Every ``\\boxed{...}`` / ``\\fbox{...}`` / ``\\boxed x`` argument, in order of appearance."""
    contents = []
    for match in re.finditer(r"\\(?:boxed|fbox)", text):
        position = match.end()
        if position < len(text) and text[position] == "{":
            depth = 0
            for end in range(position, len(text)):
                if text[end] == "{":
                    depth += 1
                elif text[end] == "}":
                    depth -= 1
                    if depth == 0:
                        contents.append(text[position + 1 : end].strip())
                        break
            # An unclosed brace (a completion cut mid-answer) contributes nothing.
        elif position < len(text) and text[position] in " \t":
            argument = re.match(r"[ \t]+([^\s$]+)", text[position:])
            if argument:
                contents.append(argument.group(1))
    return [content for content in contents if content]


def last_boxed(text: str) -> str | None:
    """The argument of the last ``\\boxed{...}`` (or ``\\fbox``) in the text, or None."""
    boxed = _boxed_contents(text)
    return boxed[-1] if boxed else None


def _answer_from_phrase(phrase: str) -> str | None:
    """The answer in the rest of a line that follows "the answer is" / "answer:"."""
    math_span = _LEADING_MATH_SPAN.match(phrase)
    if math_span:
        return (math_span.group(1) or math_span.group(2)).strip()
    sentence_end = _SENTENCE_END.search(phrase)
    if sentence_end:
        phrase = phrase[: sentence_end.start()]
    # "the answer is 12 - 5 = 7 apples": the result is what follows the last "=".
    phrase = phrase.rsplit("=", 1)[-1].strip().rstrip(".").strip()
    if not phrase:
        return None
    if parse_number(phrase) is not None:
        return phrase
    # "the answer is 5, but let me check" -> 5: in prose the first number is the one announced.
    # A bare symbolic answer ("\\sqrt{2}", "Evelyn") is kept as is.
    numbers = _PROSE_NUMBER.findall(phrase)
    words = _ENGLISH_WORD.findall(_TEXT_WRAPPER.sub(r"\1", phrase))
    if numbers and words:
        return numbers[0]
    # Several words and no number: prose ("Answer: let's think step by step"), not an answer.
    return None if len(words) > 3 else phrase


def extract_answer(text: str) -> str | None:
    """The final answer of a completion: last \\boxed{}, else ``#### N``, else "the answer is N",
    else the last number. None when the text holds none of these."""
    boxed = _boxed_contents(text)
    if boxed:
        return boxed[-1]
    markers = [m.group(1).strip() for m in _GSM8K_MARKER.finditer(text)]
    if markers and markers[-1]:
        return markers[-1]
    for phrase_match in reversed(list(_ANSWER_PHRASE.finditer(text))):
        answer = _answer_from_phrase(text[phrase_match.end() :].split("\n", 1)[0])
        if answer is not None:
            return answer
    numbers = _PROSE_NUMBER.findall(text)
    return numbers[-1] if numbers else None


def _strip_delimiters(s: str) -> str:
    for opening, closing in (("\\(", "\\)"), ("\\[", "\\]")):
        if s.startswith(opening) and s.endswith(closing):
            s = s[len(opening) : -len(closing)].strip()
    return s


def normalize_answer(s: str) -> str:
    """A canonical spelling of an answer: no LaTeX wrappers, dollar signs, units, thousands commas,
    leading "=" or trailing period. Case and inner spaces are kept. Idempotent."""
    s = s.translate(_MINUS_SIGNS).strip()
    s = _strip_delimiters(s)
    s = s.replace("\\$", "").replace("$", "")
    s = re.sub(r"\\(?:left|right)\b", "", s)
    s = re.sub(r"\\[!,;: ]", "", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\^\s*\{?\\circ\}?|°", "", s)
    s = s.replace("\\%", "%")
    previous = None
    while previous != s:
        previous = s
        s = _TEXT_WRAPPER.sub(r"\1", s)
    s = s.strip()
    s = _strip_delimiters(s)
    s = _VARIABLE_ASSIGNMENT.sub("", s)
    s = s.lstrip("=").strip()
    s = s.rstrip(".").strip()
    s = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", s)
    unit_match = _UNIT_SUFFIX.match(s)
    if unit_match:
        s = unit_match.group(1)
    s = s.rstrip(".").strip()
    return s


def parse_number(s: str) -> Fraction | None:
    """The exact value of a numeric answer (integer, decimal, scientific, a/b, \\frac{a}{b}, with
    units or % ignored), or None when the answer is not a plain number."""
    s = normalize_answer(s)
    mixed = _MIXED_NUMBER.match(s)
    if mixed:
        whole, numerator, denominator = (int(group) for group in mixed.groups())
        if denominator == 0:
            return None
        magnitude = abs(whole) + Fraction(numerator, denominator)
        return -magnitude if s.startswith("-") else magnitude
    # Spaces may sit next to a sign, slash or brace ("- 5", "\frac {1}{2}"), never between digits.
    s = re.sub(r"(?<=[-+/{}])\s+|\s+(?=[/{}])", "", s)
    if not s or re.search(r"\s", s):
        return None
    if _PLAIN_NUMBER.match(s):
        try:
            return Fraction(s)
        except ValueError:  # more digits than int() accepts from a string
            return None
    fraction_match = _LATEX_FRACTION.match(s)
    if fraction_match:
        sign, numerator_braced, numerator_digit, denominator_braced, denominator_digit = (
            fraction_match.groups()
        )
        numerator = parse_number(numerator_braced or numerator_digit)
        denominator = parse_number(denominator_braced or denominator_digit)
        if numerator is None or denominator is None or denominator == 0:
            return None
        return -numerator / denominator if sign == "-" else numerator / denominator
    if s.count("/") == 1:
        numerator_text, denominator_text = s.split("/")
        if _PLAIN_NUMBER.match(numerator_text) and _PLAIN_NUMBER.match(denominator_text):
            denominator = Fraction(denominator_text)
            return Fraction(numerator_text) / denominator if denominator != 0 else None
    return None


def _canonical_text(s: str) -> str:
    return re.sub(r"\s+", "", normalize_answer(s)).lower()


def answers_match(
    predicted: str | None, gold: str, *, rel_tol: float = 1e-6, abs_tol: float = 1e-9
) -> bool:
    """Whether a predicted answer equals the gold one: numerically within tolerance when both are
    numbers, else as normalised text (symbolic LaTeX equivalence: grader math-verify)."""
    if predicted is None:
        return False
    predicted_value, gold_value = parse_number(predicted), parse_number(gold)
    if predicted_value is not None and gold_value is not None:
        # Tolerance absorbs decimal rounding ("0.3333333" vs 1/3); two integers involve none, and
        # rel_tol would otherwise equate 1000001 with 1000000. Fractions: no float overflow.
        if predicted_value.denominator == 1 and gold_value.denominator == 1:
            return predicted_value == gold_value
        difference = abs(predicted_value - gold_value)
        scale = max(abs(predicted_value), abs(gold_value))
        return difference <= max(Fraction(rel_tol) * scale, Fraction(abs_tol))
    return _canonical_text(predicted) == _canonical_text(gold)


@dataclass(frozen=True)
class Verdict:
    extracted: str | None
    correct: bool
    reason: VerdictReason


def verify_completion(completion: str, gold: str, *, truncated: bool = False) -> Verdict:
    """Extract the answer of a completion and judge it against the gold answer. A truncated
    completion is always incorrect, whatever answer it happens to contain."""
    extracted = extract_answer(completion)
    if truncated:
        return Verdict(extracted, False, "truncated")
    if extracted is None:
        return Verdict(None, False, "no_answer")
    correct = answers_match(extracted, gold)
    return Verdict(extracted, correct, "correct" if correct else "wrong")


def gsm8k_gold(answer_field: str) -> str:
    """The normalised gold answer of a GSM8K ``answer`` field (the text after its last ``####``)."""
    marker = answer_field.rfind("####")
    if marker < 0:
        raise ValueError(f"GSM8K answer has no '####' marker: {answer_field[-80:]!r}")
    return normalize_answer(answer_field[marker + 4 :])
