"""The `rasft-mlx` command line: parses arguments, then calls the library."""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from rasft_mlx.commands.exits import console, stopping_cleanly
from rasft_mlx.commands.exits import fail as _fail
from rasft_mlx.commands.exits import stopped as _stopped
from rasft_mlx.commands.exits import warn as _warn
from rasft_mlx.runtime.blas import slow_blas_warning
from rasft_mlx.runtime.process import prepare_command_line_process
from rasft_mlx.runtime.version import __version__

STOP_AFTER_ENV = "RASFT_MLX_TEST_STOP_AFTER"  # tests: interrupt the run after that step

app = typer.Typer(
    name="rasft-mlx",
    help="Rollout-Adaptive Supervised Fine-Tuning (RASFT) of language models on MLX.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)


def _user_errors() -> tuple[type[Exception], ...]:
    from rasft_mlx.commands.train import TrainingError
    from rasft_mlx.data.readers import DataError
    from rasft_mlx.export.formats import ExportError
    from rasft_mlx.export.hub import HubError
    from rasft_mlx.models.gguf_import import GGUFImportError
    from rasft_mlx.models.loading import ModelError
    from rasft_mlx.recipe.config import RecipeError
    from rasft_mlx.reporting.run_reader import ReportError
    from rasft_mlx.reporting.trackers import TrackerError
    from rasft_mlx.runtime.distributed import DistributedError

    reading = (RecipeError, DataError, ModelError, GGUFImportError, FileNotFoundError)
    others = (TrainingError, DistributedError, TrackerError, ExportError, HubError, ReportError)
    return reading + others


def _version_callback(value: bool) -> None:
    if value:
        console.print(f"rasft-mlx {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True)
    ] = False,
) -> None:
    """Fine-tune for reasoning on your own machine: LoRA on MLX, on-device rollouts, verified answers."""


@app.command()
def train(
    recipe: Annotated[
        Path, typer.Argument(help="YAML recipe, e.g. recipes/gsm8k.yaml, or a run dir to resume")
    ],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a recipe key: --set training.learning_rate=2e-4"),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default: output.dir)")] = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume", help="Continue from the run dir's latest checkpoint (error if none)"
        ),
    ] = False,
    auto_resume: Annotated[
        bool,
        typer.Option("--auto-resume", help="Resume when the run dir has a checkpoint, else start"),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Resume despite a changed recipe, or start over in a used run dir"
        ),
    ] = False,
) -> None:
    """Train LoRA adapters with a recipe ([bold]sft, dft, sft_kl, asft, profit[/bold] modes)."""
    from rasft_mlx.commands.train import TrainingInterrupted, run_training
    from rasft_mlx.recipe.config import load_recipe, resolve_run_dir

    recipe_file = recipe
    if recipe.is_dir():  # a run dir: its saved recipe, resumed in place
        recipe_file, out, resume = recipe / "recipe.yaml", out or recipe, True
    try:
        loaded = load_recipe(recipe_file, set_ or [])
        run_dir = resolve_run_dir(loaded, str(out) if out else None)
        console.print(f"[bold]rasft-mlx train[/bold] {recipe} -> {run_dir}")
        _warn(slow_blas_warning())
        mode = True if resume else "auto" if auto_resume else False
        stop_after = os.environ.get(STOP_AFTER_ENV)  # a test hook, as the checkpoint sleep
        result = run_training(
            loaded,
            run_dir,
            console,
            resume=mode,
            force=force,
            stop_after=int(stop_after) if stop_after else None,
        )
    except TrainingInterrupted as stopped:
        command = ["rasft-mlx", "train", str(recipe), "--resume"]
        command += [f"--out={out}"] if out and not recipe.is_dir() else []
        command += [f"--set={item}" for item in set_ or []]
        where = f" ({stopped.reason}) after step {stopped.step}; checkpoint {stopped.checkpoint}"
        _stopped("interrupted", f"{where}\nresume with: {shlex.join(command)}", stopped.exit_code)
    except _user_errors() as error:
        _fail(error)
    table = Table(title="run finished", show_header=False)
    rows = {"run dir": str(result.run_dir), "steps": str(result.steps)}
    rows |= {"trained tokens": f"{result.trained_tokens:,}"}
    rows |= {"final loss": f"{result.final_loss:.4f}", "wall time": f"{result.seconds:.1f} s"}
    if result.eval_summary:
        rows["eval pass@1"] = f"{result.eval_summary.pass_at_1:.3f}"
    for name, value in (rows | {"adapters": str(result.run_dir / "adapters")}).items():
        table.add_row(name, value)
    console.print(table)


