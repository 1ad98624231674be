"""The peer watchdog (`runtime/peer_watchdog.py`) on a local socket pair: a peer that said it
finished and then closed its end is not taken for a lost one, even when the next heartbeat to
it fails before its FINISHED is read; a peer that closes without it is lost."""

from __future__ import annotations

import socket
import threading

import pytest

from rasft_mlx.runtime.peer_watchdog import FINISHED, PeerWatchdog


class Lost(Exception):
    pass


def watchdog_over(connection: socket.socket, monkeypatch) -> tuple[PeerWatchdog, list[str]]:
    """Rank 0's watchdog with one peer (rank 1) on `connection`; `_lost` records and stops."""
    watchdog = PeerWatchdog(silence_seconds=30)
    watchdog.rank = 0
    watchdog.peers = {connection: 1}
    connection.setblocking(False)
    reasons: list[str] = []

    def lost(peer: int, why: str) -> None:
        reasons.append(f"rank {peer}: {why}")
        raise Lost

    monkeypatch.setattr(watchdog, "_lost", lost)
    return watchdog, reasons


def run_watch(watchdog: PeerWatchdog) -> None:
    thread = threading.Thread(target=lambda: _swallow(watchdog._watch), daemon=True)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive(), "the watchdog kept waiting on a closed connection"


def _swallow(watch) -> None:
    try:
        watch()
    except Lost:
        pass


def test_a_peer_that_finished_and_closed_is_not_lost(monkeypatch):
    ours, theirs = socket.socketpair()
    watchdog, reasons = watchdog_over(ours, monkeypatch)
    theirs.sendall(FINISHED)
    theirs.close()  # the next heartbeat to it fails before FINISHED is read
    run_watch(watchdog)
    assert reasons == [] and watchdog.finished == {1} and not watchdog.peers


def test_a_peer_that_closed_without_finishing_is_lost(monkeypatch):
    ours, theirs = socket.socketpair()
    watchdog, reasons = watchdog_over(ours, monkeypatch)
    theirs.close()
    run_watch(watchdog)
    assert reasons == ["rank 1: its process ended"]


@pytest.fixture(autouse=True)
def _single_process(monkeypatch):
    monkeypatch.setattr("rasft_mlx.runtime.distributed.rank", lambda: 0)
