"""The training loop: batches -> compiled step -> metrics, checkpoints, per-epoch save and eval."""

from __future__ import annotations

import functools
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten
from rich.console import Console

import rasft_mlx.runtime.distributed as distributed
from rasft_mlx.console.display import TrainingDisplay
from rasft_mlx.console.progress import PhaseInterrupted
from rasft_mlx.data.encoding import TrainingSequence
from rasft_mlx.models.adapters import save_adapters
from rasft_mlx.models.loading import LoadedModel
from rasft_mlx.recipe.config import Recipe
from rasft_mlx.runtime.memory import peak_memory_gb
from rasft_mlx.training.batching import collate
from rasft_mlx.training.checkpoint import mlx_random_state, restore_mlx_random_state
from rasft_mlx.training.hooks import HeldOutScoring, ScoreSummary
from rasft_mlx.training.loop_checkpoint import LoopCheckpoints, assign_in_place
from rasft_mlx.training.run_directory import MetricsLog, TrainingError
from rasft_mlx.training.step_plan import (
    SequenceSource,
    carried_batches,
    loss_settings,
    planned_steps,
    queue_rest,
    room_for_sequences,
    step_groups,
    steps_per_epoch,
    trainable_groups,
    untrained_part,
)
from rasft_mlx.training.stop_signals import StopSignals
from rasft_mlx.training.train_step import CompiledTrainStep, build_lr_schedule, build_optimizer
from rasft_mlx.training.validation import Validation


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    trained_tokens: int
    final_loss: float
    seconds: float
    eval_summary: ScoreSummary | None


