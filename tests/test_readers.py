"""Data readers: GSM8K and generic JSONL parsing, format detection, limits and error messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rasft_mlx.data.readers import (
    DataError,
    DataWarning,
    detect_format,
    ends_with_boxed,
    read_generic,
    read_gsm8k,
)
from rasft_mlx.data.sources import load_problems
from rasft_mlx.data.synthetic import level_of

REAL_GSM8K_TRAIN = Path(__file__).resolve().parents[2] / "shared/data/gsm8k/train.jsonl"

GSM8K_ROW = {
    "question": "A farm has 600 cows and buys 400 more. How many cows?",
    "answer": "It has 600 + 400 = <<600+400=1000>>1000 cows.\n#### 1,000",
}
GENERIC_ROW = {"prompt": "What is 2 + 3?", "solution": "2 + 3 = 5", "answer": "5"}


def write_jsonl(path: Path, rows: list) -> Path:
    lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_gsm8k_row_strips_calculator_notes_and_boxes_the_answer(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [GSM8K_ROW])
    [problem] = read_gsm8k(path)
    assert problem.id == "gsm8k-train-1"
    assert problem.question == GSM8K_ROW["question"]
    assert problem.solution == "It has 600 + 400 = 1000 cows.\n\\boxed{1000}"
    assert problem.answer == "1000"


def test_gsm8k_ids_use_split_name_and_line_numbers(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [GSM8K_ROW, "", GSM8K_ROW])
    problems = read_gsm8k(path, split_name="test")
    assert [p.id for p in problems] == ["gsm8k-test-1", "gsm8k-test-3"]


@pytest.mark.skipif(not REAL_GSM8K_TRAIN.is_file(), reason="shared GSM8K file not present")
def test_first_fifty_real_gsm8k_rows():
    problems = read_gsm8k(REAL_GSM8K_TRAIN, limit=50)
    assert len(problems) == 50
    assert problems[0].answer == "72"
    assert problems[0].solution.endswith("72 clips altogether in April and May.\n\\boxed{72}")
    for problem in problems:
        assert "<<" not in problem.solution and "####" not in problem.solution
        assert problem.solution.endswith(f"\\boxed{{{problem.answer}}}")
        assert problem.answer.lstrip("-").replace(".", "", 1).isdigit(), problem.answer
    assert len({p.id for p in problems}) == 50


def test_generic_rows_get_a_boxed_answer_only_when_missing(tmp_path):
    rows = [
        GENERIC_ROW,
        {**GENERIC_ROW, "solution": "2 + 3 = 5, so \\boxed{5}.", "id": "mine-7"},
        {**GENERIC_ROW, "answer": 5},
    ]
    first, second, third = read_generic(write_jsonl(tmp_path / "mix.jsonl", rows))
    assert first.id == "mix-1"
    assert first.solution == "2 + 3 = 5\n\\boxed{5}"
    assert second.id == "mine-7"
    assert second.solution == "2 + 3 = 5, so \\boxed{5}."
    assert third.answer == "5"


def test_ends_with_boxed():
    assert ends_with_boxed("so \\boxed{\\frac{1}{2}}")
    assert ends_with_boxed("$\\boxed{5}$.")
    assert not ends_with_boxed("\\boxed{5} and then more text")
    assert not ends_with_boxed("\\boxed{5")
    assert not ends_with_boxed("the answer is 5")


def test_auto_detection(tmp_path):
    gsm8k = write_jsonl(tmp_path / "g.jsonl", ["", GSM8K_ROW])
    generic = write_jsonl(tmp_path / "p.jsonl", [GENERIC_ROW])
    assert detect_format(gsm8k) == "gsm8k"
    assert detect_format(generic) == "generic"
    assert load_problems(str(gsm8k))[0].answer == "1000"
    assert load_problems(str(generic))[0].solution.endswith("\\boxed{5}")
    unknown = write_jsonl(tmp_path / "u.jsonl", [{"text": "hello"}])
    with pytest.raises(DataError, match=r"u\.jsonl:1: cannot detect the format"):
        load_problems(str(unknown))


def test_explicit_format_overrides_detection(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [GENERIC_ROW])
    with pytest.raises(DataError, match="missing key 'question'"):
        load_problems(str(path), fmt="gsm8k")
    with pytest.raises(DataError, match="unknown data format"):
        load_problems(str(path), fmt="csv")


def test_limit(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [GSM8K_ROW] * 5)
    assert len(load_problems(str(path), limit=2)) == 2
    assert len(read_generic(write_jsonl(tmp_path / "p.jsonl", [GENERIC_ROW] * 3), limit=1)) == 1
    assert load_problems(str(path), limit=0) == []
    assert len(load_problems("synthetic", limit=3)) == 3


def test_synthetic_source_uses_split_sizes_and_settings():
    settings = {"seed": 5, "n_train": 12, "n_test": 4, "min_level": 0, "max_level": 1}
    train = load_problems("synthetic", split="train", synthetic=settings)
    test = load_problems("synthetic", split="test", synthetic=settings)
    assert len(train) == 12 and len(test) == 4
    assert {level_of(p) for p in train} == {0, 1}
    assert not {p.question for p in train} & {p.question for p in test}
    with pytest.raises(DataError, match="unknown synthetic settings"):
        load_problems("synthetic", synthetic={"n_trian": 3})


def test_hf_source_must_name_a_file():
    with pytest.raises(DataError, match="hf://OWNER/REPO"):
        load_problems("hf://only-owner/repo")


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nowhere.jsonl"
    with pytest.raises(DataError, match="file not found") as info:
        load_problems(str(path))
    assert str(path) in str(info.value)


def test_empty_file_names_the_path(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n  \n", encoding="utf-8")
    for read in (read_gsm8k, read_generic, lambda p: load_problems(str(p))):
        with pytest.raises(DataError, match="empty") as info:
            read(path)
        assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("lines", "reader", "expected"),
    [
        ([GSM8K_ROW, "", '{"question": "q", "answer": '], read_gsm8k, ":3: invalid JSON ("),
        ([GSM8K_ROW, {"question": "q"}], read_gsm8k, ":2: missing key 'answer' (expected keys:"),
        ([{"question": "q", "answer": "42"}], read_gsm8k, ":1: no '#### N' final answer"),
        ([GSM8K_ROW, "[1, 2]"], read_gsm8k, ":2: expected a JSON object"),
        ([GENERIC_ROW, {"prompt": "p", "answer": "1"}], read_generic, ":2: missing key 'solution'"),
        ([{**GENERIC_ROW, "prompt": 3}], read_generic, ":1: key 'prompt' must be a string"),
        ([{**GENERIC_ROW, "id": "a"}, {**GENERIC_ROW, "id": "a"}], read_generic, ":2: duplicate"),
        ([{**GENERIC_ROW, "answer": " "}], read_generic, ":1: empty answer"),
    ],
)
def test_row_errors_name_path_and_line(tmp_path, lines, reader, expected):
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError) as info:
        reader(path)
    assert f"{path}{expected}" in str(info.value)


def write_rows(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_math_style_rows_take_the_last_boxed_answer_and_skip_rows_without_one(tmp_path):
    path = write_rows(
        tmp_path / "math.jsonl",
        [
            {
                "problem": "Simplify 2/4.",
                "solution": "We get $\\boxed{1}$ then $\\boxed{\\frac{1}{2}}$.",
            },
            {"problem": "No answer here.", "solution": "It is left as an exercise."},
            {"problem": "Root?", "solution": "So $x = \\boxed{\\sqrt{2}}$."},
        ],
    )
    assert detect_format(path) == "math"
    with pytest.warns(DataWarning, match=r"skipped 1 rows .*'solution'.*lines 2$"):
        problems = load_problems(str(path))
    assert [p.answer for p in problems] == ["\\frac{1}{2}", "\\sqrt{2}"]
    assert problems[0].question == "Simplify 2/4." and problems[1].id == "math-3"


def test_the_authors_instruction_response_file(tmp_path):
    rows = [{"instruction": f"Q{i}", "response": f"Work... \\boxed{{{i}}}"} for i in range(3)]
    rows.append({"instruction": "Q3", "response": "no box"})
    path = write_rows(tmp_path / "numina_cot_10k.jsonl", rows)
    assert detect_format(path) == "authors"
    with pytest.warns(DataWarning, match="skipped 1 rows"):
        problems = load_problems(str(path), fmt="authors")
    assert [(p.question, p.answer) for p in problems] == [("Q0", "0"), ("Q1", "1"), ("Q2", "2")]


def test_chat_messages_rows(tmp_path):
    path = write_rows(
        tmp_path / "chat.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "What is 6 * 7?"},
                    {"role": "assistant", "content": "6 * 7 = 42.\n#### 42"},
                ]
            },
            {"messages": [{"role": "user", "content": "Hi"}]},
            {
                "messages": [
                    {"role": "user", "content": "1 + 1?"},
                    {"role": "assistant", "content": "\\boxed{2}"},
                ]
            },
        ],
    )
    assert detect_format(path) == "messages"
    with pytest.warns(DataWarning, match="skipped 1 rows"):
        problems = load_problems(str(path))
    assert [(p.question, p.answer) for p in problems] == [("What is 6 * 7?", "42"), ("1 + 1?", "2")]
    assert problems[0].solution.endswith("\\boxed{42}")


def test_skip_summary_names_the_first_few_lines(tmp_path):
    rows = [{"problem": f"P{i}", "solution": "none"} for i in range(8)]
    rows.append({"problem": "P8", "solution": "\\boxed{8}"})
    path = write_rows(tmp_path / "m.jsonl", rows)
    with pytest.warns(DataWarning, match=r"skipped 8 rows .*lines 1, 2, 3, 4, 5 and 3 more"):
        assert len(load_problems(str(path), fmt="math")) == 1
