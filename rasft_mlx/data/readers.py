"""Format readers: rows of a source (a JSONL file or a `datasets` split) into Problems, for GSM8K,
generic, MATH-style, the authors' instruction/response, chat messages, or any columns by mapping."""

from __future__ import annotations

import re
import warnings

from rasft_mlx.data.problem import Problem
from rasft_mlx.data.rows import (
    DataError,
    DataWarning,
    RowSource,
    as_row_source,
    limited,
    require_keys,
    require_text,
)
from rasft_mlx.data.verify import last_boxed
from rasft_mlx.recipe.dataset_config import ColumnsConfig

__all__ = ["DataError", "DataWarning"]  # re-exported: every reader raises and warns with these

GSM8K_KEYS = ("question", "answer")
GENERIC_KEYS = ("prompt", "solution", "answer")
# Formats whose answer is the last \boxed{} of the solution: (question key, solution key).
BOXED_FORMATS = {"math": ("problem", "solution"), "authors": ("instruction", "response")}
MESSAGES_KEYS = ("messages",)
SKIPPED_SHOWN = 5

_CALCULATOR_NOTE = re.compile(r"<<[^<>]*>>")
_TRAILING_AFTER_BOXED = re.compile(r"[\s.$\\\]]*")


def read_gsm8k(
    source: RowSource | str, *, limit: int | None = None, split_name: str | None = None
) -> list[Problem]:
    """GSM8K rows {question, answer: "reasoning ... #### N"}; ids gsm8k-{split_name or stem}-{n}."""
    source = as_row_source(source)
    prefix = f"gsm8k-{split_name or source.stem}"
    problems = []
    for position, row in limited(source.rows, limit):
        require_keys(source, position, row, GSM8K_KEYS)
        question = require_text(source, position, row, "question")
        solution, answer = _gsm8k_solution(require_text(source, position, row, "answer"))
        if answer is None:
            raise DataError(f"{source.where(position)}: no '#### N' final answer")
        problems.append(Problem(f"{prefix}-{position}", question.strip(), solution, answer))
    return problems


def _gsm8k_solution(text: str) -> tuple[str, str | None]:
    """(the reasoning without calculator notes + \\boxed{N}, N) of "reasoning #### N"."""
    reasoning, marker, final = text.rpartition("####")
    answer = final.strip().replace(",", "")
    if not marker or not answer:
        return text, None
    demo = _CALCULATOR_NOTE.sub("", reasoning).strip()
    return (f"{demo}\n\\boxed{{{answer}}}" if demo else f"\\boxed{{{answer}}}"), answer


def read_generic(source: RowSource | str, *, limit: int | None = None) -> list[Problem]:
    """Rows {prompt, solution, answer, optional id}; a missing final \\boxed{answer} is appended."""
    source = as_row_source(source)
    problems = []
    seen_ids: set[str] = set()
    for position, row in limited(source.rows, limit):
        require_keys(source, position, row, GENERIC_KEYS)
        prompt = require_text(source, position, row, "prompt")
        solution = require_text(source, position, row, "solution").strip()
        answer = require_text(source, position, row, "answer", allow_number=True).strip()
        if not answer:
            raise DataError(f"{source.where(position)}: empty answer")
        problem_id = _row_id(source, position, row, "id", seen_ids)
        problems.append(Problem(problem_id, prompt.strip(), _with_boxed(solution, answer), answer))
    return problems


def read_columns(
    source: RowSource | str, columns: ColumnsConfig, *, limit: int | None = None
) -> list[Problem]:
    """Rows read through a column mapping: the question column, the solution column, and the
    answer column or else the solution's last \\boxed{} (or GSM8K '#### N'). Rows without an
    answer are skipped and summarised in one warning."""
    source = as_row_source(source)
    if columns.question is None:
        raise DataError(f"{source.label}: columns.question is required with a column mapping")
    if columns.solution is None and columns.answer is None:
        raise DataError(f"{source.label}: the column mapping needs columns.solution or .answer")
    wanted = tuple(c for c in (columns.question, columns.solution, columns.answer) if c)
    problems, skipped = [], []
    seen_ids: set[str] = set()
    for position, row in limited(source.rows, limit):
        require_keys(source, position, row, wanted)
        question = require_text(source, position, row, columns.question).strip()
        solution = ""
        if columns.solution:
            solution = require_text(source, position, row, columns.solution).strip()
        if columns.answer:
            answer = require_text(source, position, row, columns.answer, allow_number=True)
            if "####" in answer:
                answer = _gsm8k_solution(answer)[1] or ""
        elif "####" in solution:
            solution, answer = _gsm8k_solution(solution)
        else:
            answer = last_boxed(solution) or ""
        if not answer.strip():
            skipped.append(position)
            continue
        answer = answer.strip()
        problem_id = _row_id(source, position, row, columns.id, seen_ids)
        problems.append(Problem(problem_id, question, _with_boxed(solution, answer), answer))
    _warn_skipped(source, skipped, "no final answer")
    return problems


