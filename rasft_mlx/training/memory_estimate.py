"""Peak-memory estimate of a run: the largest training step and the largest generation batch.

Shared by the trainer (which refuses a run that cannot fit before touching its run dir) and the
planner (which prints the estimate), so neither imports the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mlx.utils import tree_flatten

from rasft_mlx.console.display import format_bytes
from rasft_mlx.data.encoding import TrainingSequence
from rasft_mlx.models.adapters import adapted_layer_count, adapter_modules
from rasft_mlx.recipe.config import ROLLOUT_MODES, Recipe
from rasft_mlx.runtime.memory import (
    DECODE_LOGIT_COPIES,
    auto_decode_rows,
    kv_bytes_per_row,
    machine_memory_bytes,
    model_dims,
)
from rasft_mlx.training.batching import padded_length, window_length
from rasft_mlx.training.step_plan import loss_settings

# Fitted to mx.get_peak_memory() of compiled llama LoRA steps (hidden 64-512, 1-8 adapted layers,
# seq 128-512, vocab 320-32768, CPU float32): within ~10 % of each measured step peak.
ACTIVATION_FLOATS = (8.0, 6.0, 1.5)  # per token and layer: x hidden, x intermediate, x heads*seq
LOGIT_COPIES = 3  # float32 logits, log-softmax and its gradient
LOGIT_COPIES_WITH_REFERENCE = 8  # sft_kl / asft: a frozen forward's logits and the KL on top
DORA_WEIGHT_COPIES = 4.5  # DoRA materialises each adapted weight (and its norm) for backward
# Measured on full fine-tuning steps (mx.get_peak_memory, CPU float32), where the trained weights
# dominate: during a step, beside the params and AdamW's moments, the gradients, their clipped copy,
# and the update's new params and two moments exist together; one more with accumulation (the sum).
UPDATE_COPIES = 5
PREFILL_TOKENS = 8192  # the rollout engine's prompt tokens per prefill call
MEMORY_LIMIT_SHARE = 0.9


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of the largest training step and of the largest generation batch; peak = the max."""

    weights: int  # frozen base weights
    trainable_state: int  # trained params (adapters, or weights with lora.type full), 2 moments
    update_temporaries: (
        int  # gradients (+ their sum), clipped copy, the update's new params/moments
    )
    reference_weights: int  # a full fine-tune's frozen starting copy of the trained weights
    activations: int  # saved for backward by the adapted layers, largest bucket
    logits: int  # batch x seq x vocab x 4 bytes x copies
    kv_cache: int  # the largest rollout or eval batch at full length
    generation_temporaries: int  # decode logits and sampling, or prefill attention

    @property
    def resident(self) -> int:
        """What stays in memory the whole run: weights, trained state, the reference copy."""
        return self.weights + self.trainable_state + self.reference_weights

    @property
    def training(self) -> int:
        return self.resident + self.update_temporaries + self.activations + self.logits

    @property
    def generation(self) -> int:
        return self.resident + self.kv_cache + self.generation_temporaries

    @property
    def peak(self) -> int:
        return max(self.training, self.generation)


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
    full = recipe.lora.type == "full"
    layers = adapted_layer_count(model, recipe.lora)
    if full and recipe.lora.train_embeddings:  # the backward pass reaches the embeddings
        layers = len(model.layers)
    layers += 1  # + one layer's backward temporaries
    activations = layers * rows * bucket * per_token * act
    if recipe.training.grad_checkpoint:  # each layer's input kept, one layer's inside at a time
        activations = (layers * hidden + per_token) * rows * bucket * act
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
        trainable_state=trainable * 3,
        update_temporaries=trainable * (UPDATE_COPIES + (recipe.training.grad_accumulation > 1)),
        reference_weights=trainable if full else 0,
        activations=int(activations),
        logits=int(rows * window * vocab * 4 * copies),
        kv_cache=int(kv_cache),
        generation_temporaries=int(temporaries),
    )


