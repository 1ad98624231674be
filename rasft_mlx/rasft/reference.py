"""Per-token log-probs of fixed sequences under the frozen reference (`reference_policy`: adapters
off, or a full fine-tune's starting weights), computed once."""

from __future__ import annotations

from dataclasses import replace

import mlx.core as mx
import numpy as np

import rasft_mlx.runtime.distributed as distributed
from rasft_mlx.console.progress import check, phase
from rasft_mlx.data.encoding import TrainingSequence
from rasft_mlx.models.adapters import dropout_mode, reference_policy
from rasft_mlx.models.response_logits import ResponseLogits
from rasft_mlx.training.batching import collate
from rasft_mlx.training.losses import token_logprobs


def response_logprobs(
    model,
    sequences: list[TrainingSequence],
    batch_size: int,
    bucket_multiple: int,
    label: str = "log-probs",
) -> list[np.ndarray]:
    """log pi(y_t) of each sequence's response tokens under the model as it is now (dropout off),
    reported as the phase `label`; a stop request raises progress.PhaseInterrupted. Over several
    ranks each computes whole batches of the length-sorted order (the batches one process would
    form) and the results are gathered."""
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i].tokens))
    own = [order[i] for i in distributed.shard_indices(len(order), batch_size)]
    logits_at = ResponseLogits(model)
    by_index: dict[int, np.ndarray] = {}
    with dropout_mode(model, False), phase(label, len(own)) as reporter:
        for start in range(0, len(own), batch_size):
            check(label)
            indices = own[start : start + batch_size]
            chunk = [sequences[i] for i in indices]
            batch = collate(chunk, len(chunk), bucket_multiple)
            logits = logits_at(batch.inputs, batch.positions)
            logprobs = np.array(token_logprobs(logits, batch.targets))
            for row, index in enumerate(indices):
                by_index[index] = logprobs[row, : sequences[index].response_length].copy()
            mx.clear_cache()
            reporter.advance(len(indices))
    if distributed.distributed():
        shares = distributed.all_gather_arrays([by_index[i] for i in own], "log-probs")
        by_index = dict(enumerate(distributed.unshard(shares, len(order), batch_size)))
        by_index = {order[i]: values for i, values in by_index.items()}
    return [by_index[i] for i in range(len(sequences))]


def with_reference_logprobs(
    model, sequences: list[TrainingSequence], batch_size: int, bucket_multiple: int
) -> list[TrainingSequence]:
    """The sequences with `reference_logprobs` filled in from a forward of the reference policy."""
    with reference_policy(model):
        logprobs = response_logprobs(
            model, sequences, batch_size, bucket_multiple, label="reference log-probs"
        )
    return [
        replace(sequence, reference_logprobs=values)
        for sequence, values in zip(sequences, logprobs, strict=True)
    ]
