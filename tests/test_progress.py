"""Phase progress on a non-terminal console, and the stop request that interrupts a phase."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from rasft_mlx.console import progress


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


def test_a_batched_decode_gets_its_eta_from_tokens_before_any_sequence_finishes(monkeypatch):
    """96 sequences decoded together, 64 new tokens at most: after 10 s and 10 steps (960 tokens)
    none has finished, yet the ETA is the open budget at the token rate: (6144 - 960) / 96 = 54 s.
    Counting finished sequences would have no estimate (or, after one, 95 x 10 s)."""
    console, out = plain_console()
    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(progress, "PLAIN_EVERY_SECONDS", 10.0)
    with progress.attached(console), progress.phase("rollouts", 96, token_budget=96 * 64) as rep:
        now[0] = 10.0
        rep.advance(0, tokens=960)
        # 90 rows stop at step 12 (after 1,152 tokens in all): their 52 unused steps leave the budget.
        now[0] = 20.0
        rep.advance(90, tokens=192, unused=90 * 52)
    assert out.getvalue().splitlines() == [
        "rollouts: 0/96 sequences, 96 tok/s, eta 54 s",
        # open: 6144 - 1152 - 4680 = 312 tokens at 1152 / 20 s = 57.6 tok/s -> 5 s
        "rollouts: 90/96 sequences, 58 tok/s, eta 5 s",
    ]


def test_remaining_seconds_without_a_token_budget_counts_items():
    assert progress.remaining_seconds(10.0, 2, 4, 0, 0, 0) == 10.0
    assert progress.remaining_seconds(10.0, 0, 4, 0, 0, 0) is None
    assert progress.remaining_seconds(10.0, 4, 4, 500, 1000, 0) is None  # done
    assert progress.remaining_seconds(10.0, 1, 4, 100, 1000, 850) == 5.0  # 50 open at 10 tok/s
    assert progress.remaining_seconds(10.0, 1, 4, 100, 1000, 950) == 0.0  # never negative


def test_record_values_read_as_text_not_json():
    from rasft_mlx.console.display import readable

    assert readable({"truncated": 90, "wrong": 6}) == "truncated 90, wrong 6"
    assert readable({"selected": 48}) == "selected 48"
    assert readable({"mean": 0.5, "min": 0.125, "max": 0.9, "count": 3}) == (
        "mean 0.5 (min 0.125, max 0.9), count 3"
    )
    assert readable({}) == "none"
    assert readable(None) == "-"
    assert readable({"at_min": 0.9312}) == "at min 0.9312"
