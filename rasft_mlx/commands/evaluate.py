"""`rasft-mlx eval`: a model (with optional adapters) on a problem set, verified answers written out."""

from __future__ import annotations

from pathlib import Path

from rasft_mlx.config import DataConfig, EvalConfig, ModelConfig, RecipeError
from rasft_mlx.data.readers import load_problems
from rasft_mlx.models.adapters import load_adapters_into
from rasft_mlx.models.loading import load_model
from rasft_mlx.protocols import PRESETS
from rasft_mlx.training.evaluate import EvalSummary, evaluate_problems, write_eval_outputs


def eval_config(protocol: str = "project", **given) -> EvalConfig:
    """EvalConfig from the options given (None = not given), then the protocol's values, then
    the defaults; `protocol` authors: their harness's avg@16 at T 1.0, top-p 1.0, 4,096 tokens."""
    if protocol not in PRESETS:
        raise RecipeError(f"--protocol: expected one of {', '.join(PRESETS)}, got {protocol!r}")
    values = dict(PRESETS[protocol].get("eval", {}))
    values.update({key: value for key, value in given.items() if value is not None})
    return EvalConfig(**values)


def run_evaluation(
    model: str,
    data: str,
    out: Path,
    config: EvalConfig | None = None,
    *,
    adapter: str | Path | None = None,
    data_format: str = "auto",
    seed: int = 0,
) -> tuple[EvalSummary, Path, Path]:
    """Evaluate `model` (+ `adapter`) on `data`; returns the summary and the two files written."""
    config = config or EvalConfig()
    problems = load_problems(
        data, fmt=data_format, split="test", synthetic={"n_test": config.limit or 200}
    )
    loaded = load_model(ModelConfig(path=model))
    if adapter is not None:
        load_adapters_into(loaded.model, adapter)
    records, summary = evaluate_problems(
        loaded.model, loaded.tokenizer, problems, config, DataConfig().system_prompt, seed=seed
    )
    results_path, summary_path = write_eval_outputs(records, summary, out)
    return summary, results_path, summary_path
