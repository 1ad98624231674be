"""The stop agreement over ranks, without processes: a signal that lands while the all-reduce
runs must not make this rank's answer differ from the others' (the deadlock of issue #31: one
rank went on to a checkpoint's all-gather while the other waited in the next stop agreement)."""

from __future__ import annotations

import signal

from rich.console import Console

import rasft_mlx.runtime.distributed as distributed
from rasft_mlx.training.stop_signals import StopSignals


def test_a_signal_during_the_all_reduce_waits_for_the_next_agreement(monkeypatch):
    signals = StopSignals(Console(quiet=True))
    others_saw: list[int] = []

    def all_max(own: int) -> int:
        signals.requested = signal.SIGTERM  # the handler runs while the collective is in flight
        others_saw.append(own)
        return own  # the other rank had nothing: the maximum is what this rank sent

    monkeypatch.setattr(distributed, "distributed", lambda: True)
    monkeypatch.setattr(distributed, "max_over_ranks", all_max)
    assert signals.agree() is False  # what every rank was told: go on
    assert signals.agree() is True  # the next agreement carries the request to every rank
    assert others_saw == [0, 143]
    assert signals.exit_code == 143


def test_a_request_on_another_rank_is_adopted_with_its_code(monkeypatch):
    signals = StopSignals(Console(quiet=True))
    monkeypatch.setattr(distributed, "distributed", lambda: True)
    monkeypatch.setattr(distributed, "max_over_ranks", lambda own: 130)
    assert signals.agree() is True
    assert signals.requested == signal.SIGINT and signals.exit_code == 130
