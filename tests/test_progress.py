"""Phase progress on a non-terminal console, and the stop request that interrupts a phase."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from rasft_mlx import progress


def plain_console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=False, width=200), out


def test_plain_lines_are_throttled_and_name_the_phase(monkeypatch):
    console, out = plain_console()
    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(progress, "PLAIN_EVERY_SECONDS", 10.0)
    with progress.attached(console), progress.phase("eval", 4, "problems") as reporter:
        for at in (1.0, 11.0, 12.0, 25.0):  # lines at 11 s and 25 s only
            now[0] = at
            reporter.advance(1, tokens=100)
    lines = out.getvalue().splitlines()
    assert lines == [
        "eval: 2/4 problems, 18 tok/s, eta 11 s",  # 200 tokens in 11 s; 2 left at 5.5 s each
        "eval: 4/4 problems, 16 tok/s",
    ]


def test_no_console_attached_prints_nothing_and_a_stop_interrupts_the_next_check():
    with progress.phase("rollouts", 3) as reporter:
        reporter.advance(3)
    progress.request_stop()
    try:
        with pytest.raises(progress.PhaseInterrupted, match="rollouts"):
            with progress.phase("rollouts", 3):
                pass
        with pytest.raises(progress.PhaseInterrupted):
            progress.check("generation")
    finally:
        progress.clear_stop()
    progress.check("generation")  # cleared: no stop
