"""On-policy rollouts: K verified samples per problem from the live model (adapters as they are now)."""

from __future__ import annotations

from dataclasses import dataclass

from rasft_mlx.config import RolloutConfig
from rasft_mlx.data.graders import grade
from rasft_mlx.data.problem import Problem
from rasft_mlx.generation.completions import (
    Completion,
    GenerationStats,
    SamplingSettings,
    generate_completions,
)


@dataclass(frozen=True)
class Rollout:
    problem_id: str
    sample: int
    text: str
    token_ids: tuple[int, ...]
    truncated: bool
    extracted: str | None
    correct: bool
    verdict: str


def sampling_settings(config: RolloutConfig) -> SamplingSettings:
    return SamplingSettings(
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        repetition_penalty=config.repetition_penalty,
        repetition_scope=config.repetition_scope,
        batch_size=config.batch_size,
    )


def generate_samples(
    model,
    tokenizer,
    problems: list[Problem],
    prompts: dict[str, list[int]],
    config: RolloutConfig,
    seed: int,
    label: str = "rollouts",
) -> tuple[dict[str, list[Completion]], GenerationStats]:
    """K samples per problem from the model as it is now (live adapters, no snapshot).

    The K copies of a prompt go to `generate_completions` together, so the rollout engine
    prefills each prompt once and decodes its K samples from the shared cache.
    """
    repeated = [problem for problem in problems for _ in range(config.k)]
    completions, stats = generate_completions(
        model,
        tokenizer,
        [prompts[p.id] for p in repeated],
        sampling_settings(config),
        seed=seed,
        label=label,
    )
    samples: dict[str, list[Completion]] = {p.id: [] for p in problems}
    for problem, completion in zip(repeated, completions, strict=True):
        samples[problem.id].append(completion)
    return samples, stats


def verify_samples(problem: Problem, completions: list[Completion]) -> list[Rollout]:
    """Verdicts against the gold answer; truncated or answerless samples are incorrect."""
    rollouts = []
    for index, completion in enumerate(completions):
        verdict = grade(
            completion.text,
            problem.answer,
            truncated=completion.truncated,
            grader=problem.grader,
        )
        rollouts.append(
            Rollout(
                problem_id=problem.id,
                sample=index,
                text=completion.text,
                token_ids=completion.token_ids,
                truncated=completion.truncated,
                extracted=verdict.extracted,
                correct=verdict.correct,
                verdict=verdict.reason,
            )
        )
    return rollouts
