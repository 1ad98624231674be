"""Pre-flight plan: model and adapter sizes, tokens, rollout volume, estimated peak memory, wall time."""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, replace

import mlx.core as mx
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from .batching import collate, padded_length, window_length
from .checkpoint import mlx_random_state, restore_mlx_random_state
from .config import RasftConfig, Recipe
from .encoding import encode_prompt
from .generation import SamplingSettings, generate_completions
from .memory import (
    DECODE_LOGIT_COPIES,
    auto_decode_rows,
    kv_bytes_per_row,
    machine_memory_bytes,
    model_dims,
    peak_rss_bytes,
)
from .models import (
    adapted_layer_count,
    adapter_modules,
    apply_adapters,
    load_model,
    total_parameter_count,
    trainable_parameter_count,
)
from .plan_report import format_bytes
from .rollouts import sampling_settings
from .step_plan import loss_settings, planned_steps, step_groups, steps_per_epoch
from .train_step import CompiledTrainStep

# Fitted to mx.get_peak_memory() of compiled llama LoRA steps (hidden 64-512, 1-8 adapted layers,
# seq 128-512, vocab 320-32768, CPU float32): within ~10 % of each measured step peak.
ACTIVATION_FLOATS = (8.0, 6.0, 1.5)  # per token and layer: x hidden, x intermediate, x heads*seq
LOGIT_COPIES = 3  # float32 logits, log-softmax and its gradient
LOGIT_COPIES_WITH_REFERENCE = 8  # sft_kl / asft: a frozen forward's logits and the KL on top
DORA_WEIGHT_COPIES = 4.5  # DoRA materialises each adapted weight (and its norm) for backward
PREFILL_TOKENS = 8192  # the rollout engine's prompt tokens per prefill call
FORWARD_SHARE = 1 / 3  # a forward-only pass (reference log-probs) against a training step
MEMORY_LIMIT_SHARE = 0.9
PROBE_MAX_ROWS, PROBE_NEW_TOKENS = 64, 32


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of the largest training step and of the largest generation batch; peak = the max."""

    weights: int  # frozen base weights
    adapter_state: int  # adapter params, grads, AdamW moments (and accumulated grads)
    activations: int  # saved for backward by the adapted layers, largest bucket
    logits: int  # batch x seq x vocab x 4 bytes x copies
    kv_cache: int  # the largest rollout or eval batch at full length
    generation_temporaries: int  # decode logits and sampling, or prefill attention

    @property
    def training(self) -> int:
        return self.weights + self.adapter_state + self.activations + self.logits

    @property
    def generation(self) -> int:
        return self.weights + self.adapter_state + self.kv_cache + self.generation_temporaries

    @property
    def peak(self) -> int:
        return max(self.training, self.generation)


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
    planned_steps: int  # the trainer's LR plan (expert sequences only)
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

    @property
    def tokens_per_epoch(self) -> int:
        return self.prompt_tokens_per_epoch + self.response_tokens_per_epoch


def expected_rollout_problems(problems: int, config: RasftConfig) -> int:
    """Problems given rollouts per refresh.

    all: every problem. fraction: round(selection_fraction x problems), the expectation of the
    selection's stochastic rounding. nll_band: selection_fraction x the widest mid window (in
    quantiles) plus hard_probe_fraction x the widest hard band (hard_quantile minus the lowest top
    of the window), the most the hard pool can hold; both shares of all problems.
    """
    if config.selection == "all":
        return problems
    if config.selection == "fraction":
        return round(config.selection_fraction * problems)
    (start_lo, start_hi), (end_lo, end_hi) = config.mid_window_start, config.mid_window_end
    hard = max(config.hard_quantile - min(start_hi, end_hi), 0.0)
    share = config.selection_fraction * max(start_hi - start_lo, end_hi - end_lo)
    return min(problems, round((share + config.hard_probe_fraction * hard) * problems))


def refresh_count(steps_in_epoch: int, recipe: Recipe) -> int:
    """RASFT refreshes as the loop runs them: one per epoch, plus every refresh_every_steps steps
    inside an epoch (not after its last step, nor once max_steps is reached)."""
    training, every = recipe.training, recipe.rasft.refresh_every_steps
    limit = training.max_steps if training.max_steps is not None else math.inf
    count = step = 0
    for _ in range(training.epochs):
        if step >= limit:
            break
        count += 1
        for position in range(1, steps_in_epoch + 1):
            step += 1
            if step >= limit:
                break
            count += bool(every and position < steps_in_epoch and step % every == 0)
    return count


def estimate_memory(
    loaded, recipe: Recipe, bucket: int, window: int, generation: list[tuple]
) -> MemoryEstimate:
    """A training batch of batch_size x `bucket` inputs whose `window` response positions reach
    the vocabulary; `generation`: (rows, distinct prompts, prompt length, new tokens) of each
    generation kind, the largest one counts."""
    model, dims = loaded.model, model_dims(loaded.model)
    hidden, heads, intermediate, vocab = dims.hidden, dims.heads, dims.intermediate, dims.vocab
    params = tree_flatten(model.parameters())
    act = dims.act_bytes
    trainable = sum(v.nbytes for _, v in tree_flatten(model.trainable_parameters()))
    rows = recipe.training.batch_size
    a_hidden, a_inter, a_attn = ACTIVATION_FLOATS
    per_token = a_hidden * hidden + a_inter * intermediate + a_attn * heads * bucket
    layers = adapted_layer_count(model, recipe.lora) + 1  # + one layer's backward temporaries
    activations = layers * rows * bucket * per_token * act
    if recipe.lora.type == "dora":
        sizes = [m.linear.weight.shape for _, m in adapter_modules(model)]
        bits = [getattr(m.linear, "bits", 32) for _, m in adapter_modules(model)]
        adapted = sum(o * i * 32 // b for (o, i), b in zip(sizes, bits, strict=True))
        activations += DORA_WEIGHT_COPIES * adapted * act
    copies = LOGIT_COPIES
    if loss_settings(recipe).needs_reference_logits:
        copies = LOGIT_COPIES_WITH_REFERENCE
    kv_cache = temporaries = 0
    for gen_rows, distinct, prompt, new in generation:
        kv = gen_rows * kv_bytes_per_row(dims, prompt + new)
        chunk = min(PREFILL_TOKENS, distinct * prompt)
        prefill = chunk * (2 * heads * prompt + 6 * hidden + 3 * intermediate) * act
        temporary = max(DECODE_LOGIT_COPIES * gen_rows * vocab * 4, prefill)
        if kv + temporary > kv_cache + temporaries:
            kv_cache, temporaries = kv, temporary
    return MemoryEstimate(
        weights=sum(v.nbytes for _, v in params) - trainable,
        adapter_state=trainable * (5 if recipe.training.grad_accumulation > 1 else 4),
        activations=int(activations),
        logits=int(rows * window * vocab * 4 * copies),
        kv_cache=int(kv_cache),
        generation_temporaries=int(temporaries),
    )


def build_plan(recipe: Recipe, *, loaded=None, probe_steps: int = 0) -> RunPlan:
    """Everything `rasft-mlx plan` prints; `loaded`: the model with adapters already applied.

    probe_steps > 0 runs that many real compiled optimizer steps (the first on the batch holding
    the longest sequence) and one short generation, then puts the adapters and MLX's random state
    back, so a caller's model is unchanged.
    """
    from .trainer import encode_training_data, load_run_data

    train_problems, test_problems = load_run_data(recipe)
    if loaded is None:
        loaded = load_model(recipe.model)
        apply_adapters(loaded.model, recipe.lora)
    data, training, rollout, evaluation = recipe.data, recipe.training, recipe.rollout, recipe.eval
    tokenizer, system = loaded.tokenizer, data.system_prompt
    sequences, report = encode_training_data(tokenizer, train_problems, recipe)
    test_problems = test_problems[: evaluation.limit]
    test_prompts = [encode_prompt(tokenizer, p.question, system) for p in test_problems]
    rasft = training.mode == "rasft"
    per_epoch = steps_per_epoch(len(sequences), recipe)
    planned = max_planned = planned_steps(len(sequences), recipe)
    selected = expected_rollout_problems(len(sequences), recipe.rasft) if rasft else 0
    longest_prompt = max(s.prompt_length for s in sequences)
    longest = max(len(s.tokens) for s in sequences)
    longest_response = max(s.response_length for s in sequences)
    weight_bytes = sum(v.nbytes for _, v in tree_flatten(loaded.model.parameters()))

    def decode_rows(batch_size: int, wanted: int, context: int) -> int:
        if batch_size:
            return min(batch_size, wanted)
        free = machine_memory_bytes() - weight_bytes  # what the run finds free (batch_size 0)
        return min(wanted, auto_decode_rows(loaded.model, context, free_bytes=free))

    generation = []
    rollout_rows = 0
    if rasft:
        max_planned = planned_steps(len(sequences) + selected * rollout.k, recipe)
        longest = max(longest, min(longest_prompt + rollout.max_new_tokens + 1, data.max_seq_len))
        longest_response = max(longest_response, rollout.max_new_tokens + 1)
        context = longest_prompt + rollout.max_new_tokens
        rollout_rows = rows = decode_rows(rollout.batch_size, selected * rollout.k, context)
        generation.append((rows, -(-rows // rollout.k), longest_prompt, rollout.max_new_tokens))
    samples = 1 + (evaluation.samples if evaluation.samples > 1 else 0)
    evals = min(training.epochs, math.ceil(planned / per_epoch))
    evals = (evals if training.eval_every_epoch else 1) + evaluation.before_training
    eval_rows = 0
    if test_prompts:
        prompt = max(len(p) for p in test_prompts)
        context = prompt + evaluation.max_new_tokens
        eval_rows = decode_rows(evaluation.batch_size, len(test_prompts) * samples, context)
        generation.append((eval_rows, eval_rows, prompt, evaluation.max_new_tokens))
    bucket = padded_length(longest, training.bucket_multiple)
    window = window_length(longest_response, bucket, training.bucket_multiple)
    plan = RunPlan(
        model=recipe.model.path,
        mode=training.mode,
        total_parameters=total_parameter_count(loaded.model),
        trainable_parameters=trainable_parameter_count(loaded.model),
        weight_bytes=weight_bytes,
        sequences_per_epoch=len(sequences),
        skipped_too_long=report.skipped_too_long,
        prompt_tokens_per_epoch=sum(s.prompt_length for s in sequences),
        response_tokens_per_epoch=sum(s.response_length for s in sequences),
        largest_bucket=bucket,
        steps_per_epoch=per_epoch,
        planned_steps=planned,
        max_planned_steps=max_planned,
        refreshes=refresh_count(per_epoch, recipe) if rasft else 0,
        rollout_problems_per_refresh=selected,
        rollout_tokens_per_refresh=selected * rollout.k * rollout.max_new_tokens,
        eval_tokens=len(test_prompts) * samples * evaluation.max_new_tokens * evals,
        memory=estimate_memory(loaded, recipe, bucket, window, generation),
        machine_memory=machine_memory_bytes(),
        rollout_rows=rollout_rows,
        eval_rows=eval_rows,
    )
    if probe_steps <= 0:
        return plan
    if rasft:
        prompts = [encode_prompt(tokenizer, p.question, system) for p in train_problems]
        rows = min(max(rollout_rows, 1), PROBE_MAX_ROWS)
        prompts = [p for p in prompts[: -(-rows // rollout.k)] for _ in range(rollout.k)][:rows]
        settings = sampling_settings(rollout)
    else:
        prompts = test_prompts[: min(max(eval_rows, 1), PROBE_MAX_ROWS)]
        settings = SamplingSettings(evaluation.max_new_tokens, batch_size=evaluation.batch_size)
    settings = replace(settings, max_new_tokens=min(settings.max_new_tokens, PROBE_NEW_TOKENS))
    return replace(
        plan, probe=run_probe(loaded, recipe, plan, sequences, prompts, settings, probe_steps)
    )


def run_probe(loaded, recipe, plan, sequences, prompts, settings, steps: int) -> ProbeResult:
    """Time `steps` optimizer steps and one generation of `prompts`, then restore the adapters."""
    from .reference import with_reference_logprobs

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
    optimizer = optim.AdamW(
        learning_rate=training.learning_rate, weight_decay=training.weight_decay
    )
    step = CompiledTrainStep(model, optimizer, loss_settings(recipe), training.grad_clip)
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
    if training.mode == "rasft":  # reference log-probs: demos once, new rollouts each refresh
        rollouts = plan.rollout_problems_per_refresh * recipe.rollout.k
        band = plan.sequences_per_epoch if recipe.rasft.selection == "nll_band" else 0
        forwards = -(-plan.sequences_per_epoch // training.batch_size)
        forwards += plan.refreshes * (-(-(rollouts + band) // training.batch_size))
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
        rollout_seconds=plan.refreshes * plan.rollout_tokens_per_refresh / rate if rate else 0.0,
        eval_seconds=plan.eval_tokens / rate if rate else 0.0,
    )


_HINTS = {
    "weights": "use a smaller model, or keep it quantized (model.dequantize: never)",
    "activations": "lower training.batch_size or data.max_seq_len, or lora.num_layers",
    "logits": "lower training.batch_size or data.max_seq_len",
    "KV cache": "lower rollout.batch_size, eval.batch_size or their max_new_tokens",
}


def check_memory(plan: RunPlan, share: float = MEMORY_LIMIT_SHARE) -> str | None:
    """An error message when the estimated peak exceeds `share` of the machine's memory."""
    m = plan.memory
    if m.peak <= share * plan.machine_memory:
        return None
    parts = {"weights": m.weights, "activations": m.activations, "logits": m.logits}
    parts["KV cache"] = m.kv_cache
    largest = max(parts, key=parts.get)
    return (
        f"estimated peak memory {format_bytes(m.peak)} exceeds {share:.0%} of this machine's "
        f"{format_bytes(plan.machine_memory)} (largest part: {largest}, {format_bytes(parts[largest])}); "
        f"{_HINTS[largest]}, or pass --force to start anyway"
    )
