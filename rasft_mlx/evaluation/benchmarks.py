"""`rasft-mlx eval`: a model (with optional adapters) on one or several problem sets (named
benchmarks, files, Hub datasets), verified answers written out, one table with the mean."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml

from rasft_mlx.data.hub_datasets import parse_split
from rasft_mlx.data.sources import (
    BENCHMARKS,
    SYNTHETIC_SOURCES,
    load_problems,
    resolve_source,
)
from rasft_mlx.evaluation.evaluate import EvalSummary, evaluate_problems, write_eval_outputs
from rasft_mlx.models.adapters import fuse_adapters, load_adapters_into
from rasft_mlx.models.loading import load_model
from rasft_mlx.recipe.config import DataConfig, EvalConfig, ModelConfig, RecipeError
from rasft_mlx.recipe.dataset_config import DatasetSource
from rasft_mlx.recipe.protocols import PRESETS
from rasft_mlx.recipe.strict_yaml import load_yaml
from rasft_mlx.recipe.typed_fields import build_dataclass
from rasft_mlx.runtime.fileio import atomic_write_text


def eval_config(protocol: str = "project", **given) -> EvalConfig:
    """EvalConfig from the options given (None = not given), then the protocol's values, then
    the defaults; `protocol` authors: their harness's avg@16 at T 1.0, top-p 1.0, 4,096 tokens."""
    if protocol not in PRESETS:
        raise RecipeError(f"--protocol: expected one of {', '.join(PRESETS)}, got {protocol!r}")
    values = dict(PRESETS[protocol].get("eval", {}))
    values.update({key: value for key, value in given.items() if value is not None})
    return EvalConfig(**values)


@dataclass(frozen=True)
class BenchmarkResult:
    name: str
    summary: EvalSummary
    results_path: Path
    summary_path: Path


def parse_data_sources(text: str) -> list[tuple[str, str | DatasetSource]]:
    """`--data` as (name, source) pairs: comma-separated names and paths (gsm8k,math500,FILE),
    or YAML: one mapping {hub: ..., split: ...} or a list of names and mappings."""
    text = text.strip()
    if text.startswith(("{", "[")):
        try:
            value = load_yaml(text)
        except yaml.YAMLError as exc:
            raise RecipeError(f"--data: invalid YAML: {exc}") from exc
        items = value if isinstance(value, list) else [value]
    else:
        items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise RecipeError("--data: expected a benchmark name, a file or {hub: ...}")
    sources = []
    for item in items:
        if isinstance(item, dict):
            source = build_dataclass(DatasetSource, item, "", "--data", {})
            if not source.hub:
                raise RecipeError("--data: a mapping needs 'hub' (a dataset id or directory)")
        elif isinstance(item, str):
            source = item
            looks_like_a_name = "/" not in item and "." not in item and not Path(item).exists()
            if looks_like_a_name and item not in BENCHMARKS and item not in SYNTHETIC_SOURCES:
                raise RecipeError(
                    f"--data: {item}: no such file, and not a named benchmark "
                    f"({', '.join(BENCHMARKS)})"
                )
        else:
            raise RecipeError(f"--data: expected names, paths or mappings, got {item!r}")
        sources.append((_source_name(source), source))
    names = [name for name, _ in sources]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise RecipeError(f"--data: {', '.join(duplicated)} given twice")
    return sources


def _source_name(source: str | DatasetSource) -> str:
    resolved = resolve_source(source)
    if isinstance(source, str) and isinstance(resolved, DatasetSource):
        return source  # a named benchmark
    if isinstance(resolved, DatasetSource):
        split = parse_split(resolved.split)[0]
        return f"{Path(resolved.hub.rstrip('/')).name}-{split}".replace("/", "-")
    return source if source in SYNTHETIC_SOURCES else Path(source).stem


def run_evaluation(
    model: str,
    data: str | DatasetSource,
    out: Path,
    config: EvalConfig | None = None,
    *,
    adapter: str | Path | None = None,
    fuse: bool = True,
    data_format: str = "auto",
    grader: str = "auto",
    seed: int = 0,
) -> tuple[EvalSummary, Path, Path]:
    """Evaluate `model` (+ `adapter`) on `data`; returns the summary and the two files written
    (`eval.jsonl`, `eval-summary.json`)."""
    [result] = run_benchmarks(
        model,
        [("eval", data)],
        out,
        config,
        adapter=adapter,
        fuse=fuse,
        data_format=data_format,
        grader=grader,
        seed=seed,
    )
    return result.summary, result.results_path, result.summary_path


def run_benchmarks(
    model: str,
    sources: list[tuple[str, str | DatasetSource]],
    out: Path,
    config: EvalConfig | None = None,
    *,
    adapter: str | Path | None = None,
    fuse: bool = True,
    data_format: str = "auto",
    grader: str = "auto",
    seed: int = 0,
    on_unfused=None,
) -> list[BenchmarkResult]:
    """Evaluate one model on every (name, source), each graded by its own grader; writes
    NAME.jsonl and NAME-summary.json per source and, for several, `benchmarks.json` with the mean.

    `fuse`: merge the adapter into the weights first (`fuse_adapters`: faster decoding, the
    weights `export --format fused` writes); where it cannot, `on_unfused(reason)` is told and
    the adapter stays live."""
    config = config or EvalConfig()
    problem_sets = [
        (
            name,
            load_problems(
                source,
                fmt=data_format,
                split="test",
                grader=grader,
                limit=config.limit,
                synthetic={"n_test": config.limit or 200, "n_ood": config.limit or 500},
            ),
        )
        for name, source in sources
    ]
    loaded = load_model(ModelConfig(path=model))
    if adapter is not None:
        load_adapters_into(loaded.model, adapter)
        not_fused = fuse_adapters(loaded.model) if fuse else None
        if not_fused and on_unfused is not None:
            on_unfused(not_fused)
    results = []
    for name, problems in problem_sets:
        records, summary = evaluate_problems(
            loaded.model, loaded.tokenizer, problems, config, DataConfig().system_prompt, seed=seed
        )
        results_path, summary_path = write_eval_outputs(records, summary, out, name=name)
        results.append(BenchmarkResult(name, summary, results_path, summary_path))
    if len(results) > 1:
        atomic_write_text(
            Path(out) / "benchmarks.json", json.dumps(benchmark_table(results), indent=2) + "\n"
        )
    return results


def benchmark_table(results: list[BenchmarkResult]) -> dict:
    """Each benchmark's accuracy and the unweighted mean over benchmarks (the authors' harness
    reports the mean of per-benchmark accuracies, not of problems)."""
    rows = [
        {
            "name": r.name,
            **{k: getattr(r.summary, k) for k in ("problems", "pass_at_1", "avg_at_k")},
        }
        for r in results
    ]
    mean = {"pass_at_1": sum(r["pass_at_1"] for r in rows) / len(rows)}
    if all(r["avg_at_k"] is not None for r in rows):
        mean["avg_at_k"] = sum(r["avg_at_k"] for r in rows) / len(rows)
    return {"benchmarks": rows, "mean": mean}
