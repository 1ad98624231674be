"""Length-bucketed batches of fixed shape, so the compiled step traces once per bucket length."""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from .encoding import TrainingSequence

SORT_WINDOW_BATCHES = 16


@dataclass
class Batch:
    inputs: mx.array
    targets: mx.array
    mask: mx.array
    sequence_weights: mx.array
    reference_logprobs: mx.array
    problem_ids: list[str]
    sources: list[str]
    token_count: int
    input_token_count: int


def padded_length(longest: int, bucket_multiple: int) -> int:
    """Input length (tokens minus one) rounded up to the bucket multiple."""
    return max(bucket_multiple, math.ceil((longest - 1) / bucket_multiple) * bucket_multiple)


def plan_batches(
    lengths: list[int], batch_size: int, rng: np.random.Generator, shuffle: bool = True
) -> list[list[int]]:
    """Index batches of similar lengths: shuffle, sort inside windows, shuffle the batch order."""
    order = rng.permutation(len(lengths)) if shuffle else np.arange(len(lengths))
    window = batch_size * SORT_WINDOW_BATCHES
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window].tolist(), key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def collate(sequences: list[TrainingSequence], batch_size: int, bucket_multiple: int) -> Batch:
    """Pad to (batch_size, bucket length); padding rows and prompt tokens get mask 0."""
    length = padded_length(max(len(s.tokens) for s in sequences), bucket_multiple)
    tokens = np.zeros((batch_size, length + 1), dtype=np.int32)
    mask = np.zeros((batch_size, length), dtype=np.float32)
    weights = np.zeros((batch_size,), dtype=np.float32)
    reference = np.zeros((batch_size, length), dtype=np.float32)
    for row, sequence in enumerate(sequences):
        n = len(sequence.tokens)
        tokens[row, :n] = sequence.tokens
        # target position t predicts token t + 1: the response starts at target prompt_length - 1
        first, last = sequence.prompt_length - 1, n - 1
        mask[row, first:last] = 1.0
        weights[row] = sequence.weight
        if sequence.reference_logprobs is not None:
            reference[row, first:last] = sequence.reference_logprobs
    return Batch(
        inputs=mx.array(tokens[:, :-1]),
        targets=mx.array(tokens[:, 1:]),
        mask=mx.array(mask),
        sequence_weights=mx.array(weights),
        reference_logprobs=mx.array(reference),
        problem_ids=[s.problem_id for s in sequences],
        sources=[s.source for s in sequences],
        token_count=int(mask.sum()),
        input_token_count=sum(len(s.tokens) - 1 for s in sequences),
    )
