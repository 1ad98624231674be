import json
from fractions import Fraction
from pathlib import Path

import pytest

from rasft_mlx.data.verify import (
    Verdict,
    answers_match,
    extract_answer,
    gsm8k_gold,
    normalize_answer,
    parse_number,
    verify_completion,
)

GSM8K_DIR = Path(__file__).resolve().parents[2] / "shared/data/gsm8k"

# (completion, gold, expected extracted answer, expected correct)
CASES = [
    # \boxed: nesting, last one wins, wins over "####" and "the answer is", bare form
    (r"So the total is \boxed{72}.", "72", "72", True),
    (r"Half of it: \boxed{\frac{1}{2}}", "0.5", r"\frac{1}{2}", True),
    (r"\boxed{\dfrac{3}{4}}", "3/4", r"\dfrac{3}{4}", True),
    (r"\boxed{\sqrt{\frac{1}{2}}}", r"\sqrt{\frac{1}{2}}", r"\sqrt{\frac{1}{2}}", True),
    (r"First \boxed{5}, on reflection \boxed{6}.", "6", "6", True),
    (r"First \boxed{5}, on reflection \boxed{6}.", "5", "6", False),
    ("#### 10\nWait, recheck: \\boxed{12}", "12", "12", True),
    (r"The answer is 3. Actually \boxed{4}", "4", "4", True),
    (r"thus $\boxed 5$", "5", "5", True),
    (r"\boxed{\text{18 dollars}}", "18", r"\text{18 dollars}", True),
    (r"\boxed{x = -3}", "-3", "x = -3", True),
    (r"\boxed{(1, 2)}", r"\left( 1, 2 \right)", "(1, 2)", True),
    (r"\boxed{\text{Monday}}", "monday", r"\text{Monday}", True),
    (r"\boxed{\sqrt{2}}", r"\sqrt{3}", r"\sqrt{2}", False),
    # GSM8K "####" (last one wins, commas, beats a later "the answer is")
    ("48/2 = <<48/2=24>>24\n#### 24", "24", "24", True),
    ("so 1000 in all\n#### 1,000", "1000", "1,000", True),
    ("#### 5\nThe answer is 7", "5", "5", True),
    ("#### 3\n#### 4", "4", "4", True),
    # "the answer is" / "answer:" (case-insensitive, last occurrence)
    ("The answer is 18.", "18", "18", True),
    ("THE ANSWER IS: $42$", "42", "42", True),
    ("Answer: 7 apples", "7", "7 apples", True),
    ("The answer is 5. Hmm, no, the answer is 6.", "6", "6", True),
    ("The answer is 12 - 5 = 7 apples.", "7", "7 apples", True),
    ("I think the answer is 5, but 7 is also possible", "5", "5", True),
    (r"The final answer is $\frac{3}{4}$. I hope it is correct.", "0.75", r"\frac{3}{4}", True),
    ("The answer is 3.5.", "3.5", "3.5", True),
    ("The answer is Evelyn.", "evelyn", "Evelyn", True),
    ("Answer: let's think step by step.\nShe has 3 cats and 4 dogs", "4", "4", True),
    # last-number fallback
    ("She has 3 cats and 4 dogs, so 7 pets", "7", "7", True),
    ("She has 3 cats and 4 dogs, so 7 pets", "3", "7", False),
    ("The temperature fell to -5 degrees", "-5", "-5", True),
    ("The temperature fell to -5 degrees", "5", "-5", False),
    ("Pages 10-20 were read", "20", "20", True),
    ("so 10 meters after the 3rd turn", "10", "10", True),
    ("he rides 6 miles on the 13th day", "6", "6", True),
    ("It costs $1,234.50 in total", "1234.5", "1,234.50", True),
    ("so x = 0.5", "1/2", "0.5", True),
    ("It grows by 40%", "40", "40", True),
    ("we get 18", "180", "18", False),
    ("we get 1/2", "2", "1/2", False),
    ("we get 2/4", r"\frac{1}{2}", "2/4", True),
    ("That comes to .25 of the pie", "1/4", ".25", True),
    # nothing to extract
    ("I am not sure how to solve this.", "5", None, False),
    ("", "5", None, False),
    (r"unclosed \boxed{12", "12", "12", True),
]


