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
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from rasft_mlx.console.progress import check
from rasft_mlx.generation.prefill import prefill_rows, shared_prefix


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


def decode(
    model,
    prompts,
    counts,
    settings,
    eos: mx.array,
    sampler,
    penalty,
    stats,
    reporter=None,
    limits: list[int] | None = None,
) -> tuple[list[int], list[np.ndarray]]:
    """Decode `counts[i]` rows of prompt i, each to at most `limits[i]` new tokens (None: all to
    `settings.max_new_tokens`). Returns each row's prompt index and its tokens (at most its
    limit, stop token and anything after it included). `penalty` (a `RepetitionPenalty` with no
    rows, or None) follows the batch's rows; `stats` (`EngineStats`) is added to; `reporter`
    (progress.PhaseReporter) hears of finished rows and tokens, and a stop request raises
    progress.PhaseInterrupted."""
    if limits is None:
        limits = [settings.max_new_tokens] * len(prompts)
    prompt_limit = np.array(limits, dtype=np.int64)
    max_rows = max(1, settings.max_rows)
    queue = WorkQueue(prompts, counts)
    row_prompt: list[int] = []
    if queue.rows_left == 0:
        return [], []
    started = time.perf_counter()
    prefix = shared_prefix(model, prompts) if settings.shared_prefix else None
    stats.prefill_seconds += time.perf_counter() - started

    def admit(room: int, step: int) -> _Batch:
        check("generation")
        admitted_at = time.perf_counter()
        group = queue.take(room)
        unique = [prompts[i] for i, _ in group]
        local = [j for j, (_, n) in enumerate(group) for _ in range(n)]
        cache = prefill_rows(model, unique, settings.prefill_tokens, prefix)
        index = mx.array(local)
        if len(local) > len(unique):
            for c in cache:
                c.filter(index)  # one cache row per sample, sharing its prompt's prefill
        ids = np.arange(len(row_prompt), len(row_prompt) + len(local))
        row_prompt.extend(group[j][0] for j in local)
        limit = prompt_limit[[group[j][0] for j in local]]
        y = mx.array([unique[j][-1] for j in local], dtype=mx.uint32)
        done = mx.zeros((len(local),), dtype=mx.bool_)
        if penalty is not None:
            penalty.extend(unique, index)
        mx.eval(y, [c.state for c in cache], penalty.state if penalty else None)
        stats.prompt_tokens += sum(len(p) for p in unique)
        stats.chunks += 1
        stats.prefill_seconds += time.perf_counter() - admitted_at
        rows = len(local)
        stopped = np.zeros(rows, dtype=np.bool_)
        return _Batch(cache, y, done, ids, np.full(rows, step), stopped, limit)

    refill_rows = max(1, int(settings.refill_fraction * max_rows))
    progress = _Progress(reporter, queue.rows_left)
    segments: list[tuple[np.ndarray, list[mx.array]]] = []  # (row numbers, per-step tokens)
    batch = admit(max_rows, 0)
    segments.append((batch.ids, []))
    pending = None  # the done mask of an earlier step, read while later steps run
    began, prefill_before = time.perf_counter(), stats.prefill_seconds
    step = 0
    while True:
        logits = model(batch.y[:, None], cache=batch.cache)[:, -1, :]
        if penalty is not None:
            logits = penalty.apply(logits)
        y = sampler(logits).astype(mx.uint32)
        if penalty is not None:
            penalty.update(y)
        batch.done = batch.done | (y[:, None] == eos[None]).any(axis=-1)
        batch.y = y
        segments[-1][1].append(y)
        mx.async_eval(y, batch.done)
        step += 1
        progress.row_steps += len(batch.ids)
        taken = step - batch.started
        full = taken >= batch.limit  # known on the host: no wait
        if queue.rows_left == 0 and full.all():
            break  # every row has its limit of new tokens
        read = pending is not None
        if read:
            batch.stopped |= np.array(pending)  # waits for an earlier step only
            pending = None
            check("generation")
        if read or (taken == batch.limit).any():
            finished = batch.stopped | full
            progress.finished(batch, finished, taken)
            done_rows = int(finished.sum())
            if queue.rows_left == 0 and done_rows == len(batch.ids):
                break
            room = max_rows - len(batch.ids) + done_rows
            refill = queue.rows_left > 0 and room >= min(refill_rows, queue.rows_left)
            compact = done_rows >= max(1, int(settings.compact_fraction * len(batch.ids)))
            if refill or compact:
                all_done = done_rows == len(batch.ids)
                if done_rows:
                    if penalty is not None:
                        penalty.keep(mx.array(np.flatnonzero(~finished)))
                    if not all_done:
                        batch.keep(np.flatnonzero(~finished))
                    stats.compactions += 1
                if refill and all_done:
                    batch = admit(room, step)
                elif refill:
                    batch.extend(admit(room, step))
                segments.append((batch.ids, []))
                mx.clear_cache()
        if step % settings.check_every == 0:
            pending = batch.done
    stats.decode_steps += step
    progress.close()

    pieces: list[list[np.ndarray]] = [[] for _ in row_prompt]
    for ids, steps in segments:
        if steps:
            table = np.array(mx.stack(steps, axis=1))
            for row, tokens in zip(ids.tolist(), table, strict=True):
                pieces[row].append(tokens)
    rows = [
        np.concatenate(p)[: prompt_limit[row_prompt[r]]] if p else np.zeros(0, np.int64)
        for r, p in enumerate(pieces)
    ]
    stats.decode_seconds += time.perf_counter() - began - (stats.prefill_seconds - prefill_before)
    stats.extra["row_steps"] = stats.extra.get("row_steps", 0) + progress.row_steps
    return row_prompt, rows