@dataclass(frozen=True)
class RunMemory:
    """The estimate with the shapes it was made for."""

    memory: MemoryEstimate
    largest_bucket: int  # padded input length of the longest possible training row
    rollout_rows: int  # sequences decoded together in a refresh (0 without rollouts)
    eval_rows: int
    machine_memory: int


def estimate_run_memory(
    recipe: Recipe,
    loaded,
    sequences: Sequence[TrainingSequence],
    test_prompts: Sequence[Sequence[int]],
    rollout_problems: int,
) -> RunMemory:
    """The run's peak: training on `sequences` (plus rollouts of `rollout_problems` problems when
    RASFT), rollouts at rollout.batch_size and evaluation of `test_prompts` at eval.batch_size
    (0: as many rows as the free memory holds, as the run will size them)."""
    data, training, rollout, evaluation = recipe.data, recipe.training, recipe.rollout, recipe.eval
    weight_bytes = sum(v.nbytes for _, v in tree_flatten(loaded.model.parameters()))

    def decode_rows(batch_size: int, wanted: int, context: int) -> int:
        if batch_size:
            return min(batch_size, wanted)
        free = machine_memory_bytes() - weight_bytes  # what the run finds free (batch_size 0)
        return min(wanted, auto_decode_rows(loaded.model, context, free_bytes=free))

    longest_prompt = max(s.prompt_length for s in sequences)
    longest = max(len(s.tokens) for s in sequences)
    longest_response = max(s.response_length for s in sequences)
    generation = []
    rollout_rows = 0
    if training.mode in ROLLOUT_MODES:
        longest = max(longest, min(longest_prompt + rollout.max_new_tokens + 1, data.max_seq_len))
        longest_response = max(longest_response, rollout.max_new_tokens + 1)
        context = longest_prompt + rollout.max_new_tokens
        rollout_rows = rows = decode_rows(rollout.batch_size, rollout_problems * rollout.k, context)
        generation.append((rows, -(-rows // rollout.k), longest_prompt, rollout.max_new_tokens))
    samples = 1 + (evaluation.samples if evaluation.samples > 1 else 0)
    eval_rows = 0
    if test_prompts:
        prompt = max(len(p) for p in test_prompts)
        context = prompt + evaluation.max_new_tokens
        eval_rows = decode_rows(evaluation.batch_size, len(test_prompts) * samples, context)
        generation.append((eval_rows, eval_rows, prompt, evaluation.max_new_tokens))
    bucket = padded_length(longest, training.bucket_multiple)
    window = window_length(longest_response, bucket, training.bucket_multiple)
    return RunMemory(
        memory=estimate_memory(loaded, recipe, bucket, window, generation),
        largest_bucket=bucket,
        rollout_rows=rollout_rows,
        eval_rows=eval_rows,
        machine_memory=machine_memory_bytes(),
    )


_HINTS = {
    "weights": "use a smaller model, or keep it quantized (model.dequantize: never)",
    "activations": "lower training.batch_size or data.max_seq_len, or lora.num_layers",
    "trained weights": "train fewer weights: lora.type lora, or a smaller lora.num_layers",
    "logits": "lower training.batch_size or data.max_seq_len",
    "KV cache": "lower rollout.batch_size, eval.batch_size or their max_new_tokens",
}


def check_memory(
    m: MemoryEstimate, machine_memory: int, share: float = MEMORY_LIMIT_SHARE
) -> str | None:
    """An error message when the estimated peak exceeds `share` of the machine's memory."""
    if m.peak <= share * machine_memory:
        return None
    parts = {"weights": m.weights, "activations": m.activations, "logits": m.logits}
    parts["trained weights"] = m.trainable_state + m.update_temporaries + m.reference_weights
    parts["KV cache"] = m.kv_cache
    largest = max(parts, key=parts.get)
    return (
        f"estimated peak memory {format_bytes(m.peak)} exceeds {share:.0%} of this machine's "
        f"{format_bytes(machine_memory)} (largest part: {largest}, {format_bytes(parts[largest])}); "
        f"{_HINTS[largest]}, or pass --force to start anyway"
    )
