"""Decode lanes: the rows of a generation split over several CPU streams that run at once.

MLX's CPU backend runs each stream's operations on one thread. A decode step spends about half
its time outside the matmuls (attention, SiLU's exponentials, norms, RoPE, the sampler), and
those run on that one thread while the BLAS matmuls use every core, so on one stream most cores
idle for half of each step. With two lanes, each with half the rows on its own stream and one
BLAS thread per lane, both halves run at once: measured on a 2-core x86 VM with SmolLM2-135M,
one decode step at 96 rows took 443 ms on one stream and 357 ms in two lanes, at 192 rows 752
and 585 ms (benchmarks/rollouts.py --lanes). On a GPU a stream is a command queue, not a core,
so lanes stay at 1 there.

With LoRA layers only where MLX's evaluation tape is wide enough: a live adapter's side branch
(x @ A @ B) widens each lane's graph, and at MLX's default tape width of 20 the two lanes' steps
no longer interleave, so a model with unfused adapters decoded 1.3-1.6x slower in two lanes than
in one. `runtime/eval_graph.py` widens the tape on the CPU (MLX_BFS_MAX_WIDTH, set on import);
then such a model (RASFT's rollouts and evaluations on the live adapter) gains from lanes too:
one step at 96 rows 446-461 ms in one lane, 358-370 in two. Where the user set the width below
20 per lane, such a model keeps one lane. (A program that evaluated MLX arrays before importing
rasft_mlx runs at MLX's width 20 whatever the variable says, and its adapter models decode ~10 %
slower in two lanes: import rasft_mlx first, or set RASFT_MLX_DECODE_LANES=1.)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import nullcontext

import mlx.core as mx

from rasft_mlx.runtime.blas import blas_threads
from rasft_mlx.runtime.eval_graph import lanes_fit_the_graph

MAX_AUTO_LANES = 2  # more are unmeasured (the development machine has 2 cores)
_streams: dict[tuple[str, int], mx.Stream] = {}


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def has_adapter_layers(model) -> bool:
    return any(hasattr(module, "lora_a") for _, module in model.named_modules())


def default_lanes(model=None) -> int:
    """Lanes for a generation on the default device: up to MAX_AUTO_LANES on a CPU with as many
    cores, 1 on a GPU, and 1 for a model with LoRA layers unless MLX's tape is wide enough for
    its lanes (above). RASFT_MLX_DECODE_LANES overrides (1 turns lanes off)."""
    override = os.environ.get("RASFT_MLX_DECODE_LANES")
    if override:
        try:
            lanes = int(override)
        except ValueError:
            raise ValueError(
                f"RASFT_MLX_DECODE_LANES={override!r}: expected a whole number of lanes (1: off)"
            ) from None
        if lanes < 1:
            raise ValueError(f"RASFT_MLX_DECODE_LANES={override!r}: expected at least 1")
        return lanes
    if mx.default_device().type != mx.DeviceType.cpu:
        return 1
    lanes = max(1, min(MAX_AUTO_LANES, usable_cores()))
    if model is not None and has_adapter_layers(model) and not lanes_fit_the_graph(lanes):
        return 1
    return lanes


def lane_streams(count: int) -> list[mx.Stream | None]:
    """[None] for one lane (it runs on whatever stream is current, as without lanes); else the
    default stream, then `count - 1` more on the default device, made once and reused (a CPU
    stream is a thread)."""
    if count == 1:
        return [None]
    device = mx.default_device()
    streams = [mx.default_stream(device)]
    for lane in range(1, count):
        key = (str(device), lane)
        if key not in _streams:
            _streams[key] = mx.new_stream(device)
        streams.append(_streams[key])
    return streams


def on_lane(stream: mx.Stream | None):
    """The context that puts a lane's operations on its stream (none for a single lane)."""
    return nullcontext() if stream is None else mx.stream(stream)


def blas_threads_per_lane(lanes: int) -> int:
    return max(1, usable_cores() // lanes)


def lane_blas_threads(lanes: int):
    """The context a lanes' pass runs in: one BLAS thread per lane's share of the cores (none
    for a single lane, which keeps every BLAS thread)."""
    return blas_threads(blas_threads_per_lane(lanes)) if lanes > 1 else nullcontext()


def lane_shares(indices: list[int], lanes: int) -> list[list[int]]:
    """A batch's rows dealt to the lanes in turn (a length-sorted batch gives each lane a share
    spanning the same lengths); empty shares left out."""
    return [share for share in (indices[lane::lanes] for lane in range(lanes)) if share]


def forward_in_lanes(rows: list[int], streams: list, build: Callable[[list[int]], object]) -> list:
    """[(share, outputs)]: `build(share)` makes each lane's share's lazy outputs on its stream,
    and all lanes are evaluated in one call, so they run at once (evaluated one lane at a time,
    MLX runs them one after the other)."""
    shares = lane_shares(rows, len(streams))
    outputs = []
    for stream, share in zip(streams, shares, strict=False):
        with on_lane(stream):
            outputs.append(build(share))
    mx.eval(outputs)
    return list(zip(shares, outputs, strict=True))
