"""Readers that turn JSONL files (GSM8K, generic, MATH-style, the authors' instruction/response,
chat messages), hf:// files or synthetic data into Problems."""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

from rasft_mlx.data.problem import Problem
from rasft_mlx.data.synthetic import generate_problems
from rasft_mlx.data.verify import last_boxed

FORMATS = ("auto", "gsm8k", "generic", "math", "authors", "messages", "synthetic")
GSM8K_KEYS = ("question", "answer")
GENERIC_KEYS = ("prompt", "solution", "answer")
# Formats whose answer is the last \boxed{} of the solution: (question key, solution key).
BOXED_FORMATS = {"math": ("problem", "solution"), "authors": ("instruction", "response")}
MESSAGES_KEYS = ("messages",)
SKIPPED_SHOWN = 5
SYNTHETIC_DEFAULTS = {"seed": 0, "n_train": 2000, "n_test": 200, "min_level": 1, "max_level": 3}

_CALCULATOR_NOTE = re.compile(r"<<[^<>]*>>")
_TRAILING_AFTER_BOXED = re.compile(r"[\s.$\\\]]*")


class DataError(ValueError):
    """A data source that cannot be read into problems; the message names the file and line."""


class DataWarning(UserWarning):
    """Rows skipped while reading (no extractable answer), summarised once per file."""


def read_gsm8k(
    path: str | Path, *, limit: int | None = None, split_name: str | None = None
) -> list[Problem]:
    """GSM8K rows {question, answer: "reasoning ... #### N"}; ids gsm8k-{split_name or stem}-{line}."""
    path = Path(path)
    prefix = f"gsm8k-{split_name or path.stem}"
    problems = []
    for line_no, row in _limited(_read_rows(path), limit):
        _require_keys(path, line_no, row, GSM8K_KEYS)
        question = _require_text(path, line_no, row, "question")
        reasoning, marker, final = _require_text(path, line_no, row, "answer").rpartition("####")
        answer = final.strip().replace(",", "")
        if not marker or not answer:
            raise DataError(f"{path}:{line_no}: no '#### N' final answer")
        demo = _CALCULATOR_NOTE.sub("", reasoning).strip()
        solution = f"{demo}\n\\boxed{{{answer}}}" if demo else f"\\boxed{{{answer}}}"
        problems.append(Problem(f"{prefix}-{line_no}", question.strip(), solution, answer))
    return problems


def read_generic(path: str | Path, *, limit: int | None = None) -> list[Problem]:
    """Rows {prompt, solution, answer, optional id}; a missing final \\boxed{answer} is appended."""
    path = Path(path)
    problems = []
    seen_ids: set[str] = set()
    for line_no, row in _limited(_read_rows(path), limit):
        _require_keys(path, line_no, row, GENERIC_KEYS)
        prompt = _require_text(path, line_no, row, "prompt")
        solution = _require_text(path, line_no, row, "solution").strip()
        answer = _require_text(path, line_no, row, "answer", allow_number=True).strip()
        if not answer:
            raise DataError(f"{path}:{line_no}: empty answer")
        problem_id = str(row["id"]) if row.get("id") is not None else f"{path.stem}-{line_no}"
        if problem_id in seen_ids:
            raise DataError(f"{path}:{line_no}: duplicate id {problem_id!r}")
        seen_ids.add(problem_id)
        if not ends_with_boxed(solution):
            solution = f"{solution}\n\\boxed{{{answer}}}" if solution else f"\\boxed{{{answer}}}"
        problems.append(Problem(problem_id, prompt.strip(), solution, answer))
    return problems


def load_problems(
    source: str,
    *,
    fmt: str = "auto",
    limit: int | None = None,
    split: str = "train",
    synthetic: dict | None = None,
) -> list[Problem]:
    """Problems from 'synthetic', an hf://OWNER/REPO/path/in/repo.jsonl file or a local JSONL path.

    fmt "auto" picks gsm8k or generic from the keys of the first row; `synthetic` holds the
    generator settings (seed, n_train, n_test, min_level, max_level), n_train or n_test by split.
    """
    if fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r}; expected one of {FORMATS}")
    if source == "synthetic" or fmt == "synthetic":
        return _limited_list(_synthetic_problems(split, synthetic), limit)
    path = _download_from_hub(source) if source.startswith("hf://") else Path(source)
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "gsm8k":
        return read_gsm8k(path, limit=limit)
    if fmt in BOXED_FORMATS:
        return read_boxed(path, *BOXED_FORMATS[fmt], limit=limit)
    if fmt == "messages":
        return read_messages(path, limit=limit)
    return read_generic(path, limit=limit)


def read_boxed(
    path: str | Path, question_key: str, solution_key: str, *, limit: int | None = None
) -> list[Problem]:
    """Rows {question_key, solution_key} whose answer is the solution's last \\boxed{}: MATH
    (problem / solution) or the authors' training file (instruction / response). Rows without a
    boxed answer are skipped and summarised in one warning."""
    path = Path(path)
    problems, skipped = [], []
    for line_no, row in _limited(_read_rows(path), limit):
        _require_keys(path, line_no, row, (question_key, solution_key))
        question = _require_text(path, line_no, row, question_key).strip()
        solution = _require_text(path, line_no, row, solution_key).strip()
        answer = last_boxed(solution)
        if not answer or not answer.strip():
            skipped.append(line_no)
            continue
        problem_id = str(row["id"]) if row.get("id") is not None else f"{path.stem}-{line_no}"
        problems.append(Problem(problem_id, question, solution, answer.strip()))
    _warn_skipped(path, skipped, f"no \\boxed{{}} answer in {solution_key!r}")
    return problems


