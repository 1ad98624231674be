"""Processes a test starts, each in a session (process group) of its own, so that the suite can
end every one of them, with whatever it started in turn (mlx.launch ranks, trainers), when the
test fails or times out. `tests/conftest.py` does that after every test and fails a passing
test that left one running."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

started: list[subprocess.Popen] = []


def popen(args, **kwargs) -> subprocess.Popen:
    """`subprocess.Popen` in a new process group that the test's teardown kills if still alive."""
    process = subprocess.Popen(args, start_new_session=True, **kwargs)
    started.append(process)
    return process


def group_members(pgids: set[int]) -> list[int]:
    """Live (not zombie) pids whose process group is one of `pgids` (Linux /proc; [] elsewhere)."""
    members = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
        if fields[0] != "Z" and int(fields[2]) in pgids:
            members.append(int(entry.name))
    return members


def end_all() -> list[str]:
    """SIGKILL every process group a test started that still has a live member; returns what
    was still running (empty when the test cleaned up after itself)."""
    pgids = {p.pid for p in started}
    leftovers = [f"pid {pid}" for pid in group_members(pgids)]
    for process in started:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    deadline = time.monotonic() + 10
    for process in started:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        for stream in (process.stdout, process.stderr, process.stdin):
            if stream is not None:
                stream.close()
    while group_members(pgids) and time.monotonic() < deadline:
        time.sleep(0.05)
    started.clear()
    return leftovers
