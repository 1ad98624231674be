"""Recipe schema of the data section: where train and test problems come from and how answers are
graded (a file path, a named benchmark, or a Hugging Face dataset with its config, split and
columns)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

from rasft_mlx.recipe.typed_fields import field_meta

DEFAULT_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."
FORMATS = ("auto", "gsm8k", "generic", "math", "authors", "messages", "synthetic")
GRADERS = ("auto", "builtin", "math-verify")
# synthetic source -> the split it always reads (None: the split asked for)
SYNTHETIC_SOURCES = {
    "synthetic": None,
    "synthetic-ood": "ood",
    "synthetic-validation": "validation",
    "synthetic-retention": "retention",
}


@dataclass(frozen=True)
class SyntheticConfig:
    seed: int = 0
    n_train: int = field(default=2000, metadata=field_meta(1))
    n_test: int = field(default=200, metadata=field_meta(1))
    min_level: int = field(default=1, metadata=field_meta(0, 5))
    max_level: int = field(default=3, metadata=field_meta(0, 5))
    n_ood: int = field(
        default=500, metadata=field_meta(1, help="size of the 'synthetic-ood' test set")
    )
    n_validation: int = field(
        default=200,
        metadata=field_meta(
            1, help="size of 'synthetic-validation': train-split questions outside n_train"
        ),
    )
    ood_min_level: int = field(default=2, metadata=field_meta(1, 5))
    ood_max_level: int = field(default=4, metadata=field_meta(1, 5))
    n_retention: int = field(
        default=500,
        metadata=field_meta(
            1, help="size of 'synthetic-retention': test questions at the retention levels"
        ),
    )
    extra_steps: int = field(
        default=0,
        metadata=field_meta(
            0,
            3,
            help="lengthen every chain by N events of its level's kinds (not the retention set)",
        ),
    )
    solution_styles: int = field(
        default=1,
        metadata=field_meta(
            1,
            5,
            help="write each solution in one of N styles (1: one text per answer, so at most "
            "one correct rollout per problem survives RASFT's near-duplicate rule)",
        ),
    )
    style_per_line: bool = field(
        default=False,
        metadata=field_meta(
            help="draw each solution line's style (and the closing's) on its own, not one "
            "style per solution: many texts per answer, as real solutions vary"
        ),
    )
    retention_min_level: int = field(default=1, metadata=field_meta(0, 5))
    retention_max_level: int = field(
        default=2,
        metadata=field_meta(0, 5, help="an earlier stage's levels, to measure forgetting"),
    )


@dataclass(frozen=True)
class ColumnsConfig:
    """Which of a dataset's columns hold the question, the expert solution, the final answer and
    the id; the answer defaults to the solution's last \\boxed{} (or its GSM8K '#### N')."""

    question: str | None = None
    solution: str | None = None
    answer: str | None = None
    id: str | None = None


@dataclass(frozen=True)
class DatasetSource:
    """A dataset read with the `datasets` library: `load_dataset(hub, config, data_files=...,
    revision=...)[split]`, cached as that library caches (works offline once cached)."""

    hub: str = field(
        default="",
        metadata=field_meta(
            help="Hub dataset id (openai/gsm8k), a local dataset directory, or a builder "
            "(json, csv, parquet, arrow) with data_files"
        ),
    )
    config: str | None = field(default=None, metadata=field_meta(help="the dataset's config"))
    split: str = field(
        default="train",
        metadata=field_meta(help="split, optionally sliced: test[:200], train[10%:20%]"),
    )
    data_files: str | tuple[str, ...] | None = field(
        default=None, metadata=field_meta(help="files inside the repo or local paths")
    )
    revision: str | None = None
    format: str | None = field(
        default=None,
        metadata=field_meta(choices=FORMATS, help="null: data.format; ignored with columns"),
    )
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)


SOURCE_HELP = (
    "JSONL/parquet/CSV path, hf://OWNER/REPO/FILE.jsonl, a named benchmark (gsm8k, math500, "
    "aime24), 'synthetic' ('synthetic-ood': other names, objects, phrasings, larger numbers), or {hub: ID, config: ..., split: ..., columns: {...}}"
)


@dataclass(frozen=True)
class DataConfig:
    train: str | DatasetSource = field(default="synthetic", metadata=field_meta(help=SOURCE_HELP))
    test: str | DatasetSource = field(
        default="synthetic", metadata=field_meta(help="same forms as train")
    )
    validation: str | DatasetSource | None = field(
        default=None,
        metadata=field_meta(
            help="the validation set of eval.val_every (same forms as train; 'synthetic': "
            "synthetic-validation); never the test set"
        ),
    )
    validation_fraction: float = field(
        default=0.0,
        metadata=field_meta(
            0.0,
            0.9,
            help="without data.validation: hold out this share of the train problems (by "
            "training.seed, after max_train) as the validation set; they are not trained on",
        ),
    )
    format: str = field(default="auto", metadata=field_meta(choices=FORMATS))
    grader: str = field(
        default="auto",
        metadata=field_meta(
            choices=GRADERS,
            help="auto: math-verify for LaTeX (math, authors) data, builtin for numeric answers",
        ),
    )
    max_train: int | None = field(default=None, metadata=field_meta(1))
    max_test: int | None = field(default=None, metadata=field_meta(1))
    max_seq_len: int = field(default=1024, metadata=field_meta(16))
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


def source_label(source: str | DatasetSource) -> str:
    """A data source in one line: the string itself, or "hub (config) split [data_files]"."""
    if isinstance(source, str):
        return source
    config = f" ({source.config})" if source.config else ""
    files = f" {source.data_files}" if source.data_files else ""
    return f"{source.hub}{config} {source.split}{files}"


def source_identity(source: str | DatasetSource, split: str, fmt: str = "auto") -> tuple:
    """What a source reads, to tell whether two data keys name the same set: a synthetic split,
    a dataset's id, config, split (any slice of it) and files, or a file's normalised path.
    `split` is the one the key asks for (train, test, validation)."""
    if isinstance(source, str) and (source in SYNTHETIC_SOURCES or fmt == "synthetic"):
        return ("synthetic", SYNTHETIC_SOURCES.get(source) or split)
    if isinstance(source, DatasetSource):
        files = source.data_files
        files = (files,) if isinstance(files, str) else tuple(files or ())
        base_split = source.split.split("[", 1)[0].strip()
        normalised = tuple(sorted(os.path.normpath(f) for f in files))
        return ("dataset", source.hub.strip(), source.config, base_split, normalised)
    return ("file", os.path.normpath(source))


def validation_is_test(data: DataConfig, resolve: Callable = lambda source: source) -> str | None:
    """The reason `data.validation` may not be used, when it names the test set (`resolve`:
    named benchmarks to their dataset, when the data layer is at hand); else None."""
    if data.validation is None:
        return None
    validation = source_identity(resolve(data.validation), "validation", data.format)
    if validation != source_identity(resolve(data.test), "test", data.format):
        return None
    return (
        f"'data.validation' ({source_label(data.validation)}) names the test set "
        f"('data.test': {source_label(data.test)}); validation chooses the kept adapters and "
        "must not see the test problems: use another split (synthetic-validation, a slice of "
        "train) or 'data.validation_fraction'"
    )
