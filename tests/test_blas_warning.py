"""The slow-BLAS warning: a real `rasft-mlx eval` with the OpenBLAS preload turned off says so in
one line, with the measured rate and the fix; the fix named per Linux family."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rasft_mlx.runtime import blas


def run_eval(model_dir, tmp_path, env: dict) -> subprocess.CompletedProcess:
    """A real `rasft-mlx eval` of 2 synthetic problems in `env`; it must succeed."""
    done = subprocess.run(
        [sys.executable, "-m", "rasft_mlx.cli", "eval", "--model", str(model_dir),
         "--data", "synthetic", "--limit", "2", "--max-new-tokens", "4",
         "--out", str(tmp_path / "eval")],
        env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_eval_without_the_preload_warns_once_with_the_rate_and_the_fix(tiny_llama_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", blas._REEXEC_MARKER)}
    done = run_eval(tiny_llama_dir, tmp_path, env | {"RASFT_MLX_NO_BLAS": "1"})
    lines = [line for line in done.stderr.splitlines() if "slow CPU matmuls" in line]
    assert len(lines) == 1, done.stderr
    assert "GFLOP/s here" in lines[0] and "Fix: unset RASFT_MLX_NO_BLAS" in lines[0]


@pytest.mark.skipif(blas.find_optimised_blas() is None, reason="no OpenBLAS on this machine")
def test_with_the_preload_there_is_no_warning(tiny_llama_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "RASFT_MLX_NO_BLAS"}
    assert "slow CPU matmuls" not in run_eval(tiny_llama_dir, tmp_path, env).stderr


def test_a_fast_rate_or_a_preload_gives_no_warning(monkeypatch):
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    assert blas.slow_blas_warning(rate=150.0) is None
    assert "GFLOP/s" in blas.slow_blas_warning(rate=3.0)
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3")
    assert blas.slow_blas_warning(rate=3.0) is None


@pytest.mark.parametrize(
    ("os_release", "command"),
    [
        ('ID=debian\nVERSION_ID="12"', "sudo apt-get install libopenblas0-pthread"),
        ('ID=pop\nID_LIKE="ubuntu debian"', "sudo apt-get install libopenblas0-pthread"),
        ('ID="rocky"\nID_LIKE="rhel centos fedora"', "sudo dnf install openblas"),
        ("ID=arch", "sudo pacman -S openblas"),
        ("ID=nixos", "install OpenBLAS with your package manager"),
    ],
)
def test_the_fix_names_this_linux_familys_package(os_release, command):
    assert blas.install_hint(os_release) == command
