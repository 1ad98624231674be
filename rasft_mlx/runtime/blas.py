"""Use an optimised system BLAS for MLX's CPU backend on Linux (MLX's bundled one is ~30-50x slower).

MLX resolves its BLAS symbols at load time, so the library has to be preloaded before the process
starts: the CLI re-executes itself once with LD_PRELOAD set. Set RASFT_MLX_NO_BLAS=1 to opt out.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
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


SLOW_GFLOPS = 20.0  # float32 matmul; OpenBLAS on one modern core does more than this
PROBE_SIZE = 384


def float32_matmul_gflops(size: int = PROBE_SIZE, repeats: int = 3) -> float:
    """This process's measured float32 matmul rate on MLX's default device (best of `repeats`)."""
    import time

    import mlx.core as mx

    a = mx.random.normal((size, size))
    mx.eval(a @ a)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        mx.eval(a @ a)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def install_hint(os_release: str) -> str:
    """The one command that installs OpenBLAS on this Linux (from /etc/os-release's text)."""
    ids: set[str] = set()
    for line in os_release.splitlines():
        key, _, value = line.partition("=")
        if key in ("ID", "ID_LIKE"):
            ids |= set(value.strip().strip('"').split())
    if ids & {"debian", "ubuntu"}:
        return "sudo apt-get install libopenblas0-pthread"
    if ids & {"fedora", "rhel", "centos"}:
        return "sudo dnf install openblas"
    if ids & {"arch"}:
        return "sudo pacman -S openblas"
    if ids & {"alpine"}:
        return "sudo apk add openblas"
    return "install OpenBLAS with your package manager"


def slow_blas_warning(rate: float | None = None) -> str | None:
    """One line when MLX multiplies float32 matrices on the CPU with its slow bundled BLAS (Linux
    without OpenBLAS preloaded, measured), saying how slow and what fixes it; else None."""
    if not sys.platform.startswith("linux") or "openblas" in os.environ.get("LD_PRELOAD", ""):
        return None
    import mlx.core as mx

    if mx.default_device().type != mx.DeviceType.cpu:
        return None
    rate = float32_matmul_gflops() if rate is None else rate
    if rate >= SLOW_GFLOPS:
        return None
    if os.environ.get("RASFT_MLX_NO_BLAS"):
        fix = "unset RASFT_MLX_NO_BLAS (it turns the OpenBLAS preload off)"
    elif find_optimised_blas() is not None:
        fix = 'run through `rasft-mlx`, or eval "$(python -m rasft_mlx.runtime.blas)" first'
    else:
        try:
            fix = install_hint(Path("/etc/os-release").read_text())
        except OSError:
            fix = install_hint("")
    return (
        f"slow CPU matmuls: MLX's bundled BLAS does {rate:.1f} GFLOP/s here (float32); "
        "OpenBLAS is typically 30-50x faster on the same CPU (2-core x86 VM: ~200 GFLOP/s), "
        f"and training and generation slow down about as much. Fix: {fix}"
    )


def main() -> None:
    """`python -m rasft_mlx.runtime.blas`: print `export` lines for shells and scripts."""
    for key, value in blas_environment().items():
        print(f"export {key}={value}")


if __name__ == "__main__":
    main()


def _openblas_thread_calls():
    """OpenBLAS's (get, set) thread-count functions in this process, or None when it is not loaded."""
    import ctypes

    try:
        process = ctypes.CDLL(None)
        return process.openblas_get_num_threads, process.openblas_set_num_threads
    except (OSError, AttributeError):
        return None


def blas_thread_count() -> int | None:
    """OpenBLAS's thread count now, or None where it is not loaded."""
    calls = _openblas_thread_calls()
    return None if calls is None else calls[0]()


def set_blas_threads(count: int) -> None:
    """Set OpenBLAS's thread count (a no-op where it is not loaded)."""
    calls = _openblas_thread_calls()
    if calls is not None:
        calls[1](max(1, count))


@contextmanager
def blas_threads(count: int) -> Iterator[None]:
    """OpenBLAS's thread count set to `count` inside the block, the previous count restored after;
    nothing happens where OpenBLAS is not loaded (macOS, MLX's bundled BLAS). Decoding on several
    CPU streams at once sets one BLAS thread per stream: each stream then runs its matmuls on its
    own core instead of the streams contending for one shared BLAS pool."""
    calls = _openblas_thread_calls()
    if calls is None:
        yield
        return
    get_threads, set_threads = calls
    before = get_threads()
    set_threads(max(1, count))
    try:
        yield
    finally:
        set_threads(before)
