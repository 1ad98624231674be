"""Per-token log-probs of fixed sequences under the frozen reference (`reference_policy`: adapters
off, or a full fine-tune's starting weights), computed once, in decode lanes on a CPU."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace

import mlx.core as mx
import numpy as np

import rasft_mlx.runtime.distributed as distributed
from rasft_mlx.console.progress import check, phase
from rasft_mlx.data.encoding import TrainingSequence
from rasft_mlx.generation.lanes import blas_threads_per_lane, default_lanes, lane_streams, on_lane
from rasft_mlx.models.adapters import dropout_mode, reference_policy
from rasft_mlx.models.response_logits import ResponseLogits
from rasft_mlx.runtime.blas import blas_threads
from rasft_mlx.training.batching import collate
from rasft_mlx.training.losses import token_logprobs


def lane_shares(indices: list[int], lanes: int) -> list[list[int]]:
    """A batch's rows dealt to the lanes in turn (the batch is length-sorted, so each lane's share
    spans the same lengths); empty shares left out."""
    return [share for share in (indices[lane::lanes] for lane in range(lanes)) if share]


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
    threads = blas_threads(blas_threads_per_lane(lanes)) if lanes > 1 else nullcontext()
    by_index: dict[int, np.ndarray] = {}
    with dropout_mode(model, False), threads, phase(label, len(own)) as reporter:
        for start in range(0, len(own), batch_size):
            check(label)
            shares = lane_shares(own[start : start + batch_size], lanes)
            outputs = []
            for stream, share in zip(streams, shares, strict=False):
                with on_lane(stream):
                    batch = collate([sequences[i] for i in share], len(share), bucket_multiple)
                    logits = logits_at(batch.inputs, batch.positions)
                    outputs.append(token_logprobs(logits, batch.targets))
            mx.eval(outputs)  # the lanes' forwards in one evaluation, so they run at once
            for share, logprobs in zip(shares, outputs, strict=True):
                logprobs = np.array(logprobs)
                for row, index in enumerate(share):
                    by_index[index] = logprobs[row, : sequences[index].response_length].copy()
            mx.clear_cache()
            reporter.advance(sum(len(share) for share in shares))
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
