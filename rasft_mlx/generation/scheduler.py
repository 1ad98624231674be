"""The rollout engine's decode loop, continuously batched: finished rows leave the batch and new
ones take their places, so the batch stays full until the work runs out.

Rows (one per sample) start in the order of `WorkQueue`, longest prompt first. Up to
`settings.max_rows` decode together; a prompt's samples that start together share its prefill
(`prefill.prefill_rows`, from the prompts' shared prefix). A row is finished at a stop token or
at its prompt's limit of new tokens (`max_new_tokens`, or a limit per prompt): the host knows the
second at once, and reads the first every few steps, one check behind (so the device never waits
on Python). Once enough rows are
finished, they are dropped from the batch and, while rows wait, as many new rows are prefilled
and appended (mlx-lm's `BatchKVCache.extend`, which left-pads the shorter caches). A batch
therefore never waits on its longest sequence: the chunked loop it replaces kept decoding a
chunk until its last row was done, at ever fewer rows and ever worse matmul efficiency.
"""

from __future__ import annotations

import time
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from rasft_mlx.console.progress import check
from rasft_mlx.generation.lanes import lane_blas_threads, lane_streams, on_lane
from rasft_mlx.generation.nucleus import Proposal, propose, settle
from rasft_mlx.generation.prefill import prefill_rows, shared_prefix
from rasft_mlx.runtime.blas import blas_thread_count, blas_threads, set_blas_threads


class WorkQueue:
    """Rows still to start, as (prompt index, samples), longest prompt first (neighbours in the
    queue have similar lengths, so a group prefilled together pads little); `take(room)` hands
    out up to `room` rows, splitting a prompt's samples when they do not all fit."""

    def __init__(self, prompts: list[list[int]], counts: list[int]):
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        self.items = deque((i, counts[i]) for i in order if counts[i] > 0)
        self.rows_left = sum(counts)

    def take(self, room: int) -> list[tuple[int, int]]:
        group = []
        while room > 0 and self.items:
            index, count = self.items[0]
            taken = min(count, room)
            group.append((index, taken))
            room -= taken
            self.rows_left -= taken
            if taken == count:
                self.items.popleft()
            else:
                self.items[0] = (index, count - taken)
        return group


@dataclass
class _Batch:
    cache: list  # a BatchKVCache per layer
    y: mx.array  # each row's next input token
    done: mx.array  # each row has drawn a stop token
    ids: np.ndarray  # each row's global row number
    started: np.ndarray  # the decode step each row started after
    stopped: np.ndarray  # `done` as last read on the host
    limit: np.ndarray  # each row's most new tokens

    def keep(self, rows: np.ndarray) -> None:
        index = mx.array(rows)
        for c in self.cache:
            c.filter(index)
        self.y, self.done = self.y[index], self.done[index]
        self.ids, self.started, self.stopped, self.limit = (
            a[rows] for a in (self.ids, self.started, self.stopped, self.limit)
        )

    def extend(self, other: _Batch) -> None:
        for c, new in zip(self.cache, other.cache, strict=True):
            c.extend(new)
        self.y = mx.concatenate([self.y, other.y])
        self.done = mx.concatenate([self.done, other.done])
        self.ids = np.concatenate([self.ids, other.ids])
        self.started = np.concatenate([self.started, other.started])
        self.stopped = np.concatenate([self.stopped, other.stopped])
        self.limit = np.concatenate([self.limit, other.limit])


class _Progress:
    """What the phase reporter hears: rows finished, tokens decoded, budget left unused."""

    def __init__(self, reporter, rows: int):
        self.reporter = reporter
        self.reported = np.zeros(rows, dtype=np.bool_)
        self.row_steps = self.row_steps_reported = 0

    def finished(self, batch: _Batch, finished: np.ndarray, taken: np.ndarray) -> None:
        ids = batch.ids
        new = finished & ~self.reported[ids]
        self.reported[ids[new]] = True
        if self.reporter is not None:
            unused = int(np.maximum(batch.limit[new] - taken[new], 0).sum())
            self.reporter.advance(int(new.sum()), self.row_steps - self.row_steps_reported, unused)
        self.row_steps_reported = self.row_steps

    def close(self) -> None:
        if self.reporter is not None:
            left = int((~self.reported).sum())
            self.reporter.advance(left, self.row_steps - self.row_steps_reported)


class _Shared:
    """What the lanes of one generation share: the prompts, the queue of rows still to start, the
    row numbering, the statistics and the progress reporter."""

    def __init__(self, model, prompts, counts, settings, limits, stats, reporter):
        self.model, self.prompts, self.settings, self.stats = model, prompts, settings, stats
        self.prompt_limit = np.array(limits, dtype=np.int64)
        self.queue = WorkQueue(prompts, counts)
        self.row_prompt: list[int] = []
        self.progress = _Progress(reporter, self.queue.rows_left)
        self.prefix = None
        self.prefill_threads = nullcontext  # lanes: the BLAS threads a prefill runs with