class TrainingLoop(LoopCheckpoints):
    """The loop: batches -> compiled step -> metrics; checkpoints, adapters and eval per epoch.

    Everything needed to continue exactly lives on the instance and goes into a checkpoint
    between two steps: the epoch, the batch plan and the position in it, the queue of
    sequences, both RNGs, the optimizer and the source's own state.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        recipe: Recipe,
        source: SequenceSource,
        run_dir: Path,
        console: Console,
        held_out: HeldOutScoring,
        metrics: MetricsLog,
        timings: Counter,
        stop_after: int | None = None,
        *,
        on_epoch_end: Callable[[], None] | None = None,
        validation: Validation | None = None,
    ):
        self.loaded, self.recipe, self.source = loaded, recipe, source
        self.validation = validation  # eval.val_every (training/validation.py)
        self.on_epoch_end = on_epoch_end  # after each epoch's checkpoint (the report)
        self.run_dir, self.console = run_dir, console
        self.held_out, self.metrics, self.timings = held_out, metrics, timings
        self.stop_after = stop_after
        self.training = recipe.training
        self.rng = np.random.default_rng(self.training.seed)
        self.step = 0
        self.epoch = 0
        self.position = 0
        self.groups: list | None = None
        self.sequences: list[TrainingSequence] | None = None
        self.trained_tokens = 0
        self.loss = float("nan")
        self.planned = 0
        self.completed = False
        self.eval_summary: ScoreSummary | None = None
        self.last_checkpoint: Path | None = None
        self.step_fn: CompiledTrainStep | None = None
        self.optimizer = None
        self.schedule = None
        self.baseline_eval_pending = False
        self.step_seconds = 0.0  # optimizer steps' own time this session, for the step ETA
        self.checkpointed_at: tuple | None = None  # (step, epoch, position, completed) last saved

    # -- setup -----------------------------------------------------------------------------

    def start_fresh(self) -> None:
        """A new run: the step plan from the expert demos; epoch 1's sequences (a RASFT refresh)
        and the starting model's evaluation come in `run`, after a step-0 checkpoint."""
        self.planned = planned_steps(self.source.expert_count, self.recipe)
        self.baseline_eval_pending = bool(
            self.recipe.eval.before_training and self.held_out.has_problems
        )
        self._build_step()

    def _build_step(self) -> None:
        self.schedule = build_lr_schedule(self.training, self.planned)
        # A plain learning rate set before each step (not an mlx schedule baked into the compiled
        # update), so the plan can grow when RASFT refreshes add rollouts to later epochs.
        self.optimizer = build_optimizer(self.training, float(self.schedule(0)))
        self.step_fn = CompiledTrainStep(
            self.loaded.model,
            self.optimizer,
            loss_settings(self.recipe),
            self.training.grad_clip,
            self.training.loss_normalization,
        )

    def _stop_if_requested(self, signals: StopSignals) -> None:
        """The step boundary's one agreement over the ranks (docs/DISTRIBUTED.md: every other
        collective sits at a place each rank reaches by the same deterministic path)."""
        if signals.agree():
            raise signals.interruption(self.step, self._checkpoint_here())

    def _checkpoint_here(self) -> Path:
        """A checkpoint of the loop as it is now, reusing one just written for the same state."""
        if self.last_checkpoint is not None and self.checkpointed_at == self.checkpoint_key():
            return self.last_checkpoint
        return self.checkpoint()

    # -- the loop --------------------------------------------------------------------------

    def run(self, signals: StopSignals) -> TrainResult:
        training = self.training
        max_steps = training.max_steps if training.max_steps is not None else float("inf")
        save_every = self.recipe.output.save_every
        first_step = self.step
        started = time.perf_counter()
        if self.completed:
            self.console.print(f"the run already finished at step {self.step}; nothing to do")
        if self.last_checkpoint is None:
            self.checkpoint()  # step 0: where --resume restarts a phase interrupted before step 1
        if self.baseline_eval_pending:
            self._guarded(signals, self._baseline_eval)
        with TrainingDisplay(self.console, self.planned, training.log_every) as display:
            self._validate(signals, display)  # one a stop interrupted (resumed here)
            while not self.completed:
                if self.groups is None:  # a new epoch
                    epoch = self.epoch
                    room = room_for_sequences(training, self.step)
                    sequences = self._guarded(
                        signals, functools.partial(self.source.epoch_sequences, epoch, room)
                    )
                    self._set_queue(sequences, display)
                    display.message(
                        f"epoch {epoch + 1}: {len(sequences)} training sequences, "
                        f"about {self.planned} optimizer steps in all ({training.mode})"
                    )
                train_started = time.perf_counter()
                while self.step < max_steps:
                    if self.position >= self._queue_end():  # the queue ran dry
                        paused = time.perf_counter()
                        more = self._guarded(signals, self._continued)
                        train_started += time.perf_counter() - paused
                        if not more:
                            break
                        self._refill(more, display)
                        continue
                    self._stop_if_requested(signals)
                    if not self._train_step(display, started, first_step):
                        continue
                    train_started += self._validate(signals, display)
                    if self.stop_after is not None and self.step == self.stop_after:
                        signals.test_reason = f"stop_after={self.stop_after}"
                    if self.position >= self._queue_end() or self.step >= max_steps:
                        continue
                    paused = time.perf_counter()
                    refreshed = self._guarded(signals, self._refreshed)
                    if refreshed is not None:
                        self._take_refresh(refreshed, display)
                    train_started += time.perf_counter() - paused
                    if save_every and self.step % save_every == 0:
                        self._checkpoint_here()
                self.timings["train"] += time.perf_counter() - train_started
                self._stop_if_requested(signals)  # before the epoch's eval
                self._finish_epoch(display, max_steps, signals)
                if signals.agree() and not self.completed:
                    raise signals.interruption(self.step, self.last_checkpoint)
        return TrainResult(
            self.run_dir,
            self.step,
            self.trained_tokens,
            self.loss,
            time.perf_counter() - started,
            self.eval_summary,
        )

    @property
    def _carries(self) -> bool:
        """The authors' one queue: refreshes append to it, micro-steps run across refills."""
        return getattr(self.source, "continuous_queue", False)

    def _queue_end(self) -> int:
        return trainable_groups(self.groups, self.training.grad_accumulation, self._carries)

    def _refill(self, more: list[TrainingSequence], display) -> None:
        """The next queue after one ran dry; the authors' first carries the micro-batches of the
        last one's short step (`trainable_groups`)."""
        carried = carried_batches(self.sequences, self.groups, self.position)
        carried = carried if self._carries else []
        sizes = [len(batch) for batch in carried]
        self._set_queue([s for batch in carried for s in batch] + more, display, lead=sizes)

    def _take_refresh(self, refreshed: list[TrainingSequence], display) -> None:
        """A refresh inside the epoch: appended after the queue's rest (the authors' deque), or
        the demos still ahead this epoch and the new non-demo sequences."""
        if self._carries:
            rest = queue_rest(self.sequences, self.groups, self.position)
            return self._set_queue(rest + refreshed, display)
        ahead = untrained_part(self.sequences, self.groups, self.position, refreshed)
        self._set_queue(ahead, display, steps_per_epoch(len(refreshed), self.recipe))

    def _continued(self):
        return self.source.continued_sequences(self.step, self.step / self.planned)

    def _refreshed(self):
        return self.source.refreshed_sequences(self.step, self.step / self.planned)

    def _guarded(self, signals: StopSignals, phase):
        """Run a long phase (a refresh, an evaluation). A stop request interrupts it within
        seconds: the source's state and MLX's random state go back to the phase's start, a
        checkpoint is written there, and the run stops; --resume redoes the phase."""
        source_state = self.source.state_dict() if hasattr(self.source, "state_dict") else None
        random_state = mlx_random_state()
        try:
            return phase()
        except PhaseInterrupted as stopped:
            if source_state is not None:
                self.source.load_state_dict(source_state)
            restore_mlx_random_state(random_state)
            self.console.print(f"stopped during {stopped}: --resume redoes it")
            raise signals.interruption(self.step, self.checkpoint()) from None

    def _validate(self, signals: StopSignals, display, final: bool = False) -> float:
        """Validation when due (every eval.val_every steps, final: at the end); its seconds."""
        if self.validation is None or not self.validation.due(self.step, final):
            return 0.0
        started = time.perf_counter()
        line = self._guarded(signals, lambda: self.validation.run(self.step, self.epoch))
        seconds = time.perf_counter() - started
        self.timings["validation"] += seconds
        display.message(line)
        return seconds

    def _baseline_eval(self) -> None:
        started = time.perf_counter()
        before = self.held_out.score(-1)
        self.timings["eval"] += time.perf_counter() - started
        self.baseline_eval_pending = False
        self.console.print(
            f"before training: eval pass@1 {before.pass_at_1:.3f} on {before.problems} problems"
        )

    def _groups(self, sequences: list[TrainingSequence], lead=()) -> list:
        shuffle = self.source.shuffle
        return step_groups(sequences, self.training, self.rng, shuffle, lead_sizes=lead)

    def _set_queue(self, sequences, display: TrainingDisplay, full_epoch=None, lead=()):
        """Train `sequences` next, from the start of a new batch plan (its first micro-batches
        of sizes `lead`), growing the LR plan (`full_epoch`: the steps of a whole later epoch,
        when `sequences` is only a rest)."""
        self.sequences = sequences
        self.groups = self._groups(sequences, lead)
        self.position = 0
        self._extend_plan(full_epoch or len(self.groups), display)

    def _extend_plan(self, steps_per_epoch_now: int, display: TrainingDisplay) -> None:
        """Grow the LR plan when epochs got longer (RASFT adds correct rollouts), never shrink it.

        Without this, steps past the first epoch's estimate would run at the schedule's end value.
        """
        remaining = len(self.groups) - self.position
        remaining += (self.training.epochs - self.epoch - 1) * steps_per_epoch_now
        wanted = self.step + remaining
        if self.training.max_steps is not None:
            wanted = min(wanted, self.training.max_steps)
        if wanted > self.planned:
            self.planned = wanted
            self.schedule = build_lr_schedule(self.training, self.planned)
            display.set_total(self.planned)

    def _finish_epoch(self, display: TrainingDisplay, max_steps, signals: StopSignals) -> None:
        """Adapters, eval, then an epoch-end checkpoint that starts the next epoch."""
        loaded, epoch = self.loaded, self.epoch
        save_adapters(
            loaded.model,
            self.recipe.lora,
            self.recipe.model.path,
            self.run_dir / "adapters",
            start=loaded.start_adapter,
        )
        last_epoch = epoch == self.training.epochs - 1 or self.step >= max_steps
        if last_epoch:
            self._validate(signals, display, final=True)
        if self.held_out.has_problems and (self.training.eval_every_epoch or last_epoch):
            eval_started = time.perf_counter()
            self.eval_summary = self._guarded(
                signals,
                lambda: self.held_out.score(epoch),
            )
            self.timings["eval"] += time.perf_counter() - eval_started
            display.message(
                f"epoch {epoch + 1}: eval pass@1 {self.eval_summary.pass_at_1:.3f} "
                f"on {self.eval_summary.problems} problems"
            )
        self.epoch, self.groups, self.sequences, self.position = epoch + 1, None, None, 0
        self.completed = last_epoch
        self.checkpoint()
        if self.on_epoch_end is not None:
            self.on_epoch_end()

    def _train_step(self, display: TrainingDisplay, started: float, first_step: int) -> bool:
        """One optimizer step on the next group; False when a non-finite batch was skipped."""
        model = self.loaded.model
        group = self.groups[self.position]
        self.position += 1
        micro = self._own_micro_batches(group)
        # MLX arrays are immutable: holding the current leaves is a free snapshot to roll back to.
        params_before = tree_flatten(model.trainable_parameters())
        optimizer_before = tree_map(lambda x: x, self.optimizer.state)
        step_started = time.perf_counter()
        learning_rate = float(self.schedule(self.step))
        self.optimizer.learning_rate = learning_rate
        result = self.step_fn(micro)
        if not math.isfinite(result.loss) or not math.isfinite(result.grad_norm):
            model.update(tree_unflatten(params_before))
            assign_in_place(self.optimizer.state, optimizer_before)
            self._non_finite(result, group, display)
            return False
        self.step += 1
        self.loss = result.loss
        self.trained_tokens += result.tokens
        elapsed = time.perf_counter() - step_started
        input_tokens = sum(len(self.sequences[i].tokens) - 1 for idx in group for i in idx)
        total_elapsed = time.perf_counter() - started
        done_here = max(self.step - first_step, 1)
        # The ETA of the optimizer steps left, at this session's mean step time: refreshes and
        # evaluations show their own progress and ETA, and would swamp an early estimate.
        self.step_seconds += elapsed
        if hasattr(self.source, "observe_step"):
            self.source.observe_step(result)
        record = {
            "event": "step",
            "step": self.step,
            "epoch": self.epoch,
            "loss": result.loss,
            "learning_rate": learning_rate,
            "grad_norm": result.grad_norm,
            "ratio_at_min": result.ratio_at_min / max(result.sequences, 1),
            "ratio_at_max": result.ratio_at_max / max(result.sequences, 1),
            "trained_tokens": result.tokens,
            "sequences": result.sequences,
            "micro_batches": len(group),
            "tokens_per_second": input_tokens / elapsed if elapsed > 0 else 0.0,
            "peak_memory_gb": peak_memory_gb(),
            "elapsed_seconds": total_elapsed,
            "eta_seconds": self.step_seconds / done_here * max(self.planned - self.step, 0),
        }
        self.metrics.write(record)
        display.step(self.step, record)
        return True

    def _own_micro_batches(self, group: list[list[int]]) -> list:
        """This rank's rows of each micro-batch (rank-strided; all of them in one process), padded
        to the rank's share of batch_size; None where a micro-batch has no row for this rank."""
        training, world, rank = self.training, distributed.world_size(), distributed.rank()
        rows = math.ceil(training.batch_size / world)
        micro = []
        for idx in group:
            own = [self.sequences[i] for i in idx[rank::world]]
            micro.append(collate(own, rows, training.bucket_multiple) if own else None)
        return micro

    def _non_finite(self, result, group, display: TrainingDisplay) -> None:
        ids = sorted({self.sequences[i].problem_id for idx in group for i in idx})
        what = f"non-finite loss {result.loss} / grad norm {result.grad_norm}"
        where = f"at step {self.step + 1} (epoch {self.epoch + 1})"
        if self.training.on_nan == "skip_batch":
            self.metrics.write(
                {
                    "event": "skipped_batch",
                    "step": self.step + 1,
                    "epoch": self.epoch,
                    "loss": result.loss,
                    "grad_norm": result.grad_norm,
                    "problem_ids": ids,
                }
            )
            display.message(f"{what} {where}: batch skipped ({', '.join(ids)})")
            return
        kept = (
            f"the last good checkpoint is {self.last_checkpoint}"
            if self.last_checkpoint
            else "no checkpoint was written yet"
        )
        raise TrainingError(
            f"{what} {where}; batch problem ids: {', '.join(ids)}. The update was not applied; "
            f"{kept}. Set training.on_nan: skip_batch to drop such batches and go on."
        )
