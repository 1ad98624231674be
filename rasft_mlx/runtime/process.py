"""What a `rasft-mlx` process sets up before any command: the fast BLAS and the hard stop."""

from __future__ import annotations

from rasft_mlx.runtime import hard_stop
from rasft_mlx.runtime.blas import reexec_with_optimised_blas


def prepare_command_line_process() -> None:
    """Re-execute with OpenBLAS preloaded where that applies, then let a second SIGINT/SIGTERM
    end the process at once (a library caller, such as a notebook, keeps neither)."""
    reexec_with_optimised_blas()
    hard_stop.enable()
