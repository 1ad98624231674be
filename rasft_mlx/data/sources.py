"""Where problems come from: 'synthetic', a named benchmark, an hf:// JSONL file, a local file
(JSONL, parquet, CSV, arrow) or a `datasets` source, read in its format and given its grader."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rasft_mlx.data.hub_datasets import FILE_BUILDERS, dataset_rows, file_rows
from rasft_mlx.data.problem import Problem
from rasft_mlx.data.readers import (
    BOXED_FORMATS,
    detect_format,
    read_boxed,
    read_columns,
    read_generic,
    read_gsm8k,
    read_messages,
)
from rasft_mlx.data.rows import DataError, RowSource, jsonl_rows
from rasft_mlx.data.synthetic import generate_problems
from rasft_mlx.recipe.dataset_config import (
    FORMATS,
    GRADERS,
    SYNTHETIC_SOURCES,
    ColumnsConfig,
    DatasetSource,
)

SYNTHETIC_DEFAULTS = {
    "seed": 0,
    "n_train": 2000,
    "n_test": 200,
    "min_level": 1,
    "max_level": 3,
    "n_ood": 500,
    "n_validation": 200,
    "ood_min_level": 2,
    "ood_max_level": 4,
    "n_retention": 500,
    "retention_min_level": 1,
    "retention_max_level": 2,
    "extra_steps": 0,
    "solution_styles": 1,
    "style_per_line": False,
}
# Formats whose answers are LaTeX (graded by math-verify under grader "auto").
LATEX_FORMATS = ("math", "authors")

# Benchmarks by name, as `rasft-mlx eval --data gsm8k,math500` and recipes take them.
BENCHMARKS: dict[str, DatasetSource] = {
    "gsm8k": DatasetSource(hub="openai/gsm8k", config="main", split="test", format="gsm8k"),
    "math500": DatasetSource(
        hub="HuggingFaceH4/MATH-500",
        split="test",
        format="math",
        columns=ColumnsConfig(
            question="problem", solution="solution", answer="answer", id="unique_id"
        ),
    ),
    "aime24": DatasetSource(
        hub="HuggingFaceH4/aime_2024",
        split="train",
        format="math",
        columns=ColumnsConfig(question="problem", solution="solution", answer="answer", id="id"),
    ),
}


def load_problems(
    source: str | DatasetSource,
    *,
    fmt: str = "auto",
    limit: int | None = None,
    split: str = "train",
    synthetic: dict | None = None,
    grader: str = "auto",
) -> list[Problem]:
    """Problems from any data source the recipe accepts (see `dataset_config.SOURCE_HELP`).

    fmt "auto" picks the format from the first row's keys; a source's own `format` or `columns`
    win over `fmt`. `synthetic` holds the generator settings, n_train or n_test by `split`.
    grader "auto": math-verify for LaTeX formats (math, authors), builtin otherwise.
    """
    if fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r}; expected one of {FORMATS}")
    if grader not in GRADERS:
        raise DataError(f"unknown grader {grader!r}; expected one of {GRADERS}")
    if isinstance(source, str) and (source in SYNTHETIC_SOURCES or fmt == "synthetic"):
        split = SYNTHETIC_SOURCES.get(source) or split
        problems = _synthetic_problems(split, synthetic)[:limit]
        return _graded(problems, "builtin" if grader == "auto" else grader)
    spec = resolve_source(source)
    if isinstance(spec, DatasetSource):
        rows = dataset_rows(spec)
        fmt = spec.format or fmt
        columns = spec.columns
    else:
        rows = _file_rows(spec)
        columns = ColumnsConfig()
    if columns != ColumnsConfig():
        problems = read_columns(rows, columns, limit=limit)
    else:
        fmt, rows = _resolved_format(fmt, rows)
        problems = _read_format(fmt, rows, limit)
    if grader == "auto":
        grader = "math-verify" if fmt in LATEX_FORMATS else "builtin"
    return _graded(problems, grader)


def resolve_source(source: str | DatasetSource) -> DatasetSource | str:
    """A named benchmark (when no such file exists) becomes its DatasetSource; files stay."""
    if isinstance(source, DatasetSource):
        return source
    if source in BENCHMARKS and not Path(source).exists():
        return BENCHMARKS[source]
    return source


def _file_rows(source: str) -> RowSource:
    if source.startswith("hf://"):
        return jsonl_rows(_download_from_hub(source))
    path = Path(source)
    if path.suffix.lower() in FILE_BUILDERS:
        return file_rows(path)
    if not path.exists() and "/" not in source and "." not in source:
        raise DataError(
            f"{source}: no such file, and not a named benchmark ({', '.join(BENCHMARKS)}) "
            "or synthetic, synthetic-ood; "
            "for a Hub dataset write {hub: OWNER/NAME, split: ...}"
        )
    return jsonl_rows(path)


def _resolved_format(fmt: str, rows: RowSource) -> tuple[str, RowSource]:
    """The format (detected from the first row when "auto"), and rows that still start there."""
    if fmt != "auto":
        return fmt, rows
    iterator = iter(rows.rows)
    first = next(iterator, None)
    if first is None:
        raise DataError(f"{rows.label}: no rows")
    peeked = dataclasses.replace(rows, rows=_chain(first, iterator))
    return detect_format(dataclasses.replace(rows, rows=[first])), peeked


def _chain(first, rest):
    yield first
    yield from rest


def _read_format(fmt: str, rows: RowSource, limit: int | None) -> list[Problem]:
    if fmt == "gsm8k":
        return read_gsm8k(rows, limit=limit)
    if fmt in BOXED_FORMATS:
        return read_boxed(rows, *BOXED_FORMATS[fmt], limit=limit)
    if fmt == "messages":
        return read_messages(rows, limit=limit)
    return read_generic(rows, limit=limit)


def _graded(problems: list[Problem], grader: str) -> list[Problem]:
    return [dataclasses.replace(p, grader=grader) for p in problems]


def _synthetic_problems(split: str, settings: dict | None) -> list[Problem]:
    if dataclasses.is_dataclass(settings):
        settings = dataclasses.asdict(settings)
    merged = {**SYNTHETIC_DEFAULTS, **(settings or {})}
    unknown = sorted(set(merged) - set(SYNTHETIC_DEFAULTS))
    if unknown:
        raise DataError(
            f"unknown synthetic settings {unknown}; known: {sorted(SYNTHETIC_DEFAULTS)}"
        )
    if split not in ("train", "test", "ood", "validation", "retention"):
        raise DataError(
            "synthetic data has splits 'train', 'test', 'ood', 'validation' and 'retention', "
            f"not {split!r}"
        )
    levels = ("min_level", "max_level")
    if split in ("ood", "retention"):
        levels = (f"{split}_min_level", f"{split}_max_level")
    common = {
        "seed": merged["seed"],
        "min_level": merged[levels[0]],
        "max_level": merged[levels[1]],
        # the retention set is an earlier stage's problems: the level ladder as it is
        "extra_steps": 0 if split == "retention" else merged["extra_steps"],
        "solution_styles": merged["solution_styles"],
        "style_per_line": merged["style_per_line"],
    }
    try:
        exclude: frozenset[str] = frozenset()
        if split == "validation":
            training = generate_problems(merged["n_train"], split="train", **common)
            exclude = frozenset(p.question for p in training)
        if split == "retention":  # test-split questions of other levels (an earlier stage's)
            return generate_problems(merged["n_retention"], split="test", **common)
        return generate_problems(merged[f"n_{split}"], split=split, exclude=exclude, **common)
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
