"""Before a run: will RASFT's mechanism be at work? The first refresh's gauges on held-out problems.

`rasft-mlx plan RECIPE --gauges N` rolls out N problems of the validation set (`data.validation`,
the held-out `data.validation_fraction`, or `synthetic-validation` for the synthetic task; the
first N training problems only where none exists, and it says so) from the starting policy, K
samples each with the recipe's rollout settings, and groups and weighs them by the recipe's
`rasft` rules, as a first refresh would: the share of mixed groups (some but not all samples
right: the only problems whose weights RASFT sets), the share of generated rollouts that would
train, and the trained rollouts' weights against the floor. RFT's trained share (every kept
correct sample at weight 1) is shown beside it. Choosing a setting on these numbers keeps the
test set untouched.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

from rasft_mlx.data.encoding import encode_expert_sequences, encode_prompt
from rasft_mlx.data.problem import Problem
from rasft_mlx.data.sources import load_problems
from rasft_mlx.rasft.gauges import mechanism_gauges, rollout_weight_floor
from rasft_mlx.rasft.groups import build_group, rejection_sampling_group
from rasft_mlx.rasft.rollouts import generate_samples, verify_samples
from rasft_mlx.rasft.weights import solvability_histogram
from rasft_mlx.recipe.config import Recipe
from rasft_mlx.recipe.dataset_config import SYNTHETIC_SOURCES
from rasft_mlx.training.checkpoint import mlx_random_state, restore_mlx_random_state
from rasft_mlx.training.run_data import load_run_sets

PROBE_SEED_OFFSET = 7_919  # the probe's samples are not any run's first refresh's


@dataclass(frozen=True)
class MechanismProbe:
    source: str  # where the problems came from, in words
    problems: int
    k: int
    generated: int
    generated_tokens: int
    rollout_seconds: float
    gauges: dict  # gauges.mechanism_gauges under the recipe's weighting
    solvability_histogram: list[int]  # problems with 0, 1, ..., K samples right
    dropped: dict = field(default_factory=dict)  # samples not trained, by cause
    rft_trained_share: float | None = None  # RFT on the same samples: every kept correct one

    def as_dict(self) -> dict:
        return asdict(self)


def probe_problems(recipe: Recipe, count: int) -> tuple[list[Problem], str]:
    """Up to `count` held-out problems for the probe, and where they came from."""
    sets = load_run_sets(recipe)
    if sets.validation:
        return sets.validation[:count], "the validation set"
    data = recipe.data
    if isinstance(data.train, str) and data.train in SYNTHETIC_SOURCES:
        problems = load_problems(
            "synthetic-validation",
            limit=count,
            synthetic=asdict(data.synthetic),
            grader=data.grader,
        )
        return problems, "synthetic-validation"
    return sets.train[:count], (
        "the first training problems (no validation set: set data.validation or "
        "data.validation_fraction to choose settings on held-out problems)"
    )


def group_gauges(
    verified: dict[str, list], recipe: Recipe, prompt_lengths: dict[str, int] | None = None
) -> tuple[dict, list[int], Counter, float]:
    """The first refresh's gauges over verified samples (problem id -> rollouts), the problems'
    0..K solvability histogram, the dropped samples by cause, and RFT's trained share on the
    same samples. With `prompt_lengths` (problem id -> prompt tokens) a correct rollout whose
    sequence would pass data.max_seq_len does not train ("too_long"), as in a refresh."""
    rasft, k = recipe.rasft, recipe.rollout.k

    def fits(problem_id: str, rollout) -> bool:
        if prompt_lengths is None:
            return True
        length = prompt_lengths[problem_id] + len(rollout.token_ids) + 1  # + end of turn
        return length <= recipe.data.max_seq_len

    weights, dropped, rft_trained = [], Counter(), 0
    for problem_id, rollouts in verified.items():
        group = build_group(rollouts, rasft)
        dropped += group.dropped
        for rollout, weight in zip(group.trained, group.weights.rollout_weights, strict=True):
            if fits(problem_id, rollout):
                weights.append(weight)
            else:
                dropped["too_long"] += 1
        rft = rejection_sampling_group(group, rollouts).trained
        rft_trained += sum(fits(problem_id, rollout) for rollout in rft)
    generated = sum(len(rollouts) for rollouts in verified.values())
    floor = rollout_weight_floor(rasft) if rasft.weighting == "reference" else None
    correct = [sum(r.correct for r in rollouts) for rollouts in verified.values()]
    gauges = mechanism_gauges(correct, k, generated, weights, floor)
    rft_share = round(rft_trained / generated, 4) if generated else 0.0
    return gauges, solvability_histogram(correct, k), dropped, rft_share


def probe_mechanism(loaded, recipe: Recipe, count: int) -> MechanismProbe:
    """Roll out up to `count` held-out problems from the model as it is (the starting policy)
    and return the first refresh's gauges; MLX's random state is put back afterwards."""
    problems, source = probe_problems(recipe, count)
    tokenizer, system = loaded.tokenizer, recipe.data.system_prompt
    prompts = {p.id: encode_prompt(tokenizer, p.question, system) for p in problems}
    demos, _ = encode_expert_sequences(tokenizer, problems, system, recipe.data.max_seq_len)
    saved_random = mlx_random_state()
    samples, stats = generate_samples(
        loaded.model,
        tokenizer,
        problems,
        prompts,
        recipe.rollout,
        seed=recipe.training.seed * 1000 + PROBE_SEED_OFFSET,
        label="gauges: rollouts",
        demos={s.problem_id: s for s in demos},
    )
    restore_mlx_random_state(saved_random)
    graded = recipe.rasft.grade_truncated
    verified = {p.id: verify_samples(p, samples[p.id], graded) for p in problems}
    lengths = {pid: len(prompt) for pid, prompt in prompts.items()}
    gauges, histogram, dropped, rft_share = group_gauges(verified, recipe, lengths)
    return MechanismProbe(
        source=source,
        problems=len(problems),
        k=recipe.rollout.k,
        generated=sum(len(rollouts) for rollouts in verified.values()),
        generated_tokens=stats.generated_tokens,
        rollout_seconds=round(stats.seconds, 1),
        gauges=gauges,
        solvability_histogram=histogram,
        dropped=dict(dropped),
        rft_trained_share=rft_share,
    )


def mechanism_rows(probe: MechanismProbe) -> list[tuple[str, str]]:
    """(label, value) rows for `plan`'s table."""
    g = probe.gauges

    def share(value):
        return "-" if value is None else f"{100 * value:.1f} %"

    histogram = " / ".join(str(n) for n in probe.solvability_histogram)
    mixed = f"{share(g['mixed_group_share'])} (problems with 0..{probe.k} right: {histogram})"
    if probe.problems and not g["mixed_group_share"]:
        mixed += (
            "; no group is mixed, so RASFT's weights would act on nothing: a start that solves "
            "part of each problem's samples (model.adapter) or other rollout settings change that"
        )
    dropped = ", ".join(f"{n} {cause}" for cause, n in sorted(probe.dropped.items()))
    median, at_floor = g["rollout_weight_median"], g["rollout_weight_at_floor"]
    weight = "no rollout trained" if median is None else f"median {median:.4g}"
    if at_floor is not None:
        weight += f", {share(at_floor)} at the floor"
    return [
        (
            "mechanism probe",
            f"{probe.problems} problems of {probe.source}, K = {probe.k}, "
            f"{probe.generated_tokens:,} tokens in {probe.rollout_seconds:.0f} s",
        ),
        ("  mixed groups", mixed),
        (
            "  rollouts trained",
            f"{share(g['trained_share'])} of {probe.generated} (rft: "
            f"{share(probe.rft_trained_share)}); not trained: {dropped or 'none'}",
        ),
        ("  rollout weight", weight),
    ]
