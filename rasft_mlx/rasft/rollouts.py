"""On-policy rollouts: K verified samples per problem from the live model (adapters as they are now)."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import rasft_mlx.runtime.distributed as distributed
from rasft_mlx.data.encoding import TrainingSequence
from rasft_mlx.data.graders import grade
from rasft_mlx.data.problem import Problem
from rasft_mlx.generation.completions import (
    Completion,
    GenerationStats,
    SamplingSettings,
    decode_share,
    generate_completions,
)
from rasft_mlx.recipe.config import RolloutConfig

# The least budget `rollout.max_new_tokens_per_demo_token` gives a problem: a terse demo (a bare
# "\boxed{7}" is a handful of tokens) would otherwise leave no room for the few words of working
# a model writes before its answer; 16 tokens cost little next to any budget worth setting.
MIN_ROLLOUT_TOKENS = 16


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


def rollout_limit(config: RolloutConfig, demo_tokens: int) -> int:
    """A problem's most new tokens per rollout: `max_new_tokens`, or with
    `max_new_tokens_per_demo_token` F on, ceil(F x `demo_tokens`) (its demo's response tokens,
    end-of-turn included), at least MIN_ROLLOUT_TOKENS, at most `max_new_tokens`."""
    factor = config.max_new_tokens_per_demo_token
    if factor <= 0:
        return config.max_new_tokens
    budget = math.ceil(round(factor * demo_tokens, 6))  # 1.1 x 50: 55, not 55.00000000000001 -> 56
    return min(config.max_new_tokens, max(MIN_ROLLOUT_TOKENS, budget))


def generate_samples(
    model,
    tokenizer,
    problems: list[Problem],
    prompts: dict[str, list[int]],
    config: RolloutConfig,
    seed: int,
    label: str = "rollouts",
    demos: dict[str, TrainingSequence] | None = None,
) -> tuple[dict[str, list[Completion]], GenerationStats]:
    """K samples per problem from the model as it is now (live adapters, no snapshot), each of
    at most `rollout_limit` new tokens (`demos`: each problem's demo, by problem id).

    The K copies of a prompt go to `generate_completions` together, so the rollout engine
    prefills each prompt once and decodes its K samples from the shared cache.
    """
    repeated = [problem for problem in problems for _ in range(config.k)]
    limits = None
    if config.max_new_tokens_per_demo_token > 0:
        if demos is None:
            raise ValueError("rollout.max_new_tokens_per_demo_token needs each problem's demo")
        limits = [rollout_limit(config, demos[p.id].response_length) for p in repeated]
    completions, stats = generate_completions(
        model,
        tokenizer,
        [prompts[p.id] for p in repeated],
        sampling_settings(config),
        seed=seed,
        label=label,
        limits=limits,
    )
    samples: dict[str, list[Completion]] = {p.id: [] for p in problems}
    for problem, completion in zip(repeated, completions, strict=True):
        samples[problem.id].append(completion)
    return samples, stats


def verify_samples(
    problem: Problem, completions: list[Completion], grade_truncated: bool = False
) -> list[Rollout]:
    """Verdicts against the gold answer; answerless samples are incorrect, and so are truncated
    ones (verdict "truncated") unless `grade_truncated`: then their answer is graded."""
    rollouts = []
    for index, completion in enumerate(completions):
        verdict = grade(
            completion.text,
            problem.answer,
            truncated=completion.truncated and not grade_truncated,
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


def own_problems(problems: list[Problem], prompts: dict, config: RolloutConfig) -> list[Problem]:
    """The problems this rank rolls out (all of them in one process); see `decode_share`."""
    share = decode_share([prompts[p.id] for p in problems], config.k, config.batch_size)
    return [problems[i] for i in share]


def gather_rollouts(
    verified: dict[str, list[Rollout]], stats: GenerationStats, problems: list[Problem]
) -> tuple[dict[str, list[Rollout]], GenerationStats, dict[str, int]]:
    """Every rank's verified rollouts on every rank, in `problems` order; the generation stats
    summed (tokens) and the slowest rank's seconds; which rank rolled out each problem (empty
    in one process, where nothing changes)."""
    if not distributed.distributed():
        return verified, stats, {}
    started = time.perf_counter()
    payload = {
        "rollouts": {pid: [asdict(r) for r in group] for pid, group in verified.items()},
        "stats": [stats.prompts, stats.generated_tokens, stats.seconds],
    }
    shares = distributed.all_gather_json(payload, "rollouts")
    merged, owners = {}, {}
    for owner, share in enumerate(shares):
        for pid, group in share["rollouts"].items():
            owners[pid] = owner
            merged[pid] = [Rollout(**{**r, "token_ids": tuple(r["token_ids"])}) for r in group]
    stats = GenerationStats(
        prompts=sum(s["stats"][0] for s in shares),
        generated_tokens=sum(s["stats"][1] for s in shares),
        seconds=max(s["stats"][2] for s in shares) + time.perf_counter() - started,
    )
    return {p.id: merged[p.id] for p in problems}, stats, owners
