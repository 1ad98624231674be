"""Evaluation: greedy pass@1 and sampled avg@K of verified final answers, with per-problem records."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import rasft_mlx.runtime.distributed as distributed
from rasft_mlx.data.encoding import encode_prompt
from rasft_mlx.data.graders import grade
from rasft_mlx.data.problem import Problem
from rasft_mlx.generation.completions import (
    SamplingSettings,
    decode_share,
    generate_completions,
    rank_seed,
)
from rasft_mlx.recipe.config import EvalConfig
from rasft_mlx.runtime.fileio import atomic_write_text

if TYPE_CHECKING:
    from rasft_mlx.models.loading import LoadedModel
    from rasft_mlx.recipe.config import Recipe
    from rasft_mlx.training.run_directory import MetricsLog


@dataclass(frozen=True)
class EvalRecord:
    id: str
    prompt: str
    completion: str
    extracted: str | None
    gold: str
    correct: bool
    verdict: str
    sample: int  # -1 for the greedy completion, 0..K-1 for sampled ones
    grader: str = "builtin"


@dataclass(frozen=True)
class EvalSummary:
    problems: int
    pass_at_1: float
    samples: int
    avg_at_k: float | None
    temperature: float | None
    generated_tokens: int
    seconds: float
    # With samples > 1: how many problems had 0, 1, ..., K of their K samples right, and the
    # share with a mixed group (some but not all right), where RASFT's weights act.
    solvability_histogram: list[int] | None = None
    mixed_share: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _records(problems, completions, sample_index: int) -> list[EvalRecord]:
    records = []
    for problem, completion in zip(problems, completions, strict=True):
        verdict = grade(
            completion.text,
            problem.answer,
            truncated=completion.truncated,
            grader=problem.grader,
        )
        records.append(
            EvalRecord(
                id=problem.id,
                prompt=problem.question,
                completion=completion.text,
                extracted=verdict.extracted,
                gold=problem.answer,
                correct=verdict.correct,
                verdict=verdict.reason,
                sample=sample_index,
                grader=problem.grader,
            )
        )
    return records


def evaluate_problems(
    model, tokenizer, problems: list[Problem], config: EvalConfig, system_prompt: str, seed: int = 0
) -> tuple[list[EvalRecord], EvalSummary]:
    """Greedy pass@1 over `problems` (after config.limit) and avg@K when config.samples > 1.
    Over several ranks each evaluates a share of the problems (its own sampling stream) and
    every rank gets all the records, in one process's order."""
    if config.limit is not None:
        problems = problems[: config.limit]
    prompts = [encode_prompt(tokenizer, p.question, system_prompt) for p in problems]
    own = decode_share(prompts, 1, config.batch_size)
    records, tokens, seconds = _evaluate_share(
        model,
        tokenizer,
        [problems[i] for i in own],
        [prompts[i] for i in own],
        config,
        rank_seed(seed),
    )
    if distributed.distributed():
        records, tokens, seconds = _gather_records(records, tokens, seconds, problems)
    sampled_records = [r for r in records if r.sample >= 0]
    avg_at_k = histogram = mixed = None
    if config.samples > 1:
        avg_at_k = sum(r.correct for r in sampled_records) / max(len(sampled_records), 1)
        histogram, mixed = sample_solvability(sampled_records, config.samples)
    greedy_records = [r for r in records if r.sample == -1]
    summary = EvalSummary(
        problems=len(problems),
        pass_at_1=sum(r.correct for r in greedy_records) / max(len(greedy_records), 1),
        samples=config.samples,
        avg_at_k=avg_at_k,
        temperature=config.temperature if config.samples > 1 else None,
        generated_tokens=tokens,
        seconds=round(seconds, 3),
        solvability_histogram=histogram,
        mixed_share=mixed,
    )
    return records, summary


def sample_solvability(sampled: list[EvalRecord], k: int) -> tuple[list[int], float]:
    """Problems with 0..K right samples, and the share with a mixed group (0 < right < K)."""
    right: dict[str, int] = {}
    for record in sampled:
        right[record.id] = right.get(record.id, 0) + record.correct
    histogram = [0] * (k + 1)
    for count in right.values():
        histogram[count] += 1
    mixed = sum(histogram[1:k]) / max(len(right), 1)
    return histogram, round(mixed, 4)