class _Lane:
    """A share of the rows decoding on one stream: its batch, repetition penalty and the tokens
    it drew. A step is `propose` (the model call and the draw, built, not run), `settle` (the
    tokens) and `advance` (the host's bookkeeping: finished rows, refills); `_step` runs each
    phase for every lane before the next, so the lanes' work is evaluated together."""

    def __init__(self, shared: _Shared, stream, max_rows: int, sampler, penalty, eos):
        self.shared, self.stream, self.max_rows = shared, stream, max_rows
        self.sampler, self.penalty, self.eos = sampler, penalty, eos
        self.segments: list[tuple[np.ndarray, list[mx.array]]] = []  # (row numbers, tokens)
        self.pending = None  # the done mask of an earlier step, read while later steps run
        self.step = 0
        self.batch: _Batch | None = None
        self.proposal: Proposal | None = None
        self.finished = False
        settings = shared.settings
        self.refill_rows = max(1, int(settings.refill_fraction * max_rows))

    def admit(self, room: int) -> _Batch:
        check("generation")
        shared, penalty = self.shared, self.penalty
        admitted_at = time.perf_counter()
        group = shared.queue.take(room)
        unique = [shared.prompts[i] for i, _ in group]
        local = [j for j, (_, n) in enumerate(group) for _ in range(n)]
        with shared.prefill_threads():
            cache = prefill_rows(
                shared.model, unique, shared.settings.prefill_tokens, shared.prefix
            )
        index = mx.array(local)
        if len(local) > len(unique):
            for c in cache:
                c.filter(index)  # one cache row per sample, sharing its prompt's prefill
        ids = np.arange(len(shared.row_prompt), len(shared.row_prompt) + len(local))
        shared.row_prompt.extend(group[j][0] for j in local)
        limit = shared.prompt_limit[[group[j][0] for j in local]]
        y = mx.array([unique[j][-1] for j in local], dtype=mx.uint32)
        done = mx.zeros((len(local),), dtype=mx.bool_)
        if penalty is not None:
            penalty.extend(unique, index)
        mx.eval(y, [c.state for c in cache], penalty.state if penalty else None)
        shared.stats.prompt_tokens += sum(len(p) for p in unique)
        shared.stats.chunks += 1
        shared.stats.prefill_seconds += time.perf_counter() - admitted_at
        rows = len(local)
        stopped = np.zeros(rows, dtype=np.bool_)
        return _Batch(cache, y, done, ids, np.full(rows, self.step), stopped, limit)

    def start(self, rows: int) -> None:
        if self.shared.queue.rows_left == 0:
            self.finished = True
            return
        self.batch = self.admit(min(rows, self.max_rows))
        self.segments.append((self.batch.ids, []))

    def propose(self) -> None:
        """Build the step's model call and draw (nothing evaluated yet)."""
        batch = self.batch
        logits = self.shared.model(batch.y[:, None], cache=batch.cache)[:, -1, :]
        if self.penalty is not None:
            logits = self.penalty.apply(logits)
        self.proposal = propose(self.sampler, logits)

    def settle(self) -> list[mx.array]:
        """The step's tokens (the sampler's host check done); returns what to evaluate."""
        batch, penalty = self.batch, self.penalty
        y = settle(self.sampler, self.proposal).astype(mx.uint32)
        self.proposal = None
        if penalty is not None:
            penalty.update(y)
        batch.done = batch.done | (y[:, None] == self.eos[None]).any(axis=-1)
        batch.y = y
        self.segments[-1][1].append(y)
        return [y, batch.done]

    def advance(self) -> None:
        """The host's bookkeeping after a step: finished rows, compaction, refills."""
        shared, batch, penalty, settings = (
            self.shared,
            self.batch,
            self.penalty,
            self.shared.settings,
        )
        queue, progress = shared.queue, shared.progress
        self.step += 1
        progress.row_steps += len(batch.ids)
        taken = self.step - batch.started
        full = taken >= batch.limit  # known on the host: no wait
        if queue.rows_left == 0 and full.all():
            self.finished = True  # every row has its limit of new tokens
            return
        read = self.pending is not None
        if read:
            batch.stopped |= np.array(self.pending)  # waits for an earlier step only
            self.pending = None
            check("generation")
        if read or (taken == batch.limit).any():
            finished = batch.stopped | full
            progress.finished(batch, finished, taken)
            done_rows = int(finished.sum())
            if queue.rows_left == 0 and done_rows == len(batch.ids):
                self.finished = True
                return
            room = self.max_rows - len(batch.ids) + done_rows
            refill = queue.rows_left > 0 and room >= min(self.refill_rows, queue.rows_left)
            compact = done_rows >= max(1, int(settings.compact_fraction * len(batch.ids)))
            if refill or compact:
                all_done = done_rows == len(batch.ids)
                if done_rows:
                    if penalty is not None:
                        penalty.keep(mx.array(np.flatnonzero(~finished)))
                    if not all_done:
                        batch.keep(np.flatnonzero(~finished))
                    shared.stats.compactions += 1
                if refill and all_done:
                    self.batch = batch = self.admit(room)
                elif refill:
                    batch.extend(self.admit(room))
                self.segments.append((batch.ids, []))
                mx.clear_cache()
        if self.step % settings.check_every == 0:
            self.pending = batch.done


