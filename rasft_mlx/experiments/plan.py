"""Pre-flight plan: model and adapter sizes, tokens, rollout volume, estimated peak memory, wall time."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, replace

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from rasft_mlx.data.encoding import encode_prompt
from rasft_mlx.experiments.mechanism_probe import MechanismProbe, probe_mechanism
from rasft_mlx.generation.completions import SamplingSettings, generate_completions
from rasft_mlx.models.adapters import (
    apply_adapters,
    total_parameter_count,
    trainable_parameter_count,
)
from rasft_mlx.models.checkpointing import checkpoint_layers
from rasft_mlx.models.loading import load_model
from rasft_mlx.rasft.authors_schedule import refresh_step
from rasft_mlx.rasft.rollouts import rollout_limit, sampling_settings
from rasft_mlx.rasft.routing import expected_rollout_problems
from rasft_mlx.recipe.config import ROLLOUT_MODES, Recipe
from rasft_mlx.runtime.memory import (
    peak_rss_bytes,
)
from rasft_mlx.training.batching import collate
from rasft_mlx.training.checkpoint import mlx_random_state, restore_mlx_random_state
from rasft_mlx.training.memory_estimate import (
    MEMORY_LIMIT_SHARE,
    MemoryEstimate,
    estimate_run_memory,
)
from rasft_mlx.training.memory_estimate import (
    check_memory as check_run_memory,
)
from rasft_mlx.training.run_data import encode_training_data, load_run_data
from rasft_mlx.training.step_plan import (
    loss_settings,
    planned_steps,
    room_for_sequences,
    step_groups,
    steps_per_epoch,
)
from rasft_mlx.training.train_step import CompiledTrainStep, build_optimizer

FORWARD_SHARE = 1 / 3  # a forward-only pass (reference log-probs) against a training step
PROBE_MAX_ROWS, PROBE_NEW_TOKENS = 64, 32


@dataclass(frozen=True)
class ProbeResult:
    """Measured: a few optimizer steps and a short generation; *_seconds are extrapolated."""

    steps: int
    first_step_seconds: float  # includes tracing and compiling the step
    seconds_per_step: float  # median of the later steps (the first when only one ran)
    generation_tokens_per_second: float
    measured_training_peak: int  # mx.get_peak_memory() over the steps (reset before)
    measured_generation_peak: int
    rss_peak: int  # the process's peak RSS so far (ru_maxrss), whatever it held before
    train_seconds: float  # max_planned_steps x seconds_per_step
    reference_seconds: float  # RASFT reference log-prob forwards
    rollout_seconds: float  # refreshes x rollout tokens per refresh / generation rate
    eval_seconds: float

    @property
    def wall_seconds(self) -> float:
        return (
            self.train_seconds + self.reference_seconds + self.rollout_seconds + self.eval_seconds
        )


@dataclass(frozen=True)
class RunPlan:
    model: str
    mode: str
    total_parameters: int
    trainable_parameters: int
    weight_bytes: int  # every parameter, adapters included
    sequences_per_epoch: int  # encoded expert sequences (RASFT adds correct rollouts to these)
    skipped_too_long: int
    prompt_tokens_per_epoch: int
    response_tokens_per_epoch: int
    largest_bucket: int  # padded input length of the longest possible training row
    steps_per_epoch: int
    planned_steps: int  # expert sequences (the authors: with the hard pool trained again)
    max_planned_steps: int  # RASFT: as if every rollout were correct and trained
    refreshes: int
    rollout_problems_per_refresh: int
    rollout_tokens_per_refresh: int  # upper bound: problems x k x max_new_tokens
    eval_tokens: int  # upper bound over every planned eval
    memory: MemoryEstimate
    machine_memory: int
    probe: ProbeResult | None = None
    rollout_rows: int = 0  # sequences decoded together (rollout.batch_size, or auto when 0)
    eval_rows: int = 0
    refresh_steps: tuple[int, ...] = ()  # the authors' schedule: after which step it refreshes
    hard_pool_demos: int = 0  # the authors' schedule: demos trained again when the pool is flushed
    rollout_problems: int = 0  # over every refresh (a refresh the step cap trims rolls out fewer)
    mechanism: MechanismProbe | None = None  # the first refresh's gauges on held-out problems

    @property
    def rollout_tokens(self) -> int:
        """Over every refresh (upper bound)."""
        per_problem = self.rollout_tokens_per_refresh / max(self.rollout_problems_per_refresh, 1)
        return round(self.rollout_problems * per_problem)

    @property
    def tokens_per_epoch(self) -> int:
        return self.prompt_tokens_per_epoch + self.response_tokens_per_epoch


def refresh_problems(
    steps_in_epoch: int, recipe: Recipe, problems: int, selected: int
) -> list[int]:
    """The problems each RASFT refresh rolls out, as the loop runs them: one refresh per epoch,
    plus every refresh_every_steps steps inside an epoch (not after its last step, nor once
    max_steps is reached); `selected` of the `problems` each, except an epoch's refresh that the
    step cap leaves room for fewer sequences than problems (`rasft.trim_capped_refresh`): the
    selected share of that room. Epochs are counted in demo steps: the rollouts a run adds to
    its epochs make the cap bind sooner, so this is an upper bound."""
    training, every = recipe.training, recipe.rasft.refresh_every_steps
    limit = training.max_steps if training.max_steps is not None else math.inf
    rolled: list[int] = []
    step = 0
    for epoch in range(training.epochs):
        if step >= limit:
            break
        warming_up = epoch < recipe.rasft.warmup_epochs
        room = room_for_sequences(training, step)
        if not warming_up:
            trimmed = recipe.rasft.trim_capped_refresh and room is not None and room < problems
            rolled.append(math.ceil(selected * room / problems) if trimmed else selected)
        for position in range(1, steps_in_epoch + 1):
            step += 1
            if step >= limit:
                break
            inside = every and position < steps_in_epoch and step % every == 0
            if inside and not warming_up:
                rolled.append(selected)
    return rolled


def authors_refresh_steps(sequence_count: int, recipe: Recipe) -> tuple[int, ...]:
    """The authors' schedule refreshes once, when the mid band routed at the start is waiting:
    after the interval's first step if the first queue (all but the mid band, expected at the
    window's starting width) lasts that long, else when that queue runs dry."""
    lo, hi = recipe.rasft.mid_window_start
    batches = math.ceil(
        (sequence_count - round(sequence_count * (hi - lo))) / recipe.training.batch_size
    )
    first = batches // recipe.training.grad_accumulation  # a short last step carries over
    step = refresh_step(first, recipe.rasft.refresh_every_steps)
    limit = recipe.training.max_steps
    return () if limit is not None and step >= limit else (step,)