@app.command("eval")
def evaluate(
    model: Annotated[str, typer.Option(help="Hub id, local dir, .gguf file or builtin:NAME")],
    data: Annotated[
        str,
        typer.Option(
            help="Comma-separated benchmarks (gsm8k, math500, aime24), files (JSONL, parquet, "
            "CSV) or 'synthetic'; or YAML: '{hub: ID, config: ..., split: test[:200]}'"
        ),
    ],
    adapter: Annotated[Path | None, typer.Option(help="Adapter directory to apply")] = None,
    fuse: Annotated[bool, typer.Option(help="Merge a float32 adapter into the weights")] = True,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Evaluate the first N problems of each")
    ] = None,
    samples: Annotated[
        int | None, typer.Option(min=1, help="K samples per problem for avg@K [default: 1]")
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(min=0.0, help="Sampling temperature [default: 1.0]")
    ] = None,
    top_p: Annotated[float | None, typer.Option(min=0.0, max=1.0, help="[default: 1.0]")] = None,
    max_new_tokens: Annotated[int | None, typer.Option(min=1, help="[default: 512]")] = None,
    batch_size: Annotated[int, typer.Option(min=0, help="Rows decoded together; 0 = auto")] = 0,
    protocol: Annotated[
        str,
        typer.Option(
            help="project, or authors: avg@16 at T 1.0, top-p 1.0, 4,096 new tokens (their "
            "harness) for every option not given"
        ),
    ] = "project",
    data_format: Annotated[
        str,
        typer.Option("--format", help="auto, gsm8k, generic, math, authors, messages or synthetic"),
    ] = "auto",
    grader: Annotated[
        str,
        typer.Option(help="auto (math-verify for MATH-style data), builtin or math-verify"),
    ] = "auto",
    out: Annotated[Path | None, typer.Option(help="Results directory")] = None,
    seed: int = 0,
) -> None:
    """Greedy pass@1 (and avg@K with --samples K) with verified final answers, per benchmark."""
    from rasft_mlx.console.display import benchmark_results_table
    from rasft_mlx.evaluation.benchmarks import eval_config, parse_data_sources, run_benchmarks

    out = out or Path("runs") / f"eval-{time.strftime('%Y%m%d-%H%M%S')}"
    kept = f": nothing written for the benchmark it was on (finished ones are in {out})"
    try:
        given = {"samples": samples, "temperature": temperature, "top_p": top_p}
        given |= {"max_new_tokens": max_new_tokens}
        config = eval_config(protocol, limit=limit, batch_size=batch_size, **given)
        sources = parse_data_sources(data)
        if len(sources) == 1:
            sources = [("eval", sources[0][1])]
        _warn(slow_blas_warning())
        with stopping_cleanly(kept):
            results = run_benchmarks(
                model,
                sources,
                out,
                config,
                adapter=adapter,
                fuse=fuse,
                data_format=data_format,
                grader=grader,
                seed=seed,
                on_unfused=lambda why: console.print(f"adapter kept live, not fused: {why}"),
            )
    except _user_errors() as error:
        _fail(error)
    console.print(benchmark_results_table(model, adapter, results))
    for result in results:
        console.print(f"results: {result.results_path}\nsummary: {result.summary_path}")
    if len(results) > 1:
        console.print(f"table: {out / 'benchmarks.json'}")


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run directory made by rasft-mlx train")],
    output: Annotated[
        Path | None, typer.Option(help="Where to write the page (default RUN_DIR/report.html)")
    ] = None,
) -> None:
    """Write a self-contained HTML report of a run: curves, refreshes, rollouts, recipe."""
    from rasft_mlx.reporting.run_report import write_run_report

    try:
        path = write_run_report(run_dir, output)
    except _user_errors() as error:
        _fail(error)
    console.print(f"report: {path}")


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="Run directory made by rasft-mlx train")],
    fmt: Annotated[
        str, typer.Option("--format", help="mlx (mlx-lm adapters), peft, or fused (full model)")
    ] = "mlx",
    out: Annotated[
        Path | None, typer.Option(help="Export folder (default RUN_DIR/export-FORMAT)")
    ] = None,
    dequantize: Annotated[bool, typer.Option(help="fused: write a de-quantised model")] = False,
    push_to_hub: Annotated[
        str | None, typer.Option("--push-to-hub", metavar="REPO_ID", help="Upload to OWNER/NAME")
    ] = None,
    private: Annotated[bool, typer.Option(help="Create the Hub repo as private")] = False,
    revision: Annotated[str | None, typer.Option(help="Hub branch to push to")] = None,
    dry_run: Annotated[
        bool, typer.Option(help="List what would be uploaded; upload nothing")
    ] = False,
) -> None:
    """Export a run's adapters (mlx-lm, PEFT or fused) with a model card, optionally to the Hub."""
    from rasft_mlx.export.formats import ExportError, export_run
    from rasft_mlx.export.hub import push_folder

    try:
        if push_to_hub is None and (private or revision or dry_run):
            raise ExportError("--private, --revision and --dry-run apply with --push-to-hub only")
        result = export_run(run_dir, fmt, out, dequantize=dequantize, repo_id=push_to_hub)
        console.print(f"[bold]exported[/bold] {fmt} -> {result.out_dir}")
        for name in result.files:
            console.print(f"  {name}  ({(result.out_dir / name).stat().st_size:,} bytes)")
        if push_to_hub is not None:
            pushed = push_folder(
                result.out_dir, push_to_hub, private=private, revision=revision, dry_run=dry_run
            )
    except _user_errors() as error:
        _fail(error)
    if push_to_hub is None:
        return
    if pushed.dry_run:
        listing = "".join(f"\n  {name}" for name in pushed.files)
        console.print(f"dry run: would upload {len(pushed.files)} files to {pushed.url}:{listing}")
    else:
        console.print(f"[bold]pushed[/bold] {len(pushed.files)} files to {pushed.url}")