def read_messages(path: str | Path, *, limit: int | None = None) -> list[Problem]:
    """Chat rows {messages: [{role, content}, ...]}: the first user message is the question, the
    last assistant message the solution, its last \\boxed{} (or GSM8K '#### N') the answer."""
    path = Path(path)
    problems, skipped = [], []
    for line_no, row in _limited(_read_rows(path), limit):
        _require_keys(path, line_no, row, MESSAGES_KEYS)
        messages = row["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            raise DataError(f"{path}:{line_no}: 'messages' must be a list of {{role, content}}")
        users = [m.get("content") for m in messages if m.get("role") == "user"]
        replies = [m.get("content") for m in messages if m.get("role") == "assistant"]
        if not users or not replies or not all(isinstance(x, str) for x in users + replies):
            skipped.append(line_no)
            continue
        solution = replies[-1].strip()
        answer = last_boxed(solution)
        if answer is None and "####" in solution:
            reasoning, _, answer = solution.rpartition("####")
            answer = answer.strip().replace(",", "")
            solution = f"{reasoning.strip()}\n\\boxed{{{answer}}}"
        if not answer or not answer.strip():
            skipped.append(line_no)
            continue
        problem_id = str(row["id"]) if row.get("id") is not None else f"{path.stem}-{line_no}"
        problems.append(Problem(problem_id, users[0].strip(), solution, answer.strip()))
    _warn_skipped(path, skipped, "no user question, assistant answer or final answer")
    return problems


def _warn_skipped(path: Path, lines: list[int], reason: str) -> None:
    if lines:
        shown = ", ".join(str(n) for n in lines[:SKIPPED_SHOWN])
        more = f" and {len(lines) - SKIPPED_SHOWN} more" if len(lines) > SKIPPED_SHOWN else ""
        warnings.warn(
            f"{path}: skipped {len(lines)} rows ({reason}): lines {shown}{more}",
            DataWarning,
            stacklevel=3,
        )


def detect_format(path: str | Path) -> str:
    """'gsm8k' (question + answer) or 'generic' (prompt + solution + answer), by the first row."""
    path = Path(path)
    line_no, row = next(_read_rows(path))
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
        f"{path}:{line_no}: cannot detect the format from keys {sorted(row)}; expected "
        + ", ".join(expected)
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


def _synthetic_problems(split: str, settings: dict | None) -> list[Problem]:
    if dataclasses.is_dataclass(settings):
        settings = dataclasses.asdict(settings)
    merged = {**SYNTHETIC_DEFAULTS, **(settings or {})}
    unknown = sorted(set(merged) - set(SYNTHETIC_DEFAULTS))
    if unknown:
        raise DataError(
            f"unknown synthetic settings {unknown}; known: {sorted(SYNTHETIC_DEFAULTS)}"
        )
    if split not in ("train", "test"):
        raise DataError(f"synthetic data has splits 'train' and 'test', not {split!r}")
    try:
        return generate_problems(
            merged[f"n_{split}"],
            seed=merged["seed"],
            min_level=merged["min_level"],
            max_level=merged["max_level"],
            split=split,
        )
    except ValueError as exc:
        raise DataError(f"synthetic data: {exc}") from exc


def _download_from_hub(source: str) -> Path:
    parts = source.removeprefix("hf://").split("/", 2)
    if len(parts) < 3 or not all(parts):
        raise DataError(f"expected hf://OWNER/REPO/path/in/repo.jsonl, got {source!r}")
    repo_id, filename = f"{parts[0]}/{parts[1]}", parts[2]
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo_id, filename, repo_type="dataset"))
    except Exception as exc:  # network, auth, missing repo or file: all end the same way
        raise DataError(f"could not download {source}: {type(exc).__name__}: {exc}") from exc


def _read_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(1-based line number, JSON object) for each non-blank line; errors name path and line."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return _parse_rows(path)


def _parse_rows(path: Path) -> Iterator[tuple[int, dict]]:
    rows_seen = 0
    try:
        with path.open(encoding="utf-8-sig") as lines:
            for line_no, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(
                        f"{path}:{line_no}: invalid JSON ({exc.msg} at column {exc.colno})"
                    ) from exc
                if not isinstance(row, dict):
                    raise DataError(
                        f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}"
                    )
                rows_seen += 1
                yield line_no, row
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if rows_seen == 0:
        raise DataError(f"{path}: file is empty (no JSON rows)")


def _require_keys(path: Path, line_no: int, row: dict, keys: tuple[str, ...]) -> None:
    for key in keys:
        if key not in row:
            raise DataError(
                f"{path}:{line_no}: missing key {key!r} (expected keys: {', '.join(keys)})"
            )


def _require_text(
    path: Path, line_no: int, row: dict, key: str, *, allow_number: bool = False
) -> str:
    value = row[key]
    if allow_number and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise DataError(f"{path}:{line_no}: key {key!r} must be a string, got {value!r}")
    return value


def _limited(rows: Iterator[tuple[int, dict]], limit: int | None) -> Iterator[tuple[int, dict]]:
    if limit is not None and limit < 0:
        raise DataError(f"limit must be >= 0, got {limit}")
    if limit == 0:
        return
    for count, item in enumerate(rows, start=1):
        yield item
        if limit is not None and count >= limit:
            return


def _limited_list(problems: list[Problem], limit: int | None) -> list[Problem]:
    return [problem for _, problem in _limited(enumerate(problems), limit)]
