"""Rows of a dataset read with the `datasets` library: a Hub id, a local dataset directory or data
files (parquet, JSONL, CSV, arrow), one split, optionally sliced. Row numbers stay those of the
whole split, so a slice's problem ids equal the full split's."""

from __future__ import annotations

import re
from pathlib import Path

from rasft_mlx.data.rows import DataError, RowSource
from rasft_mlx.recipe.dataset_config import DatasetSource

INSTALL_HINT = "pip install datasets"
# Local files the `datasets` builders read, by suffix.
FILE_BUILDERS = {".parquet": "parquet", ".csv": "csv", ".arrow": "arrow", ".tsv": "csv"}
_SPLIT = re.compile(r"^([\w.-]+)(?:\[\s*(-?\d+%?)?\s*:\s*(-?\d+%?)?\s*\])?$")


def parse_split(split: str) -> tuple[str, str | None, str | None]:
    """("test", "10", "20%") from "test[10:20%]"; bounds are None where not given."""
    match = _SPLIT.match(split.strip())
    if not match:
        raise DataError(
            f"split {split!r}: expected NAME or NAME[start:stop] (rows or percents), "
            "e.g. test, test[:200], train[10%:20%]"
        )
    return match.group(1), match.group(2), match.group(3)


def slice_bounds(start: str | None, stop: str | None, size: int) -> range:
    """The rows a split slice selects, as Python slices do (negative counts from the end);
    percents round to the nearest row."""

    def resolve(bound: str | None, default: int) -> int:
        if bound is None:
            return default
        value = round(float(bound[:-1]) * size / 100) if bound.endswith("%") else int(bound)
        return value + size if value < 0 else value

    return range(size)[slice(resolve(start, 0), resolve(stop, size))]


def describe(spec: DatasetSource) -> str:
    config = f" ({spec.config})" if spec.config else ""
    files = f" {spec.data_files}" if spec.data_files and spec.hub in FILE_BUILDERS.values() else ""
    return f"{spec.hub}{config}{files} {spec.split}"


def dataset_rows(spec: DatasetSource) -> RowSource:
    """The rows of `spec`'s split through `datasets.load_dataset`; errors name the dataset."""
    try:
        import datasets
    except ImportError as exc:
        raise DataError(
            f"{spec.hub}: reading Hugging Face datasets needs the `datasets` package "
            f"({INSTALL_HINT})"
        ) from exc
    split_name, start, stop = parse_split(spec.split)
    label = describe(spec)
    data_files = spec.data_files
    if isinstance(data_files, tuple):
        data_files = list(data_files)
    if data_files is not None:
        data_files = {split_name: data_files}
    try:
        dataset = datasets.load_dataset(
            spec.hub,
            spec.config,
            split=split_name,
            data_files=data_files,
            revision=spec.revision,
        )
    except (ValueError, FileNotFoundError, ConnectionError, OSError) as exc:
        raise DataError(f"{label}: cannot load the dataset: {_reason(exc)}") from exc
    rows = slice_bounds(start, stop, len(dataset))
    if len(rows) == 0:
        raise DataError(f"{label}: the split has no rows ({len(dataset)} before slicing)")
    if len(rows) < len(dataset):
        dataset = dataset.select(rows)
    return RowSource(label, split_name, _numbered(dataset, rows.start), unit="row")


def file_rows(path: Path) -> RowSource:
    """A local parquet, CSV or arrow file, read by the `datasets` builder for its suffix."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    spec = DatasetSource(hub=FILE_BUILDERS[path.suffix.lower()], data_files=str(path))
    source = dataset_rows(spec)
    return RowSource(str(path), path.stem, source.rows, unit="row")


def _numbered(dataset, first_row: int):
    for index, row in enumerate(dataset):
        yield first_row + index + 1, row


def _reason(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, ConnectionError) or "offline" in text.lower():
        text += (
            " (not in the local cache and the Hub is unreachable: run once with network access,"
            " or unset HF_HUB_OFFLINE)"
        )
    return text