def _evaluate_share(model, tokenizer, problems, prompts, config: EvalConfig, seed):
    """Records (greedy, then K sampled per problem), generated tokens and seconds."""
    greedy = SamplingSettings(config.max_new_tokens, temperature=0.0, batch_size=config.batch_size)
    completions, stats = generate_completions(model, tokenizer, prompts, greedy, label="eval")
    records = _records(problems, completions, -1)
    tokens, seconds = stats.generated_tokens, stats.seconds
    if config.samples > 1:
        sampled = SamplingSettings(
            config.max_new_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            batch_size=config.batch_size,
        )
        repeated = [p for p in prompts for _ in range(config.samples)]
        completions, stats = generate_completions(
            model, tokenizer, repeated, sampled, seed=seed, label=f"eval (avg@{config.samples})"
        )
        repeated_problems = [p for p in problems for _ in range(config.samples)]
        records += [
            EvalRecord(**{**asdict(r), "sample": i % config.samples})
            for i, r in enumerate(_records(repeated_problems, completions, 0))
        ]
        tokens, seconds = tokens + stats.generated_tokens, seconds + stats.seconds
    return records, tokens, seconds


def _gather_records(records, tokens, seconds, problems):
    """Every rank's records in one process's order: greedy ones by problem, then the sampled."""
    shares = distributed.all_gather_json(
        {"records": [asdict(r) for r in records], "tokens": tokens, "seconds": seconds}, "eval"
    )
    position = {p.id: i for i, p in enumerate(problems)}
    merged = [EvalRecord(**r) for share in shares for r in share["records"]]
    merged.sort(key=lambda r: (r.sample >= 0, position[r.id], r.sample))
    tokens = sum(share["tokens"] for share in shares)
    return merged, tokens, max(share["seconds"] for share in shares)


def write_eval_outputs(
    records: list[EvalRecord], summary: EvalSummary, out_dir: Path, name: str = "eval"
) -> tuple[Path, Path]:
    """`<name>.jsonl` (one record per completion) and `<name>-summary.json`, both atomically."""
    results_path = Path(out_dir) / f"{name}.jsonl"
    summary_path = Path(out_dir) / f"{name}-summary.json"
    atomic_write_text(results_path, "".join(json.dumps(asdict(r)) + "\n" for r in records))
    atomic_write_text(summary_path, json.dumps(summary.as_dict(), indent=2) + "\n")
    return results_path, summary_path


def evaluate_and_write(
    loaded: LoadedModel, recipe: Recipe, problems: list[Problem], out_dir: Path, name: str
) -> EvalSummary:
    """Evaluate as the recipe says (its eval settings, system prompt and seed) and write
    NAME.jsonl and NAME-summary.json to out_dir."""
    records, summary = evaluate_problems(
        loaded.model,
        loaded.tokenizer,
        problems,
        recipe.eval,
        recipe.data.system_prompt,
        seed=recipe.training.seed,
    )
    write_eval_outputs(records, summary, out_dir, name=name)
    return summary


def evaluate_and_record(
    loaded: LoadedModel,
    recipe: Recipe,
    problems: list[Problem],
    run_dir: Path,
    epoch: int,
    metrics: MetricsLog,
) -> EvalSummary:
    """Evaluate on `problems`, write eval-epoch-N files to run_dir and an eval event to metrics."""
    summary = evaluate_and_write(loaded, recipe, problems, run_dir, f"eval-epoch-{epoch + 1}")
    metrics.write({"event": "eval", "epoch": epoch, **summary.as_dict()})
    return summary


@dataclass(frozen=True)
class HeldOutEvaluation:
    """The loop's held-out scoring (training/hooks.py): the recipe's test problems, per epoch."""

    loaded: LoadedModel
    recipe: Recipe
    problems: list[Problem]
    run_dir: Path
    metrics: MetricsLog

    @property
    def has_problems(self) -> bool:
        return bool(self.problems)

    def score(self, epoch: int) -> EvalSummary:
        return evaluate_and_record(
            self.loaded, self.recipe, self.problems, self.run_dir, epoch, self.metrics
        )

    def summary_from_dict(self, state: dict) -> EvalSummary:
        return EvalSummary(**state)


@dataclass(frozen=True)
class ValidationPassAt1:
    """The loop's validation pass@1 (training/hooks.py `ValidationScoring`): greedy, on the first
    eval.val_pass_at_1_problems validation problems, with the recipe's eval generation settings."""

    loaded: LoadedModel
    recipe: Recipe
    problems: list[Problem]

    def score(self, step: int) -> EvalSummary:
        config = replace(self.recipe.eval, limit=self.recipe.eval.val_pass_at_1_problems, samples=1)
        _, summary = evaluate_problems(
            self.loaded.model,
            self.loaded.tokenizer,
            self.problems,
            config,
            self.recipe.data.system_prompt,
            seed=self.recipe.training.seed,
        )
        return summary