@app.command()
def compare(
    recipe: Annotated[
        Path, typer.Argument(help="YAML recipe, e.g. recipes/compare-synthetic.yaml")
    ],
    modes: Annotated[
        str, typer.Option(help="Comma-separated training modes; the first is the reference")
    ] = "sft,dft,rasft",
    seeds: Annotated[
        int, typer.Option(min=1, help="Seeds per mode: training.seed, +1, ... (LoRA init, order)")
    ] = 3,
    out: Annotated[
        Path | None, typer.Option(help="Compare directory (default: output.dir)")
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a recipe key for every run: --set eval.limit=24"),
    ] = None,
    quick: Annotated[
        bool, typer.Option("--quick", help="Use the recipe's quick variant (NAME-quick.yaml)")
    ] = False,
    budget: Annotated[
        str,
        typer.Option(
            help="steps: cap every mode at the expert-only epochs' step count; epochs: unmatched"
        ),
    ] = "steps",
    base_from: Annotated[
        Path | None,
        typer.Option(help="Reuse this compare dir's base-model eval (same model, eval, tests)"),
    ] = None,
    variant: Annotated[
        list[str] | None,
        typer.Option(help="Another arm: LABEL=RECIPE.yaml, same model, test sets and eval"),
    ] = None,
) -> None:
    """Compare modes (and variants) over seeds: same model, step budget and eval; a table."""
    from rasft_mlx.commands.train import TrainingInterrupted
    from rasft_mlx.experiments.compare import (
        CompareError,
        CompareInterrupted,
        command_line,
        parse_modes,
        run_compare,
    )
    from rasft_mlx.experiments.compare_arms import load_variants, quick_variant
    from rasft_mlx.experiments.compare_tables import curves_table, results_table
    from rasft_mlx.recipe.config import load_recipe, resolve_run_dir

    options = {"modes": modes, "seeds": seeds, "out": out, "set": set_, "quick": quick}
    options |= {"budget": budget, "base-from": base_from, "variant": variant}
    command = command_line(recipe, options)
    try:
        recipe_file = quick_variant(recipe) if quick else recipe
        mode_list = parse_modes(modes)
        loaded = load_recipe(recipe_file, set_ or [])
        variants = load_variants(variant or [], loaded, str(recipe_file), set_ or [], quick=quick)
        out_dir = resolve_run_dir(loaded, str(out) if out else None)
        arms = ", ".join([*mode_list, *(arm.name for arm in variants)])
        console.print(f"[bold]rasft-mlx compare[/bold] {recipe_file}: {arms} x {seeds} seeds")
        console.print(f"-> {out_dir}", soft_wrap=True)
        _warn(slow_blas_warning())
        results = run_compare(
            loaded,
            out_dir,
            mode_list,
            seeds,
            console,
            budget=budget,
            recipe_source=str(recipe_file),
            command=command,
            base_from=base_from,
            variants=variants,
        )
    except TrainingInterrupted as stopped:
        where = f" ({stopped.reason}) after step {stopped.step}; checkpoint {stopped.checkpoint}"
        _stopped("interrupted", f"{where}\ncontinue with: {command}", stopped.exit_code)
    except CompareInterrupted as stopped:
        detail = f": nothing of it was kept\ncontinue with: {command}"
        _stopped(str(stopped), detail, stopped.exit_code)
    except (CompareError, *_user_errors()) as error:
        _fail(error)
    console.print(curves_table(results))
    console.print(results_table(results))
    for name in ("results.json", "results.md", "compare.html"):
        console.print(f"results: {out_dir / name}", soft_wrap=True)


@app.command()
def plan(
    recipe: Annotated[Path, typer.Argument(help="YAML recipe")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a recipe key, as for train"),
    ] = None,
    probe_steps: Annotated[
        int, typer.Option(min=0, help="Real optimizer steps to time (0: estimates only)")
    ] = 10,
    gauges: Annotated[
        int, typer.Option(min=0, help="Held-out problems to roll out for the mechanism gauges")
    ] = 0,
) -> None:
    """Pre-flight: parameters, tokens per epoch, rollout tokens, peak memory and wall time."""
    from rasft_mlx.experiments.plan import build_plan, check_memory
    from rasft_mlx.experiments.plan_report import protocol_lines, render_plan
    from rasft_mlx.recipe.config import load_recipe

    try:
        loaded_recipe = load_recipe(recipe, set_ or [])
        with stopping_cleanly(": nothing written (a plan writes no files)"):
            run_plan = build_plan(loaded_recipe, probe_steps=probe_steps, gauge_problems=gauges)
    except _user_errors() as error:
        _fail(error)
    console.print(render_plan(run_plan))
    console.print(Text("".join(f"{x}\n" for x in protocol_lines(loaded_recipe))), end="")
    _warn(check_memory(run_plan))


def main() -> None:
    prepare_command_line_process()
    app()


if __name__ == "__main__":
    main()