def _step(lanes: list[_Lane]) -> None:
    """One decode step of every lane. All lanes' work goes to MLX in one evaluation: evaluated
    one lane at a time, MLX issues a lane's operations nearly to the end before it starts the
    next one's (measured: two lanes then take 1.4x one lane's time instead of 0.9x)."""
    for lane in lanes:
        with on_lane(lane.stream):
            lane.propose()
    if any(lane.proposal.covered is not None for lane in lanes):  # the sampler's host check
        mx.eval([(lane.proposal.covered, lane.proposal.drawn) for lane in lanes])
    pending = []
    for lane in lanes:
        with on_lane(lane.stream):
            pending += lane.settle()
    mx.async_eval(pending)
    for lane in lanes:
        with on_lane(lane.stream):
            lane.advance()


def decode(
    model,
    prompts,
    counts,
    settings,
    eos: mx.array,
    sampler,
    make_penalty,
    stats,
    reporter=None,
    limits: list[int] | None = None,
    lanes: int = 1,
) -> tuple[list[int], list[np.ndarray]]:
    """Decode `counts[i]` rows of prompt i, each to at most `limits[i]` new tokens (None: all to
    `settings.max_new_tokens`), in `lanes` lanes (`lanes.py`) of at most max_rows / lanes rows.
    Returns each row's prompt index and its tokens (at most its limit, stop token and anything
    after it included). `make_penalty()` gives a lane its `RepetitionPenalty` with no rows (or
    None); `stats` (`EngineStats`) is added to; `reporter` (progress.PhaseReporter) hears of
    finished rows and tokens, and a stop request raises progress.PhaseInterrupted. Lanes take
    their turns in a fixed order, so the same seed gives the same samples for a lane count."""
    if limits is None:
        limits = [settings.max_new_tokens] * len(prompts)
    shared = _Shared(model, prompts, counts, settings, limits, stats, reporter)
    if shared.queue.rows_left == 0:
        return [], []
    lanes = max(1, min(lanes, shared.queue.rows_left))
    stats.extra["lanes"] = lanes
    started = time.perf_counter()
    shared.prefix = shared_prefix(model, prompts) if settings.shared_prefix else None
    stats.prefill_seconds += time.perf_counter() - started
    lane_rows = -(-max(1, settings.max_rows) // lanes)
    workers = [
        _Lane(shared, stream, lane_rows, sampler, make_penalty(), eos)
        for stream in lane_streams(lanes)
    ]
    outer_threads = blas_thread_count()
    if lanes > 1 and outer_threads is not None:  # prefills at the full count (large matmuls)
        shared.prefill_threads = lambda: blas_threads(outer_threads)
    began, prefill_before = time.perf_counter(), stats.prefill_seconds
    first_share = -(-min(shared.queue.rows_left, lanes * lane_rows) // lanes)  # even at the start
    with lane_blas_threads(lanes):
        for lane in workers:
            with on_lane(lane.stream):
                lane.start(first_share)
        running = [lane for lane in workers if not lane.finished]
        while running:
            _step(running)
            still = [lane for lane in running if not lane.finished]
            if len(still) == 1 < len(running) and outer_threads is not None:
                set_blas_threads(outer_threads)  # the last lane alone: every core's BLAS
            running = still
    stats.decode_steps += sum(lane.step for lane in workers)
    shared.progress.close()

    row_prompt = shared.row_prompt
    pieces: list[list[np.ndarray]] = [[] for _ in row_prompt]
    for lane in workers:
        for ids, steps in lane.segments:
            if steps:
                table = np.array(mx.stack(steps, axis=1))
                for row, tokens in zip(ids.tolist(), table, strict=True):
                    pieces[row].append(tokens)
    rows = [
        np.concatenate(p)[: shared.prompt_limit[row_prompt[r]]] if p else np.zeros(0, np.int64)
        for r, p in enumerate(pieces)
    ]
    stats.decode_seconds += time.perf_counter() - began - (stats.prefill_seconds - prefill_before)
    stats.extra["row_steps"] = stats.extra.get("row_steps", 0) + shared.progress.row_steps
    return row_prompt, rows
