"""Validation during training (eval.val_every): the mean token cross-entropy of held-out expert
solutions, optionally their greedy pass@1, and the best adapters kept (output.keep_best).

The loop asks `due(step)` after every optimizer step and at the end of training; `run` logs a
`validation` record and, when the chosen figure improved, writes RUN_DIR/adapters-best/. The
best value, its step and the last step validated go into the loop's checkpoints, so a resumed
run neither validates a step twice nor replaces a better adapters-best with a worse one.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import rasft_mlx.runtime.distributed as distributed
from rasft_mlx.console.progress import check, phase
from rasft_mlx.data.encoding import TrainingSequence
from rasft_mlx.models.adapters import dropout_mode, save_adapters
from rasft_mlx.models.response_logits import ResponseLogits
from rasft_mlx.training.batching import collate
from rasft_mlx.training.hooks import ValidationScoring
from rasft_mlx.training.losses import token_logprobs
from rasft_mlx.training.run_directory import MetricsLog

BEST_DIR = "adapters-best"
# output.keep_best -> (the validation record's field, whether higher is better)
BEST_FIELDS = {"val_loss": ("loss", False), "val_pass_at_1": ("pass_at_1", True)}


def validation_loss(
    model, sequences: list[TrainingSequence], batch_size: int, bucket_multiple: int
) -> tuple[float, int]:
    """The mean cross-entropy per response token of `sequences` under the model as it is now
    (adapters on, dropout off, every token weighing the same: no sequence weights), and the
    token count. Batches of the length-sorted order; over several ranks each computes its share
    of the batches and the sums are gathered in rank order, so every rank gets the same value."""
    label = "validation loss"
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i].tokens))
    own = [order[i] for i in distributed.shard_indices(len(order), batch_size)]
    logits_at = ResponseLogits(model)
    total, tokens = 0.0, 0
    with dropout_mode(model, False), phase(label, len(own)) as reporter:
        for start in range(0, len(own), batch_size):
            check(label)
            chunk = [sequences[i] for i in own[start : start + batch_size]]
            batch = collate(chunk, len(chunk), bucket_multiple)
            logprobs = token_logprobs(logits_at(batch.inputs, batch.positions), batch.targets)
            total -= (logprobs * batch.mask).sum().item()
            tokens += batch.token_count
            reporter.advance(len(chunk))
    if distributed.distributed():
        shares = distributed.all_gather_json([total, tokens], "validation")
        total, tokens = sum(s[0] for s in shares), sum(s[1] for s in shares)
    return total / max(tokens, 1), tokens


def remove_best(run_dir: Path) -> None:
    """A new run in `run_dir`: an earlier run's adapters-best must not pass for this one's."""
    shutil.rmtree(Path(run_dir) / BEST_DIR, ignore_errors=True)


class Validation:
    """The validation set's sequences, when to score them, and the best figure so far."""

    def __init__(
        self,
        loaded,
        recipe,
        sequences: list[TrainingSequence],
        run_dir: Path,
        metrics: MetricsLog,
        pass_at_1: ValidationScoring | None = None,
    ):
        self.loaded, self.recipe, self.sequences = loaded, recipe, sequences
        self.run_dir, self.metrics, self.pass_at_1 = Path(run_dir), metrics, pass_at_1
        self.every = recipe.eval.val_every
        self.keep_best = recipe.output.keep_best
        self.last_step = 0  # the last step validated (0: none yet)
        self.last: dict | None = None  # that validation's figures
        self.best_value: float | None = None
        self.best_step: int | None = None

    def due(self, step: int, final: bool = False) -> bool:
        """Every `eval.val_every` steps and (final) at the end of training, once per step."""
        if step == 0 or step == self.last_step:
            return False
        return final or step % self.every == 0

    def run(self, step: int, epoch: int) -> str:
        """Validate now: log the record, keep the adapters when best; returns the console line."""
        training = self.recipe.training
        loss, tokens = validation_loss(
            self.loaded.model, self.sequences, training.batch_size, training.bucket_multiple
        )
        record = {"event": "validation", "step": step, "epoch": epoch, "loss": loss}
        record.update(tokens=tokens, sequences=len(self.sequences))
        line = f"step {step}: validation loss {loss:.4f} ({tokens} tokens)"
        if self.pass_at_1 is not None:
            summary = self.pass_at_1.score(step)
            record.update(pass_at_1=summary.pass_at_1, pass_at_1_problems=summary.problems)
            line += f", pass@1 {summary.pass_at_1:.3f} on {summary.problems} problems"
        if self.keep_best != "none":
            record["improved"] = self._keep_if_best(record, step)
            record["best_step"] = self.best_step
            if record["improved"]:
                line += f" (best so far: {self.run_dir / BEST_DIR})"
        self.last_step = step
        self.last = {k: record[k] for k in ("step", "loss", "pass_at_1") if k in record}
        self.metrics.write(record)
        return line

    def _keep_if_best(self, record: dict, step: int) -> bool:
        key, higher = BEST_FIELDS[self.keep_best]
        value = record[key]
        if not math.isfinite(value):
            return False
        best = self.best_value
        if best is not None and not (value > best if higher else value < best):
            return False
        self.best_value, self.best_step = value, step
        if distributed.is_main():
            self._save_best()
        return True

    def _save_best(self) -> None:
        """adapters-best/ in the format of adapters/, written into a temp dir and renamed into
        place (the previous best moved aside first, removed after)."""
        loaded, recipe = self.loaded, self.recipe
        final = self.run_dir / BEST_DIR
        temp = self.run_dir / f".tmp-{BEST_DIR}-{os.getpid()}"
        old = self.run_dir / f".old-{BEST_DIR}-{os.getpid()}"
        shutil.rmtree(temp, ignore_errors=True)
        start = loaded.start_adapter
        save_adapters(loaded.model, recipe.lora, recipe.model.path, temp, start=start)
        if final.exists():
            os.replace(final, old)
        os.replace(temp, final)
        shutil.rmtree(old, ignore_errors=True)

    def best(self) -> dict | None:
        """summary.json's `best`: {metric, value, step}, once a validation was kept."""
        if self.keep_best == "none" or self.best_step is None:
            return None
        return {"metric": self.keep_best, "value": self.best_value, "step": self.best_step}

    def state_dict(self) -> dict:
        return {
            "metric": self.keep_best,
            "best_value": self.best_value,
            "best_step": self.best_step,
            "last_step": self.last_step,
            "last": self.last,
        }

    def load_state_dict(self, state: dict | None) -> None:
        """A checkpoint's state (None: one written before validation existed or was on); a best
        of another metric (a forced resume that changed output.keep_best) is not carried over."""
        if not state:
            return
        self.last_step, self.last = int(state["last_step"]), state.get("last")
        if state.get("metric") == self.keep_best:
            self.best_value, self.best_step = state["best_value"], state["best_step"]
