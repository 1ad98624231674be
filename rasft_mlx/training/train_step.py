"""The compiled optimizer step: weighted loss + gradients per micro-batch, then clip and AdamW update."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_map, tree_unflatten

import rasft_mlx.runtime.distributed as distributed
from rasft_mlx.models.adapters import dropout_mode, reference_policy
from rasft_mlx.models.response_logits import ResponseLogits
from rasft_mlx.recipe.config import TrainingConfig
from rasft_mlx.training.batching import Batch
from rasft_mlx.training.losses import LossSettings, loss_terms


def build_optimizer(config: TrainingConfig, learning_rate: float) -> optim.AdamW:
    """AdamW as the recipe asks: bias correction on by default (torch's AdamW, the authors')."""
    return optim.AdamW(
        learning_rate=learning_rate,
        weight_decay=config.weight_decay,
        bias_correction=config.adam_bias_correction,
    )


def build_lr_schedule(config: TrainingConfig, total_steps: int):
    """Linear warmup from 0 to the peak, then cosine decay to peak * min_lr_ratio over
    `total_steps` (or training.lr_schedule_steps when set, the authors' fixed horizon)."""
    total_steps = config.lr_schedule_steps or total_steps
    peak = config.learning_rate
    warmup = min(config.warmup_steps, max(total_steps - 1, 0))
    decay = optim.cosine_decay(peak, max(total_steps - warmup, 1), peak * config.min_lr_ratio)
    if warmup == 0:
        return decay
    return optim.join_schedules([optim.linear_schedule(0.0, peak, warmup), decay], [warmup])


def global_norm(tree) -> mx.array:
    return mx.sqrt(sum((g.astype(mx.float32) ** 2).sum() for _, g in tree_flatten(tree)))


@dataclass(frozen=True)
class StepResult:
    loss: float
    tokens: int
    grad_norm: float
    ratio_at_min: int  # sequences whose clipped inverse ratio sits on its lower bound
    ratio_at_max: int
    sequences: int


NORMALIZATIONS = ("token_mean", "micro_batch_mean")


class CompiledTrainStep:
    """Gradient accumulation over micro-batches, normalised one of two ways.

    The per-batch function returns the *sum* of the loss and its gradient. "token_mean" divides
    the accumulated sum by the optimizer step's token count, so N micro-batches equal one big
    batch. "micro_batch_mean" (the authors') divides each micro-batch by its own token count and
    the total by the number of micro-batches, so every micro-batch weighs the same.

    Over several ranks each holds some rows of every micro-batch (None: none of them); the sums
    of gradients, loss, tokens and ratio counts are all-reduced before the division, so the step
    is the one-process step on the whole global batch (a micro-batch's own token count, too, is
    summed over ranks first).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: optim.Optimizer,
        settings: LossSettings,
        grad_clip: float,
        normalization: str = "token_mean",
    ):
        if normalization not in NORMALIZATIONS:
            raise ValueError(
                f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}"
            )
        self.model = model
        self.optimizer = optimizer
        self.settings = settings
        self.grad_clip = grad_clip
        self.per_micro_batch = normalization == "micro_batch_mean"
        optimizer.init(model.trainable_parameters())
        logits_at = ResponseLogits(model)

        def batch_loss(model, inputs, positions, targets, mask, weights, reference_logprobs):
            logits = logits_at(inputs, positions)
            reference_logits = None
            if settings.needs_reference_logits:
                with reference_policy(model):
                    reference_logits = mx.stop_gradient(logits_at(inputs, positions))
            total, count, rho = loss_terms(
                logits,
                targets,
                mask,
                settings,
                sequence_weights=weights,
                reference_logprobs=reference_logprobs,
                reference_logits=reference_logits,
            )
            rows = mask.sum(axis=-1) > 0
            at_min = ((rho <= settings.ratio_min + 1e-6) & rows).sum()
            at_max = ((rho >= settings.ratio_max - 1e-6) & rows).sum()
            return total, count, mx.stack([at_min, at_max, rows.sum()])

        loss_and_grad = nn.value_and_grad(model, batch_loss)
        grad_state = [model.state, mx.random.state]

        @partial(mx.compile, inputs=grad_state, outputs=grad_state)
        def gradients(inputs, positions, targets, mask, sequence_weights, reference_logprobs):
            (total, count, clip_counts), grads = loss_and_grad(
                model, inputs, positions, targets, mask, sequence_weights, reference_logprobs
            )
            return total, count, clip_counts, grads

        update_state = [model.state, optimizer.state]

        @partial(mx.compile, inputs=update_state, outputs=update_state)
        def update(grads, token_count):
            grads = tree_map(lambda g: g / token_count, grads)
            if grad_clip > 0:
                grads, norm = optim.clip_grad_norm(grads, grad_clip)
            else:
                norm = global_norm(grads)
            optimizer.update(model, grads)
            return norm

        self._gradients = gradients
        self._update = update

    def __call__(self, batches: list[Batch]) -> StepResult:
        """One optimizer step over the micro-batches, with adapter dropout on."""
        with dropout_mode(self.model, True):
            return self._step(batches)

    def _step(self, batches: list[Batch | None]) -> StepResult:
        accumulated = None
        loss_total = mx.array(0.0)
        token_total = mx.array(0.0)
        clip_total = mx.zeros((3,), dtype=mx.int32)
        for batch in batches:
            if batch is None:  # this rank holds no row of this micro-batch
                total, count, clip_counts, grads = mx.array(0.0), mx.array(0.0), None, None
            else:
                total, count, clip_counts, grads = self._gradients(
                    batch.inputs,
                    batch.positions,
                    batch.targets,
                    batch.mask,
                    batch.sequence_weights,
                    batch.reference_logprobs,
                )
            if self.per_micro_batch:
                own_tokens = mx.maximum(distributed.all_sum(count, "token counts"), 1.0)
                if grads is not None:
                    grads = tree_map(lambda g, n=own_tokens: g / n, grads)
                total = total / own_tokens
            if grads is not None:
                accumulated = grads if accumulated is None else tree_map(mx.add, accumulated, grads)
                clip_total = clip_total + clip_counts
            loss_total = loss_total + total
            token_total = token_total + count
            if len(batches) > 1:
                mx.eval(accumulated, loss_total, token_total, clip_total)
        if distributed.distributed():
            accumulated, loss_total, token_total, clip_total = self._sum_over_ranks(
                accumulated, loss_total, token_total, clip_total
            )
        if self.per_micro_batch:
            denominator = mx.array(float(len(batches)))
        else:
            denominator = mx.maximum(token_total, 1.0)
        norm = self._update(accumulated, denominator)
        mx.eval(norm, loss_total, token_total, clip_total, self.model.state, self.optimizer.state)
        tokens = int(token_total.item())
        at_min, at_max, sequences = clip_total.tolist()
        loss = (loss_total / denominator).item()
        return StepResult(loss, tokens, norm.item(), at_min, at_max, sequences)

    def _sum_over_ranks(self, grads, loss_total, token_total, clip_total):
        """One all-reduce of the gradient sums (zeros where a rank had no rows) and one of the
        step's scalars; returns them summed over ranks."""
        if grads is None:
            grads = tree_map(mx.zeros_like, self.model.trainable_parameters())
        flat = tree_flatten(grads)
        summed = distributed.sum_tree([g for _, g in flat], "gradients")
        grads = tree_unflatten([(k, g) for (k, _), g in zip(flat, summed, strict=True)])
        scalars = mx.concatenate(
            [mx.stack([loss_total, token_total]), clip_total.astype(mx.float32)]
        )
        scalars = distributed.all_sum(scalars, "step scalars")
        return grads, scalars[0], scalars[1], scalars[2:].astype(mx.int32)
