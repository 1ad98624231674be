"""SIGINT/SIGTERM during training: stop at the next step or chunk, checkpoint, print a resume hint."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

import rasft_mlx.runtime.distributed as distributed
from rasft_mlx.console.progress import attached, clear_stop, phase_running, request_stop
from rasft_mlx.runtime import hard_stop

TRAINING_STOP = "stopping after the current step or chunk, then writing a checkpoint"


class TrainingInterrupted(Exception):
    """SIGINT/SIGTERM (or the test hook) stopped the run after a checkpoint was written."""

    def __init__(self, reason: str, step: int, checkpoint: Path, exit_code: int):
        super().__init__(reason, step, checkpoint, exit_code)
        self.reason = reason
        self.step = step
        self.checkpoint = checkpoint
        self.exit_code = exit_code

    def __str__(self) -> str:
        return f"{self.reason}: stopped after step {self.step}; checkpoint {self.checkpoint}"


class StopSignals:
    """First SIGINT/SIGTERM asks the loop to stop after the current step; a second one aborts."""

    CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}

    def __init__(self, console: Console, announcement: str = TRAINING_STOP):
        self.console = console
        self.announcement = announcement
        self.requested: signal.Signals | None = None
        self.test_reason: str | None = None
        self._previous: dict = {}
        self._second_signal: hard_stop.SecondSignalExit | None = None

    def __enter__(self) -> StopSignals:
        clear_stop()
        if threading.current_thread() is threading.main_thread():
            for sig in self.CODES:
                self._previous[sig] = signal.signal(sig, self._handle)
            if hard_stop.enabled():
                self._second_signal = hard_stop.SecondSignalExit().__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._second_signal is not None:
            self._second_signal.__exit__(*exc)
            self._second_signal = None
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        clear_stop()

    def _handle(self, signum, frame) -> None:
        sig = signal.Signals(signum)
        if self.requested is not None:  # asked twice: stop now (the last checkpoint stays)
            signal.signal(sig, self._previous.get(sig, signal.SIG_DFL))
            raise KeyboardInterrupt
        self.requested = sig
        if self._second_signal is not None:
            self._second_signal.acknowledged.set()
        # Long phases (rollouts, evaluation, reference passes) stop within seconds; over several
        # ranks they run to their end, so that every rank stops at the same step boundary.
        if not distributed.distributed():
            request_stop()
        self.console.print(
            f"[bold yellow]{sig.name}[/bold yellow]: {self.announcement} "
            "(send it again to stop at once)"
        )

    @property
    def exit_code(self) -> int:
        """The shell's code for the signal that asked to stop (130 SIGINT, 143 SIGTERM)."""
        return self.CODES.get(self.requested, 1)

    @property
    def stop(self) -> bool:
        return self.requested is not None or self.test_reason is not None

    def agree(self) -> bool:
        """`stop`, agreed over the ranks: a request on any of them stops every rank at the same
        step, with the requesting signal's exit code."""
        if not distributed.distributed():
            return self.stop
        # Only the agreed value decides: a signal landing during the all-reduce is in this
        # rank's flag but not in the others' result, so it waits for the next agreement.
        own = self.CODES[self.requested] if self.requested else int(self.stop)
        agreed = distributed.max_over_ranks(own)
        if agreed and not self.stop:
            by_code = {code: sig for sig, code in self.CODES.items()}
            self.requested = by_code.get(agreed)
            if self.requested is None:
                self.test_reason = "a stop request on another rank"
        return bool(agreed)

    def interruption(self, step: int, checkpoint: Path) -> TrainingInterrupted:
        if self.requested is not None:
            name, code = self.requested.name, self.CODES[self.requested]
        else:
            name, code = self.test_reason or "stop requested", 0
        return TrainingInterrupted(name, step, checkpoint, code)


class PhaseStopSignals(StopSignals):
    """Stop requests for a job made of phases and nothing else to finish (an evaluation): inside
    a phase the first signal ends it at its next chunk; outside one (loading a model, reading a
    dataset) it raises KeyboardInterrupt at once, since there is no step boundary to wait for."""

    def _handle(self, signum, frame) -> None:
        if self.requested is None and not phase_running():
            self.requested = signal.Signals(signum)
            if self._second_signal is not None:
                self._second_signal.acknowledged.set()
            raise KeyboardInterrupt
        super()._handle(signum, frame)


@contextmanager
def interruptible(console: Console) -> Iterator[StopSignals]:
    """A long job outside the training loop (an evaluation): its phases show progress on
    `console`; the first SIGINT/SIGTERM ends it within seconds, by `progress.PhaseInterrupted`
    inside a phase or KeyboardInterrupt outside one. The caller reports either and exits with
    `signals.exit_code`."""
    with PhaseStopSignals(console, "stopping the running phase") as signals, attached(console):
        yield signals
