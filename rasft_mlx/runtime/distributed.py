"""One run over several processes (`mlx.launch`): ranks, sharding, all-reduces and payload gathers."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter

import mlx.core as mx
import numpy as np

_group = None
# Bytes this rank sent through collectives, by what they carried, and the seconds they took
# (read by benchmarks). Gathers are synchronous and always timed; an all-reduce is lazy, so it is
# timed (evaluated on the spot, after a barrier that takes the wait for the slowest rank) only
# with RASFT_MLX_TIME_COLLECTIVES=1.
exchanged_bytes: Counter = Counter()
exchanged_seconds: Counter = Counter()
TIME_COLLECTIVES = os.environ.get("RASFT_MLX_TIME_COLLECTIVES") == "1"
LAUNCH_VARIABLES = ("MLX_RANK", "MLX_HOSTFILE", "MLX_JACCL_COORDINATOR", "NCCL_HOST_IP")


class DistributedError(RuntimeError):
    """The ranks of a launched run could not form their group (a rank missing or unreachable)."""


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def group():
    """The global group; `mx.distributed.init()` once (a group of one without a launcher)."""
    global _group
    if _group is None:
        _group = _join_ranks()
    return _group


def _join_ranks():
    """`mx.distributed.init()`, with SIGINT/SIGTERM kept from the backend's threads (a send or
    receive cut short by a signal loses the ring's step) but not from the user.

    The threads inherit the mask of the thread that creates them, so init runs on a helper
    thread that blocks both. It holds the GIL until every rank has joined, which can be for ever
    when a rank never starts (rank 0 waits without a limit), so meanwhile this thread leaves both
    signals to the default action: Ctrl-C or a SIGTERM ends the waiting process at once.
    """
    outcome: dict = {}

    def join() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            outcome["group"] = mx.distributed.init()
        except RuntimeError as error:
            outcome["error"] = error

    on_main_thread = threading.current_thread() is threading.main_thread()
    handlers = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS} if on_main_thread else {}
    for sig in handlers:
        signal.signal(sig, signal.SIG_DFL)
    try:
        joining = threading.Thread(target=join, name="rasft-join-ranks")
        joining.start()
        joining.join()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if "error" in outcome:
        where = [f"{key}={os.environ[key]}" for key in LAUNCH_VARIABLES if os.environ.get(key)]
        raise DistributedError(
            f"could not join the other ranks ({', '.join(where) or 'no launcher variables'}): "
            f"{outcome['error']}. Every rank must be running (start them together with "
            "mlx.launch) and each address in the hostfile reachable"
        ) from outcome["error"]
    return outcome["group"]


def world_size() -> int:
    return group().size()


def rank() -> int:
    return group().rank()


def is_main() -> bool:
    """Rank 0 writes the run directory, prints and saves; the others only compute."""
    return rank() == 0


def distributed() -> bool:
    return world_size() > 1


def shard_indices(count: int, block: int = 1, of_rank: int | None = None) -> list[int]:
    """Indices 0..count-1 in blocks of `block` consecutive ones, dealt to the ranks in turn;
    this rank's (or `of_rank`'s) share, in order. The shares are disjoint and cover them all."""
    world = world_size()
    own = rank() if of_rank is None else of_rank
    block = max(1, block)
    return [
        i
        for start in range(own * block, count, world * block)
        for i in range(start, min(start + block, count))
    ]


def shard(items: list, block: int = 1) -> list:
    return [items[i] for i in shard_indices(len(items), block)]


def unshard(shares: list[list], count: int, block: int = 1) -> list:
    """The inverse of `shard`: every rank's share (rank order) back into the original order."""
    merged: list = [None] * count
    for owner, share in enumerate(shares):
        for index, item in zip(shard_indices(count, block, owner), share, strict=True):
            merged[index] = item
    return merged


