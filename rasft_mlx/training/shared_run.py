"""The run directory over several ranks: rank 0 owns it; the others get a scratch dir and, on
--resume, rank 0's checkpoint sent to them (the ranks need not share a file system)."""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import rasft_mlx.runtime.distributed as distributed
from rasft_mlx.training.checkpoint import Checkpoint, checkpoints_dir, read_checkpoint


@contextmanager
def rank_run_dir(run_dir: Path):
    """The run dir on rank 0; on another rank a scratch dir for what it would write (eval files,
    ledgers, adapters), removed at the end, so only rank 0 writes the real one."""
    if distributed.is_main():
        yield run_dir
        return
    scratch = Path(tempfile.mkdtemp(prefix=f"rasft-rank{distributed.rank()}-"))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def share_checkpoint(checkpoint: Checkpoint | None, run_dir: Path) -> Checkpoint | None:
    """Rank 0's checkpoint (or None) on every rank: its files travel in one gather and the other
    ranks read them back from their scratch `run_dir`."""
    if not distributed.distributed():
        return checkpoint
    files: dict[str, bytes] = {}
    if distributed.is_main() and checkpoint is not None:
        files = {p.name: p.read_bytes() for p in sorted(checkpoint.path.iterdir()) if p.is_file()}
    index = {
        "name": checkpoint.path.name if checkpoint is not None else None,
        "sizes": [[name, len(data)] for name, data in files.items()],
    }
    index = distributed.broadcast_json(index if distributed.is_main() else None, "checkpoint")
    payload = distributed.all_gather_bytes(b"".join(files.values()), "checkpoint")[0]
    if distributed.is_main() or index["name"] is None:
        return checkpoint
    target = checkpoints_dir(run_dir) / index["name"]
    target.mkdir(parents=True, exist_ok=True)
    offset = 0
    for name, size in index["sizes"]:
        (target / name).write_bytes(payload[offset : offset + size])
        offset += size
    return read_checkpoint(target)
