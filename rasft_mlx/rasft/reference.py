"""Per-token log-probs of fixed sequences under the frozen reference (`reference_policy`: adapters
off, or a full fine-tune's starting weights), computed once, in decode lanes on a CPU."""

from __future__ import annotations

from dataclasses import replace

import mlx.core as mx
import numpy as np

import rasft_mlx.runtime.distributed as distributed
from rasft_mlx.console.progress import check, phase
from rasft_mlx.data.encoding import TrainingSequence
from rasft_mlx.generation.lanes import (
    default_lanes,
    forward_in_lanes,
    lane_blas_threads,
    lane_streams,
)
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
    lanes: int | None = None,
) -> list[np.ndarray]:
    """log pi(y_t) of each sequence's response tokens under the model as it is now (dropout off),
    reported as the phase `label`; a stop request raises progress.PhaseInterrupted. Over several
    ranks each computes whole batches of the length-sorted order (the batches one process would
    form) and the results are gathered.

    On a CPU each batch's rows are split over decode lanes (`generation.lanes`; `lanes` None:
    `default_lanes`), each share on its own stream with its own BLAS thread, evaluated together:
    MLX runs a stream's non-matmul work (SiLU's exp, attention's softmax, norms) on one thread,
    so in one lane a core idles for much of each forward. A row's log-probs may then differ from
    one lane's in the last bits (its share is padded to its own length), the same in every run.
    """
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i].tokens))
    own = [order[i] for i in distributed.shard_indices(len(order), batch_size)]
    logits_at = ResponseLogits(model)
    lanes = default_lanes(model) if lanes is None else lanes
    streams = lane_streams(lanes)

    def share_logprobs(share: list[int]) -> mx.array:
        batch = collate([sequences[i] for i in share], len(share), bucket_multiple)
        return token_logprobs(logits_at(batch.inputs, batch.positions), batch.targets)

    by_index: dict[int, np.ndarray] = {}
    with dropout_mode(model, False), lane_blas_threads(lanes), phase(label, len(own)) as reporter:
        for start in range(0, len(own), batch_size):
            check(label)
            rows = own[start : start + batch_size]
            for share, logprobs in forward_in_lanes(rows, streams, share_logprobs):
                logprobs = np.array(logprobs)
                for row, index in enumerate(share):
                    by_index[index] = logprobs[row, : sequences[index].response_length].copy()
            mx.clear_cache()
            reporter.advance(len(rows))
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
