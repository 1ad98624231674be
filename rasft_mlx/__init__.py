"""rasft-mlx: Rollout-Adaptive Supervised Fine-Tuning for reasoning on MLX.

The scripting surface (imported on first use, so `import rasft_mlx` stays light):

    recipe = rasft_mlx.load_recipe("recipes/quickstart.yaml")
    result = rasft_mlx.train(recipe, rasft_mlx.resolve_run_dir(recipe))
    summary, _, _ = rasft_mlx.evaluate("builtin:smollm2-135m", "synthetic", Path("runs/eval"),
                                       adapter=result.run_dir / "adapters")
    rasft_mlx.export_run(result.run_dir, "peft")  # (rasft_mlx.export is the subpackage)
"""

from __future__ import annotations

from importlib import import_module

from rasft_mlx.runtime.eval_graph import widen_for_lanes
from rasft_mlx.runtime.version import __version__

widen_for_lanes()  # before MLX evaluates anything: it reads the width once (runtime/eval_graph.py)

_SURFACE = {
    "load_recipe": ("rasft_mlx.recipe.config", "load_recipe"),
    "resolve_run_dir": ("rasft_mlx.recipe.config", "resolve_run_dir"),
    "train": ("rasft_mlx.commands.train", "run_training"),
    "evaluate": ("rasft_mlx.evaluation.benchmarks", "run_evaluation"),
    "export_run": ("rasft_mlx.export.formats", "export_run"),
    "compare": ("rasft_mlx.experiments.compare", "run_compare"),
    "plan": ("rasft_mlx.experiments.plan", "build_plan"),
}

__all__ = ["__version__", *_SURFACE]


def __getattr__(name: str):
    if name not in _SURFACE:
        raise AttributeError(f"module 'rasft_mlx' has no attribute {name!r}")
    module, attribute = _SURFACE[name]
    return getattr(import_module(module), attribute)