def all_sum(array: mx.array, what: str = "other") -> mx.array:
    """The element-wise sum over ranks (the array itself on one rank: no collective)."""
    if not distributed():
        return array
    exchanged_bytes[what] += array.nbytes
    if not TIME_COLLECTIVES:
        return mx.distributed.all_sum(array, group=group())
    mx.eval(array)  # its own computation is not the collective's time
    _barrier()
    started = time.perf_counter()
    total = mx.distributed.all_sum(array, group=group())
    mx.eval(total)
    exchanged_seconds[what] += time.perf_counter() - started
    return total


def _barrier() -> None:
    """Wait for every rank (timed apart, so a collective's time is its transfer alone)."""
    started = time.perf_counter()
    mx.eval(mx.distributed.all_sum(mx.zeros((1,)), group=group()))
    exchanged_seconds["waiting for other ranks"] += time.perf_counter() - started


def sum_tree(arrays: list[mx.array], what: str = "gradients") -> list[mx.array]:
    """Sum each array over ranks in one collective (flattened, concatenated, split back)."""
    if not distributed() or not arrays:
        return arrays
    flat = mx.concatenate([a.reshape(-1) for a in arrays])
    total = all_sum(flat, what)
    sizes = np.cumsum([a.size for a in arrays])[:-1].tolist()
    return [part.reshape(a.shape) for part, a in zip(mx.split(total, sizes), arrays, strict=True)]


def max_over_ranks(value: int) -> int:
    """The largest of the ranks' values (one process: the value itself)."""
    if not distributed():
        return value
    exchanged_bytes["control"] += 4
    return int(mx.distributed.all_max(mx.array([value], dtype=mx.int32), group=group()).item())


def all_gather_bytes(data: bytes, what: str = "payload") -> list[bytes]:
    """Every rank's bytes, in rank order: sizes first, then the payloads padded to the longest."""
    if not distributed():
        return [data]
    if TIME_COLLECTIVES:
        _barrier()
    started = time.perf_counter()
    sizes = mx.distributed.all_gather(mx.array([len(data)], dtype=mx.int64), group=group())
    sizes = [int(n) for n in np.array(sizes)]
    padded = np.zeros(max(max(sizes), 1), dtype=np.uint8)
    padded[: len(data)] = np.frombuffer(data, dtype=np.uint8)
    exchanged_bytes[what] += padded.nbytes + 8
    gathered = np.array(mx.distributed.all_gather(mx.array(padded), group=group()))
    rows = gathered.reshape(len(sizes), -1)
    exchanged_seconds[what] += time.perf_counter() - started
    return [rows[i, :n].tobytes() for i, n in enumerate(sizes)]


def all_gather_json(value, what: str = "payload") -> list:
    """Every rank's JSON-serialisable value, in rank order."""
    if not distributed():
        return [value]
    payload = json.dumps(value).encode()
    return [json.loads(part) for part in all_gather_bytes(payload, what)]


def broadcast_json(value, what: str = "payload"):
    """Rank 0's value on every rank (the others' `value` is ignored)."""
    if not distributed():
        return value
    payload = json.dumps(value).encode() if is_main() else b""
    return json.loads(all_gather_bytes(payload, what)[0])


def all_gather_arrays(arrays: list[np.ndarray], what: str = "payload") -> list[list[np.ndarray]]:
    """Every rank's list of float32 vectors, in rank order (lengths travel as JSON)."""
    if not distributed():
        return [arrays]
    lengths = all_gather_json([int(a.size) for a in arrays], what)
    flat = np.concatenate([a.astype(np.float32).reshape(-1) for a in arrays] or [np.zeros(0)])
    parts = all_gather_bytes(flat.astype(np.float32).tobytes(), what)
    result = []
    for sizes, part in zip(lengths, parts, strict=True):
        values = np.frombuffer(part, dtype=np.float32)
        bounds = np.cumsum([0, *sizes])
        result.append([values[a:b].copy() for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
    return result
