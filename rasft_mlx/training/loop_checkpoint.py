"""The training loop's checkpoints: everything needed to continue exactly, written and read back.

A mixin of `TrainingLoop` (training/loop.py): the epoch, the batch plan and the position in it,
the queue of sequences, both RNGs, the optimizer and the source's own state.
"""

from __future__ import annotations

import time
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten, tree_unflatten

import rasft_mlx.runtime.distributed as distributed
from rasft_mlx.models.adapters import adapter_config_dict
from rasft_mlx.training.checkpoint import (
    Checkpoint,
    CheckpointError,
    checkpoints_dir,
    mlx_random_state,
    restore_mlx_random_state,
    step_dir_name,
    write_checkpoint,
)
from rasft_mlx.training.run_directory import TrainingError


def assign_in_place(target, source) -> None:
    """Copy the leaves of `source` into the containers of `target` (compiled steps hold them)."""
    items = source.items() if isinstance(source, dict) else enumerate(source)
    for key, value in items:
        if isinstance(value, (dict, list)) and isinstance(target[key], (dict, list)):
            assign_in_place(target[key], value)
        else:
            target[key] = value


class LoopCheckpoints:
    """checkpoint() / restore() for TrainingLoop; relies on its attributes."""

    def restore(self, checkpoint: Checkpoint) -> None:
        state = checkpoint.state
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        self.position, self.groups = int(state["position"]), state["groups"]
        self.trained_tokens, self.loss = int(state["trained_tokens"]), float(state["loss"])
        self.planned = int(state["planned"])
        # Recomputed rather than read, so a forced resume with more epochs or steps goes on.
        max_steps = self.training.max_steps
        self.completed = self.groups is None and (
            self.epoch >= self.training.epochs or (max_steps is not None and self.step >= max_steps)
        )
        self.baseline_eval_pending = bool(state.get("baseline_eval_pending", False))
        if state.get("eval") is not None:
            self.eval_summary = self.held_out.summary_from_dict(state["eval"])
        if self.validation is not None:
            self.validation.load_state_dict(state.get("validation"))
        self._restore_weights(checkpoint)
        self._build_step()
        flat = checkpoint.optimizer_state()
        assign_in_place(self.optimizer.state, tree_unflatten(list(flat.items())))
        mx.eval(self.optimizer.state)
        self.rng.bit_generator.state = state["batch_rng"]
        saved_world = int(state.get("world_size", 1))
        if saved_world != distributed.world_size():
            raise TrainingError(
                f"checkpoint {checkpoint.path} was written by a run over {saved_world} "
                f"process(es); this one has {distributed.world_size()}. Resume with the same "
                "number of ranks (each rank's rollout random stream is part of the run)"
            )
        per_rank = state.get("mlx_random_ranks")
        restore_mlx_random_state(per_rank[distributed.rank()] if per_rank else state["mlx_random"])
        if state.get("source") is not None:
            self.source.load_state_dict(state["source"])
        if self.groups is not None:
            queue = checkpoint.queue()
            self.sequences = queue if queue is not None else self.source.epoch_sequences(self.epoch)
        self.last_checkpoint = checkpoint.path
        self.console.print(
            f"resumed from {checkpoint.path} (step {self.step}, epoch {self.epoch + 1}, "
            f"about {self.planned} optimizer steps)"
        )

    def _check_same_start(self, checkpoint: Checkpoint) -> None:
        saved = checkpoint.state.get("start_adapter_sha256")
        start = self.loaded.start_adapter
        if saved != getattr(start, "digest", None):
            where = (
                f"{start.directory} now holds sha256 {start.digest[:12]}" if start else "none now"
            )
            raise TrainingError(
                f"model.adapter: checkpoint {checkpoint.path} continued from a starting adapter "
                f"with sha256 {str(saved)[:12]}, {where}; resume from the same start"
            )

    def _restore_weights(self, checkpoint: Checkpoint) -> None:
        self._check_same_start(checkpoint)
        weights = checkpoint.adapter_weights()
        expected = dict(tree_flatten(self.loaded.model.trainable_parameters()))
        problems = sorted(set(weights) ^ set(expected))
        problems += [
            f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
            for k, v in weights.items()
            if k in expected and v.shape != expected[k].shape
        ]
        if problems:
            raise TrainingError(
                f"checkpoint {checkpoint.path} does not fit this model and lora settings: "
                + "; ".join(problems[:5])
            )
        self.loaded.model.update(tree_unflatten(list(weights.items())))
        mx.eval(self.loaded.model.parameters())

    def checkpoint_key(self) -> tuple:
        """What a checkpoint of the loop now would hold, to skip writing the same one twice."""
        return (self.step, self.epoch, self.position, self.completed)

    def checkpoint(self) -> Path:
        """Write a checkpoint (rank 0; the other ranks only hand it their random states)."""
        model = self.loaded.model
        source_state = self.source.state_dict() if hasattr(self.source, "state_dict") else None
        metrics_path = self.metrics.path
        state = {
            "step": self.step,
            "epoch": self.epoch,
            "position": self.position,
            "groups": self.groups,
            "planned": self.planned,
            "trained_tokens": self.trained_tokens,
            "loss": self.loss,
            "completed": self.completed,
            "learning_rate_next": float(self.schedule(self.step)),
            "eval": self.eval_summary.as_dict() if self.eval_summary else None,
            "validation": self.validation.state_dict() if self.validation else None,
            "batch_rng": self.rng.bit_generator.state,
            "mlx_random": mlx_random_state(),
            "source": source_state,
            "baseline_eval_pending": self.baseline_eval_pending,
            "metrics_bytes": metrics_path.stat().st_size if metrics_path.exists() else 0,
            "start_adapter_sha256": getattr(self.loaded.start_adapter, "digest", None),
        }
        self.checkpointed_at = self.checkpoint_key()
        if distributed.distributed():
            state["world_size"] = distributed.world_size()
            state["mlx_random_ranks"] = distributed.all_gather_json(mlx_random_state(), "control")
            if not distributed.is_main():  # where rank 0 writes it (in this rank's run dir)
                self.last_checkpoint = checkpoints_dir(self.run_dir) / step_dir_name(self.step)
                return self.last_checkpoint
        queue = self.sequences if source_state is not None and self.groups is not None else None
        started = time.perf_counter()
        try:
            path = write_checkpoint(
                self.run_dir,
                state,
                dict(tree_flatten(model.trainable_parameters())),
                adapter_config_dict(model, self.recipe.lora, self.recipe.model.path),
                dict(tree_flatten(self.optimizer.state)),
                queue,
                keep=self.recipe.output.keep_checkpoints,
            )
        except CheckpointError as error:
            kept = f"; the last good checkpoint is {self.last_checkpoint}" * bool(
                self.last_checkpoint
            )
            raise TrainingError(f"{error}{kept}") from error
        self.timings["checkpoint"] += time.perf_counter() - started
        self.last_checkpoint = path
        return path
