"""MLX's evaluation order on the CPU: a tape wide enough for two decode lanes with LoRA layers.

MLX orders one `mx.eval`'s operations breadth first, at most MLX_BFS_MAX_WIDTH arrays wide
(default 20), and its main thread stops dispatching while more than 10 tasks are in flight. A
LoRA layer's side branch (x @ A @ B beside x @ W) widens a decode step's graph past 20 when two
lanes' steps are evaluated together: the tape falls back to long depth-first runs of one lane,
and the other lane's stream waits. Measured on the 2-core VM (SmolLM2-135M, a live rank-8
adapter, one decode step at 96 rows): two lanes 616-626 ms against one lane's 446-461 at width 20;
358-370 ms at width 40 and 64, 350 at 128. MLX reads the variable once, at its first evaluation,
so rasft_mlx sets it on import, before any array is evaluated, when the process runs on the CPU
and the user has not set it (on a GPU, where lanes stay at 1, MLX's default is kept).
"""

from __future__ import annotations

import os

MLX_DEFAULT_WIDTH = 20
LANES_WIDTH = 64  # 40 was enough in the measurement above; 64 leaves room for wider graphs
WIDTH_VARIABLE = "MLX_BFS_MAX_WIDTH"


def widen_for_lanes() -> None:
    """Set MLX_BFS_MAX_WIDTH to LANES_WIDTH on the CPU unless it is set already."""
    if WIDTH_VARIABLE in os.environ:
        return
    import mlx.core as mx

    if mx.default_device().type == mx.DeviceType.cpu:
        os.environ[WIDTH_VARIABLE] = str(LANES_WIDTH)


def graph_width() -> int:
    """The width MLX uses in this process (as far as the environment tells: MLX reads it once)."""
    try:
        return int(os.environ.get(WIDTH_VARIABLE, MLX_DEFAULT_WIDTH))
    except ValueError:
        return MLX_DEFAULT_WIDTH


def lanes_fit_the_graph(lanes: int) -> bool:
    """Whether `lanes` lanes of a model with LoRA layers can run at once: 20 per lane, measured
    for two lanes (40 was enough)."""
    return graph_width() >= MLX_DEFAULT_WIDTH * lanes
