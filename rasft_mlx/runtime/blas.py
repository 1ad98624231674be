"""Use an optimised system BLAS for MLX's CPU backend on Linux (MLX's bundled one is ~30-50x slower).

MLX resolves its BLAS symbols at load time, so the library has to be preloaded before the process
starts: the CLI re-executes itself once with LD_PRELOAD set. Set RASFT_MLX_NO_BLAS=1 to opt out.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

CANDIDATE_LIBRARIES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libblas.so.3",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib/libopenblas.so.0",
)
_REEXEC_MARKER = "RASFT_MLX_BLAS_REEXEC"


def find_optimised_blas() -> str | None:
    for candidate in CANDIDATE_LIBRARIES:
        if Path(candidate).exists():
            return candidate
    return None


def openblas_coretype(cpuinfo_text: str) -> str | None:
    """The kernel family to force, from /proc/cpuinfo flags (autodetection fails on some VMs)."""
    flags: set[str] = set()
    for line in cpuinfo_text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    if {"avx512f", "avx512bw", "avx512vl"} <= flags:
        return "SkylakeX"
    if {"avx2", "fma"} <= flags:
        return "Haswell"
    return None


def blas_environment() -> dict[str, str]:
    """Environment variables that enable the optimised BLAS here, or {} when none applies."""
    if not sys.platform.startswith("linux") or os.environ.get("RASFT_MLX_NO_BLAS"):
        return {}
    library = find_optimised_blas()
    if library is None:
        return {}
    preload = os.environ.get("LD_PRELOAD", "")
    env = {"LD_PRELOAD": f"{library}:{preload}" if preload else library}
    # The detected kernel family wins over an inherited OPENBLAS_CORETYPE (often a conservative
    # value set for an older bundled OpenBLAS); RASFT_MLX_OPENBLAS_CORETYPE forces one.
    coretype = os.environ.get("RASFT_MLX_OPENBLAS_CORETYPE")
    if not coretype:
        try:
            coretype = openblas_coretype(Path("/proc/cpuinfo").read_text())
        except OSError:
            coretype = None
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    return env


def reexec_with_optimised_blas() -> None:
    """Replace this process with itself plus the BLAS preload, once; a no-op when not applicable."""
    if os.environ.get(_REEXEC_MARKER) or "openblas" in os.environ.get("LD_PRELOAD", ""):
        return
    env = blas_environment()
    if not env:
        return
    os.environ.update(env)
    os.environ[_REEXEC_MARKER] = "1"
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])


def main() -> None:
    """`python -m rasft_mlx.runtime.blas`: print `export` lines for shells and scripts."""
    for key, value in blas_environment().items():
        print(f"export {key}={value}")


if __name__ == "__main__":
    main()