def _with_boxed(solution: str, answer: str) -> str:
    if ends_with_boxed(solution):
        return solution
    return f"{solution}\n\\boxed{{{answer}}}" if solution else f"\\boxed{{{answer}}}"


def _row_id(source: RowSource, position: int, row: dict, key: str | None, seen: set[str]) -> str:
    """The row's id column when it has one (unique within the source), else STEM-POSITION."""
    if key is not None and row.get(key) is not None:
        problem_id = str(row[key])
        if problem_id in seen:
            raise DataError(f"{source.where(position)}: duplicate id {problem_id!r}")
        seen.add(problem_id)
        return problem_id
    return f"{source.stem}-{position}"


def read_boxed(
    source: RowSource | str, question_key: str, solution_key: str, *, limit: int | None = None
) -> list[Problem]:
    """Rows {question_key, solution_key} whose answer is the solution's last \\boxed{}: MATH
    (problem / solution) or the authors' training file (instruction / response). Rows without a
    boxed answer are skipped and summarised in one warning."""
    source = as_row_source(source)
    problems, skipped = [], []
    seen_ids: set[str] = set()
    for position, row in limited(source.rows, limit):
        require_keys(source, position, row, (question_key, solution_key))
        question = require_text(source, position, row, question_key).strip()
        solution = require_text(source, position, row, solution_key).strip()
        answer = last_boxed(solution)
        if not answer or not answer.strip():
            skipped.append(position)
            continue
        problem_id = _row_id(source, position, row, "id", seen_ids)
        problems.append(Problem(problem_id, question, solution, answer.strip()))
    _warn_skipped(source, skipped, f"no \\boxed{{}} answer in {solution_key!r}")
    return problems


def read_messages(source: RowSource | str, *, limit: int | None = None) -> list[Problem]:
    """Chat rows {messages: [{role, content}, ...]}: the first user message is the question, the
    last assistant message the solution, its last \\boxed{} (or GSM8K '#### N') the answer."""
    source = as_row_source(source)
    problems, skipped = [], []
    seen_ids: set[str] = set()
    for position, row in limited(source.rows, limit):
        require_keys(source, position, row, MESSAGES_KEYS)
        messages = row["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise DataError(
                f"{source.where(position)}: 'messages' must be a list of {{role, content}}"
            )
        users = [m.get("content") for m in messages if m.get("role") == "user"]
        replies = [m.get("content") for m in messages if m.get("role") == "assistant"]
        if not users or not replies or not all(isinstance(x, str) for x in users + replies):
            skipped.append(position)
            continue
        solution = replies[-1].strip()
        answer = last_boxed(solution)
        if answer is None and "####" in solution:
            solution, answer = _gsm8k_solution(solution)
        if not answer or not answer.strip():
            skipped.append(position)
            continue
        problem_id = _row_id(source, position, row, "id", seen_ids)
        problems.append(Problem(problem_id, users[0].strip(), solution, answer.strip()))
    _warn_skipped(source, skipped, "no user question, assistant answer or final answer")
    return problems


def _warn_skipped(source: RowSource, positions: list[int], reason: str) -> None:
    if positions:
        shown = source.positions(positions[:SKIPPED_SHOWN])
        more = (
            f" and {len(positions) - SKIPPED_SHOWN} more" if len(positions) > SKIPPED_SHOWN else ""
        )
        warnings.warn(
            f"{source.label}: skipped {len(positions)} rows ({reason}): {shown}{more}",
            DataWarning,
            stacklevel=3,
        )


def detect_format(source: RowSource | str) -> str:
    """The format whose keys the first row has: gsm8k, generic, math, authors or messages."""
    source = as_row_source(source)
    position, row = next(iter(source.rows))
    if all(key in row for key in GSM8K_KEYS):
        return "gsm8k"
    if all(key in row for key in GENERIC_KEYS):
        return "generic"
    for fmt, keys in BOXED_FORMATS.items():
        if all(key in row for key in keys):
            return fmt
    if "messages" in row:
        return "messages"
    expected = [f"{list(GSM8K_KEYS)} (gsm8k)", f"{list(GENERIC_KEYS)} (generic)"]
    expected += [f"{list(keys)} ({fmt})" for fmt, keys in BOXED_FORMATS.items()]
    expected.append("['messages'] (messages)")
    raise DataError(
        f"{source.where(position)}: cannot detect the format from keys {sorted(row)}; expected "
        + ", ".join(expected)
        + ", or map the columns with {hub: ..., columns: {question: ..., answer: ...}}"
    )


def ends_with_boxed(text: str) -> bool:
    """Whether the text's last \\boxed{...} is complete and only punctuation/space follows it."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return False
    depth = 0
    for index in range(start + len("\\boxed"), len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return _TRAILING_AFTER_BOXED.fullmatch(text, index + 1) is not None
    return False
