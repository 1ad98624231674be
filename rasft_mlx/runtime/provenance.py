"""Which code ran a run: rasft-mlx's version and, run from a git checkout, its commit (and
whether the package had uncommitted changes), with MLX's and mlx-lm's versions."""

from __future__ import annotations

import functools
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from rasft_mlx.runtime.version import __version__

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(PACKAGE_DIR.parent), *args],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.cache
def software_versions() -> dict:
    """{rasft_mlx, git_commit, git_dirty, mlx, mlx_lm}; the git fields None outside a checkout
    (an installed wheel). git_dirty: the package's tracked files differ from the commit."""
    commit = _git("rev-parse", "HEAD") if (PACKAGE_DIR.parent / ".git").exists() else None
    dirty = None
    if commit is not None:
        changes = _git("status", "--porcelain", "--untracked-files=no", "--", str(PACKAGE_DIR))
        dirty = None if changes is None else bool(changes)
    return {
        "rasft_mlx": __version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "mlx": _installed("mlx"),
        "mlx_lm": _installed("mlx-lm"),
    }