def authors_hard_pool_demos(sequence_count: int, recipe: Recipe) -> int:
    """The demos the authors' schedule trains a second time at the end: the hard pool, routed at
    the start between the mid window's top and the ceiling (hard_quantile), expected at the
    window's starting width. Probes that leave the pool (3 % of it, and only the solved ones) are
    left in: an upper bound by a few demos."""
    _, high = recipe.rasft.mid_window_start
    return round(sequence_count * max(recipe.rasft.hard_quantile - high, 0.0))


def rollout_tokens(sequences, rollout) -> int:
    """Most new tokens per rollout: max_new_tokens, or with the demo-sized budget on, its mean
    over the demos (rounded up)."""
    if rollout.max_new_tokens_per_demo_token <= 0 or not sequences:
        return rollout.max_new_tokens
    limits = [rollout_limit(rollout, s.response_length) for s in sequences]
    return math.ceil(sum(limits) / len(limits))


def build_plan(
    recipe: Recipe, *, loaded=None, probe_steps: int = 0, gauge_problems: int = 0
) -> RunPlan:
    """Everything `rasft-mlx plan` prints; `loaded`: the model with adapters already applied.
    gauge_problems > 0: the first refresh's mechanism gauges on that many held-out problems
    (`mechanism_probe`).

    probe_steps > 0 runs that many real compiled optimizer steps (the first on the batch holding
    the longest sequence) and one short generation, then puts the adapters and MLX's random state
    back, so a caller's model is unchanged.
    """
    train_problems, test_problems = load_run_data(recipe)
    if loaded is None:
        loaded = load_model(recipe.model)
        apply_adapters(loaded.model, recipe.lora)
        if recipe.training.grad_checkpoint:
            checkpoint_layers(loaded.model)
    data, training, rollout, evaluation = recipe.data, recipe.training, recipe.rollout, recipe.eval
    tokenizer, system = loaded.tokenizer, data.system_prompt
    sequences, report = encode_training_data(tokenizer, train_problems, recipe)
    test_problems = test_problems[: evaluation.limit]
    test_prompts = [encode_prompt(tokenizer, p.question, system) for p in test_problems]
    rasft = training.mode in ROLLOUT_MODES
    per_epoch = steps_per_epoch(len(sequences), recipe)
    planned = max_planned = planned_steps(len(sequences), recipe)
    selected = expected_rollout_problems(len(sequences), recipe.rasft) if rasft else 0
    authors = rasft and recipe.rasft.schedule == "authors"
    refresh_steps = authors_refresh_steps(len(sequences), recipe) if authors else ()
    rolled = [selected] * len(refresh_steps)
    if rasft and not authors:
        rolled = refresh_problems(per_epoch, recipe, len(sequences), selected)
    weight_bytes = sum(v.nbytes for _, v in tree_flatten(loaded.model.parameters()))
    hard_pool = authors_hard_pool_demos(len(sequences), recipe) if authors else 0
    if hard_pool:
        planned = planned_steps(len(sequences) + hard_pool, recipe)
    if rasft:
        max_planned = planned_steps(len(sequences) + hard_pool + selected * rollout.k, recipe)
    samples = 1 + (evaluation.samples if evaluation.samples > 1 else 0)
    evals = min(training.epochs, math.ceil(planned / per_epoch))
    evals = (evals if training.eval_every_epoch else 1) + evaluation.before_training
    sizing = estimate_run_memory(recipe, loaded, sequences, test_prompts, selected)
    plan = RunPlan(
        model=recipe.model.path
        + (
            f" + adapter {recipe.model.adapter} (rank {loaded.start_adapter.rank}, fused)"
            if loaded.start_adapter
            else ""
        ),
        mode=training.mode,
        total_parameters=total_parameter_count(loaded.model),
        trainable_parameters=trainable_parameter_count(loaded.model),
        weight_bytes=weight_bytes,
        sequences_per_epoch=len(sequences),
        skipped_too_long=report.skipped_too_long,
        prompt_tokens_per_epoch=sum(s.prompt_length for s in sequences),
        response_tokens_per_epoch=sum(s.response_length for s in sequences),
        largest_bucket=sizing.largest_bucket,
        steps_per_epoch=per_epoch,
        planned_steps=planned,
        max_planned_steps=max_planned,
        refreshes=len(rolled),
        rollout_problems=sum(rolled),
        refresh_steps=refresh_steps,
        hard_pool_demos=hard_pool,
        rollout_problems_per_refresh=selected,
        rollout_tokens_per_refresh=selected * rollout.k * rollout_tokens(sequences, rollout),
        eval_tokens=len(test_prompts) * samples * evaluation.max_new_tokens * evals,
        memory=sizing.memory,
        machine_memory=sizing.machine_memory,
        rollout_rows=sizing.rollout_rows,
        eval_rows=sizing.eval_rows,
    )
    if gauge_problems > 0:
        plan = replace(plan, mechanism=probe_mechanism(loaded, recipe, gauge_problems))
    if probe_steps <= 0:
        return plan
    if rasft:
        prompts = [encode_prompt(tokenizer, p.question, system) for p in train_problems]
        rows = min(max(sizing.rollout_rows, 1), PROBE_MAX_ROWS)
        prompts = [p for p in prompts[: -(-rows // rollout.k)] for _ in range(rollout.k)][:rows]
        settings = sampling_settings(rollout)
    else:
        prompts = test_prompts[: min(max(sizing.eval_rows, 1), PROBE_MAX_ROWS)]
        settings = SamplingSettings(evaluation.max_new_tokens, batch_size=evaluation.batch_size)
    settings = replace(settings, max_new_tokens=min(settings.max_new_tokens, PROBE_NEW_TOKENS))
    return replace(
        plan, probe=run_probe(loaded, recipe, plan, sequences, prompts, settings, probe_steps)
    )


def run_probe(loaded, recipe, plan, sequences, prompts, settings, steps: int) -> ProbeResult:
    """Time `steps` optimizer steps and one generation of `prompts`, then restore the adapters."""
    from rasft_mlx.rasft.reference import with_reference_logprobs

    model, training = loaded.model, recipe.training
    saved_params, saved_random = tree_flatten(model.trainable_parameters()), mlx_random_state()
    groups = step_groups(sequences, training, np.random.default_rng(training.seed))
    longest = max(range(len(sequences)), key=lambda i: len(sequences[i].tokens))
    first = next(g for g in groups if any(longest in batch for batch in g))
    order = [first] + [g for g in groups if g is not first]
    chosen = [order[i % len(order)] for i in range(steps)]
    if training.mode == "rasft":
        used = sorted({i for group in chosen for batch in group for i in batch})
        filled = with_reference_logprobs(
            model, [sequences[i] for i in used], training.batch_size, training.bucket_multiple
        )
        sequences = list(sequences)
        for i, sequence in zip(used, filled, strict=True):
            sequences[i] = sequence
    optimizer = build_optimizer(training, training.learning_rate)
    step = CompiledTrainStep(
        model, optimizer, loss_settings(recipe), training.grad_clip, training.loss_normalization
    )
    mx.clear_cache()
    mx.reset_peak_memory()
    times = []
    for group in chosen:
        size, multiple = training.batch_size, training.bucket_multiple
        micro = [collate([sequences[i] for i in batch], size, multiple) for batch in group]
        started = time.perf_counter()
        step(micro)
        times.append(time.perf_counter() - started)
    training_peak = mx.get_peak_memory()
    del step, optimizer
    mx.clear_cache()
    mx.reset_peak_memory()
    rate = 0.0
    if prompts:
        _, stats = generate_completions(model, loaded.tokenizer, prompts, settings, training.seed)
        rate = stats.tokens_per_second
    generation_peak = mx.get_peak_memory()
    model.update(tree_unflatten(saved_params))
    mx.eval(model.parameters())
    restore_mlx_random_state(saved_random)
    per_step = statistics.median(times[1:]) if len(times) > 1 else times[0]
    forwards = 0
    if training.mode in ROLLOUT_MODES:  # reference log-probs: demos once, new rollouts each refresh
        rollouts = plan.rollout_problems * recipe.rollout.k
        band = (
            plan.refreshes * plan.sequences_per_epoch if recipe.rasft.selection == "nll_band" else 0
        )
        forwards = -(-plan.sequences_per_epoch // training.batch_size)
        forwards += -(-(rollouts + band) // training.batch_size)
    return ProbeResult(
        steps=len(times),
        first_step_seconds=times[0],
        seconds_per_step=per_step,
        generation_tokens_per_second=rate,
        measured_training_peak=training_peak,
        measured_generation_peak=generation_peak,
        rss_peak=peak_rss_bytes(),
        train_seconds=plan.max_planned_steps * per_step,
        reference_seconds=forwards * per_step * FORWARD_SHARE,
        rollout_seconds=plan.rollout_tokens / rate if rate else 0.0,
        eval_seconds=plan.eval_tokens / rate if rate else 0.0,
    )


def check_memory(plan: RunPlan, share: float = MEMORY_LIMIT_SHARE) -> str | None:
    """An error message when the plan's estimated peak exceeds `share` of the machine's memory."""
    return check_run_memory(plan.memory, plan.machine_memory, share)