@pytest.mark.parametrize(("completion", "gold", "expected_extracted", "expected_correct"), CASES)
def test_extract_and_match(completion, gold, expected_extracted, expected_correct):
    extracted = extract_answer(completion)
    assert extracted == expected_extracted
    assert answers_match(extracted, gold) is expected_correct


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("  $18.00$ ", "18.00"),
        (r"\$1,234", "1234"),
        ("18 dollars", "18"),
        ("5 apples", "5"),
        ("3 cm", "3"),
        ("3cm", "3"),
        ("40%", "40"),
        (r"40\%", "40"),
        ("42.", "42"),
        (r"\(\dfrac{1}{2}\)", r"\frac{1}{2}"),
        ("= 7", "7"),
        (r"\left(1,2\right)", "(1,2)"),
        (r"1\!000", "1000"),
        (r"\mathrm{cm}", "cm"),
        (r"90^\circ", "90"),
        ("2x", "2x"),
        ("1,2", "1,2"),
    ],
)
def test_normalize_answer(raw, normalized):
    assert normalize_answer(raw) == normalized
    assert normalize_answer(normalized) == normalized


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("18", Fraction(18)),
        ("-5", Fraction(-5)),
        ("\u22125", Fraction(-5)),
        ("18.0", Fraction(18)),
        ("0.125", Fraction(1, 8)),
        ("1/2", Fraction(1, 2)),
        (r"\frac{3}{4}", Fraction(3, 4)),
        (r"-\frac{3}{4}", Fraction(-3, 4)),
        (r"\frac{-3}{4}", Fraction(-3, 4)),
        (r"\dfrac12", Fraction(1, 2)),
        ("1.5e3", Fraction(1500)),
        ("1 1/2", Fraction(3, 2)),
        ("1,000,000", Fraction(1_000_000)),
        ("25%", Fraction(25)),
        ("1/0", None),
        (r"\sqrt{2}", None),
        ("abc", None),
        ("1 2", None),
        ("", None),
        ("1" * 5000, None),
    ],
)
def test_parse_number(text, value):
    assert parse_number(text) == value


def test_answers_match_tolerance_and_none():
    assert answers_match(None, "5") is False
    assert answers_match("0.3333333", "1/3", rel_tol=1e-6) is True
    assert answers_match("0.33", "1/3") is False
    assert answers_match("1" + "0" * 400, "1e400") is True  # exact, no float overflow
    assert answers_match("2" + "0" * 400, "1" + "0" * 400) is False
    assert answers_match("1,000,001", "1000000") is False  # integers compare exactly
    assert answers_match("1000000.0", "1000000") is True
    assert parse_number("1e4000") is None  # exponents are capped at three digits


def test_verdicts():
    assert verify_completion(r"\boxed{18}", "18") == Verdict("18", True, "correct")
    assert verify_completion(r"\boxed{180}", "18") == Verdict("180", False, "wrong")
    assert verify_completion("no idea", "18") == Verdict(None, False, "no_answer")
    assert verify_completion(r"\boxed{18}", "18", truncated=True) == Verdict(
        "18", False, "truncated"
    )
    assert verify_completion("and then", "18", truncated=True) == Verdict(None, False, "truncated")


@pytest.mark.parametrize(
    ("answer_field", "gold"),
    [
        ("She sold 48/2 = <<48/2=24>>24 clips.\n#### 72", "72"),
        ("#### 1,000", "1000"),
        ("x\n#### -3", "-3"),
        ("#### 0.5 ", "0.5"),
        ("#### 2\n#### $18", "18"),
    ],
)
def test_gsm8k_gold(answer_field, gold):
    assert gsm8k_gold(answer_field) == gold


def test_gsm8k_gold_requires_marker():
    with pytest.raises(ValueError):
        gsm8k_gold("The answer is 5")


def test_reference_solutions_verify():
    path = GSM8K_DIR / "train.jsonl"
    if not path.exists():
        pytest.skip(f"{path} not present")
    with path.open() as lines:
        rows = [json.loads(line) for _, line in zip(range(200), lines, strict=False)]
    assert len(rows) == 200
    rejected = [
        row["answer"][-60:]
        for row in rows
        if not verify_completion(row["answer"], gsm8k_gold(row["answer"])).correct
    ]
    assert rejected == []
