"""A second SIGTERM ends the process within seconds while its main thread sits in one long MLX
call (here a matmul chain on MLX's own slow CPU BLAS, tens of seconds), where Python's signal
handlers cannot run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from child_processes import popen

ROOT = Path(__file__).resolve().parents[1]
LONG_NATIVE_CALL = """
import mlx.core as mx
from rich.console import Console
from rasft_mlx.runtime import hard_stop
from rasft_mlx.training.stop_signals import StopSignals

hard_stop.enable()
with StopSignals(Console(stderr=True)):
    a = mx.random.normal((2500, 2500))
    mx.eval(a)
    print("ready", flush=True)
    for _ in range(20):
        mx.eval(a @ a @ a @ a @ a)
print("finished", flush=True)
"""


def test_the_second_sigterm_ends_a_process_stuck_in_a_native_call():
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}  # MLX's slow BLAS
    env |= {"PYTHONPATH": str(ROOT), "RASFT_MLX_NO_BLAS": "1"}
    process = popen(
        [sys.executable, "-c", LONG_NATIVE_CALL],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "ready"
    time.sleep(1.0)  # inside the first matmul chain
    process.send_signal(signal.SIGTERM)
    time.sleep(3.0)
    assert process.poll() is None  # the first signal only asks to stop after the call
    process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    output, errors = process.communicate(timeout=30)
    assert time.monotonic() - sent < 5.0, errors
    assert process.returncode == 143
    assert "finished" not in output
    assert "inside a long native call" in errors  # said after the first signal, not at the end
    assert "SIGTERM again: ending now" in errors
