"""How a recipe becomes optimizer steps: the sequence sources, batches per step, the step plan."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from rasft_mlx.data.encoding import TrainingSequence
from rasft_mlx.recipe.config import Recipe
from rasft_mlx.training.batching import plan_batches
from rasft_mlx.training.losses import LossSettings


class SequenceSource(Protocol):
    """Supplies each epoch's training sequences (the RASFT refresh plugs in here).

    `shuffle`: batches in a random order (True) or in the order given (the authors' queue).
    """

    shuffle: bool
    expert_count: int  # expert demos: the first step plan's estimate

    def epoch_sequences(self, epoch: int, room: int | None = None) -> list[TrainingSequence]:
        """The epoch's sequences; `room`: how many the step cap leaves to train (None: no cap)."""
        ...

    def refreshed_sequences(self, step: int, progress: float) -> list[TrainingSequence] | None:
        """New sequences after optimizer step `step`, or None to keep the current queue. The loop
        keeps the demos not yet trained this epoch and every non-demo sequence returned."""
        ...

    def continued_sequences(self, step: int, progress: float) -> list[TrainingSequence] | None:
        """When the epoch's queue runs dry: more sequences for the same epoch, or None to end it."""
        ...


@dataclass
class ExpertSource:
    """SFT-family modes: the expert demos, weight 1, every epoch."""

    sequences: list[TrainingSequence]
    shuffle: bool = True

    @property
    def expert_count(self) -> int:
        return len(self.sequences)

    def epoch_sequences(self, epoch: int, room: int | None = None) -> list[TrainingSequence]:
        return self.sequences

    def refreshed_sequences(self, step: int, progress: float) -> list[TrainingSequence] | None:
        return None

    def continued_sequences(self, step: int, progress: float) -> list[TrainingSequence] | None:
        return None


def room_for_sequences(training, step: int) -> int | None:
    """How many sequences the optimizer steps left before training.max_steps train (None: no
    cap): the room a RASFT refresh sizes its rollouts to (`rasft.trim_capped_refresh`)."""
    if training.max_steps is None:
        return None
    return max(training.max_steps - step, 0) * training.batch_size * training.grad_accumulation


def untrained_part(
    sequences: list[TrainingSequence],
    groups: list,
    position: int,
    refreshed: list[TrainingSequence],
) -> list[TrainingSequence]:
    """After a refresh inside an epoch: the refreshed demos of problems whose demo is still ahead
    in this epoch's plan (groups[position:]), then every refreshed non-demo sequence. Demos
    already trained this epoch are not trained again; pending ones are not lost."""
    ahead = {
        sequences[i].problem_id
        for group in groups[position:]
        for batch in group
        for i in batch
        if sequences[i].source == "expert"
    }
    return [s for s in refreshed if s.source != "expert" or s.problem_id in ahead]


def queue_rest(sequences: list[TrainingSequence], groups: list, position: int) -> list:
    """The sequences of groups[position:], in plan order: the queue not yet trained."""
    return [sequences[i] for group in groups[position:] for batch in group for i in batch]


def loss_settings(recipe: Recipe) -> LossSettings:
    return LossSettings(
        mode=recipe.training.mode,
        kl_lambda=recipe.training.kl_lambda,
        profit_threshold=recipe.training.profit_threshold,
        dft_factor=recipe.training.dft_factor,
        ratio_min=recipe.rasft.ratio_min,
        ratio_max=recipe.rasft.ratio_max,
    )


def steps_per_epoch(sequence_count: int, recipe: Recipe) -> int:
    batches = math.ceil(sequence_count / recipe.training.batch_size)
    return math.ceil(batches / recipe.training.grad_accumulation)


def planned_steps(first_epoch_sequences: int, recipe: Recipe) -> int:
    """Steps for the LR schedule; RASFT epochs vary in size, so the first epoch is the estimate."""
    planned = steps_per_epoch(first_epoch_sequences, recipe) * recipe.training.epochs
    if recipe.training.max_steps is not None:
        planned = min(planned, recipe.training.max_steps)
    return max(planned, 1)


def step_groups(
    sequences, training, rng, shuffle: bool = True, lead_sizes: Sequence[int] = ()
) -> list[list[list[int]]]:
    """Index batches grouped per optimizer step (grad_accumulation micro-batches each); with
    shuffle False, batches follow the sequences' order exactly, the first ones of `lead_sizes`
    (micro-batches carried over from the last queue, see `trainable_groups`)."""
    lengths = [len(s.tokens) for s in sequences]
    if shuffle:
        batches = plan_batches(lengths, training.batch_size, rng)
    else:
        size, start, batches = training.batch_size, 0, []
        for lead in lead_sizes:
            batches.append(list(range(start, start + lead)))
            start += lead
        batches += [
            list(range(i, min(i + size, len(lengths)))) for i in range(start, len(lengths), size)
        ]
    size = training.grad_accumulation
    return [batches[i : i + size] for i in range(0, len(batches), size)]


def trainable_groups(groups: list, accumulation: int, carry: bool) -> int:
    """How many of a queue's steps are taken: all, or with `carry` (the authors' queue) all but a
    last short one, whose micro-batches go on into the next queue: the authors' micro-step
    counter runs across refills (T:1586-1589) and a last short step is never taken."""
    if carry and groups and len(groups[-1]) < accumulation:
        return len(groups) - 1
    return len(groups)


def carried_batches(sequences: list, groups: list, position: int) -> list[list]:
    """The untrained micro-batches of groups[position:], as lists of sequences."""
    return [[sequences[i] for i in batch] for group in groups[position:] for batch in group]
