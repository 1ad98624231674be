"""Length-bucketed batches of fixed shape, so the compiled step traces once per bucket shape.

A batch holds the padded inputs and, separately, the *response window*: the input positions whose
next-token outputs are trained, with their targets, mask and reference log-probs. The loss needs
vocabulary logits only there, so the model's hidden states are gathered at those positions before
the vocabulary projection (prompt tokens and padding never reach the largest matmul and the
log-softmax). The window length is bucketed in quarters of the input length, which bounds the
shapes the compiled step sees to four per input bucket.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from rasft_mlx.data.encoding import TrainingSequence

SORT_WINDOW_BATCHES = 16


@dataclass
class Batch:
    inputs: mx.array  # (B, L) token ids, zero-padded
    positions: mx.array  # (B, W) input positions whose next-token output is trained
    targets: mx.array  # (B, W) the tokens those positions predict
    mask: mx.array  # (B, W) 1 for response tokens, 0 for padding
    sequence_weights: mx.array
    reference_logprobs: mx.array  # (B, W)
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


def window_length(longest_response: int, length: int, bucket_multiple: int) -> int:
    """Response-window length: the longest response's targets, rounded up to a quarter of the
    input length (itself rounded up to the bucket multiple), at most the input length."""
    quarter = max(bucket_multiple, math.ceil(length / 4 / bucket_multiple) * bucket_multiple)
    return min(length, max(quarter, math.ceil(longest_response / quarter) * quarter))


def collate(sequences: list[TrainingSequence], batch_size: int, bucket_multiple: int) -> Batch:
    """Pad to (batch_size, bucket length) inputs and a (batch_size, window) response window;
    padding rows and window padding get mask 0."""
    length = padded_length(max(len(s.tokens) for s in sequences), bucket_multiple)
    spans = [len(s.tokens) - s.prompt_length for s in sequences]
    window = window_length(max(spans), length, bucket_multiple)
    tokens = np.zeros((batch_size, length), dtype=np.int32)
    positions = np.zeros((batch_size, window), dtype=np.int32)
    targets = np.zeros((batch_size, window), dtype=np.int32)
    mask = np.zeros((batch_size, window), dtype=np.float32)
    weights = np.zeros((batch_size,), dtype=np.float32)
    reference = np.zeros((batch_size, window), dtype=np.float32)
    for row, (sequence, span) in enumerate(zip(sequences, spans, strict=True)):
        n = len(sequence.tokens)
        tokens[row, : n - 1] = sequence.tokens[:-1]
        # input position t predicts token t + 1: the response starts at position prompt_length - 1
        first = sequence.prompt_length - 1
        positions[row, :span] = np.arange(first, first + span)
        targets[row, :span] = sequence.tokens[first + 1 :]
        mask[row, :span] = 1.0
        weights[row] = sequence.weight
        if sequence.reference_logprobs is not None:
            reference[row, :span] = sequence.reference_logprobs
    return Batch(
        inputs=mx.array(tokens),
        positions=mx.array(positions),
        targets=mx.array(targets),
        mask=mx.array(mask),
        sequence_weights=mx.array(weights),
        reference_logprobs=mx.array(reference),
        problem_ids=[s.problem_id for s in sequences],
        sources=[s.source for s in sequences],
        token_count=int(mask.sum()),
        input_token_count=sum(len(s.tokens) - 1 for s in sequences),
    )
