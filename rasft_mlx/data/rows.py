"""Rows of a data source, each with its position, and the error every reader raises: a JSONL file
(1-based line numbers) or a `datasets` split (1-based row numbers), named the same way in errors."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path


class DataError(ValueError):
    """A data source that cannot be read into problems; the message names the file and line."""


class DataWarning(UserWarning):
    """Rows skipped while reading (no extractable answer), summarised once per source."""


@dataclass(frozen=True)
class RowSource:
    """Rows as (position, mapping). `label` names the source in messages, `stem` prefixes the
    default problem ids, and `unit` is "line" (a file: label:7) or "row" (a dataset: label row 7)."""

    label: str
    stem: str
    rows: Iterable[tuple[int, dict]]
    unit: str = "line"

    def where(self, position: int) -> str:
        return f"{self.label}:{position}" if self.unit == "line" else f"{self.label} row {position}"

    def positions(self, positions: list[int]) -> str:
        return f"{self.unit}s " + ", ".join(str(p) for p in positions)


def jsonl_rows(path: str | Path) -> RowSource:
    """A JSONL file's rows; errors name the path and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return RowSource(str(path), path.stem, _parse_jsonl(path))


def as_row_source(source: RowSource | str | Path) -> RowSource:
    return source if isinstance(source, RowSource) else jsonl_rows(source)


def _parse_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
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


def limited(rows: Iterable[tuple[int, dict]], limit: int | None) -> Iterator[tuple[int, dict]]:
    """The first `limit` rows (all when None)."""
    if limit is not None and limit < 0:
        raise DataError(f"limit must be >= 0, got {limit}")
    if limit == 0:
        return
    for count, item in enumerate(rows, start=1):
        yield item
        if limit is not None and count >= limit:
            return


def require_keys(source: RowSource, position: int, row: dict, keys: tuple[str, ...]) -> None:
    for key in keys:
        if key not in row:
            raise DataError(
                f"{source.where(position)}: missing key {key!r} (expected keys: "
                f"{', '.join(keys)}; the row has {', '.join(sorted(map(str, row)))})"
            )


def require_text(
    source: RowSource, position: int, row: dict, key: str, *, allow_number: bool = False
) -> str:
    value = row[key]
    if allow_number and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise DataError(f"{source.where(position)}: key {key!r} must be a string, got {value!r}")
    return value
