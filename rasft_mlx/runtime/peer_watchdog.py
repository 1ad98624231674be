"""A dead rank ends the run: heartbeats between rank 0 and each other rank over a side socket.

A collective waits for every rank; the ring backend only notices a lost peer inside one, and a
rank stuck outside one (or a machine gone from the network) would leave the others waiting
forever. Each rank keeps one TCP connection to rank 0 (rank 0: one per other rank), sends a
heartbeat every second and watches for the peer's: a closed connection (the process died, even
by SIGKILL) or `silence_seconds` without a heartbeat (the machine went away) makes this process
print why and exit with EXIT_PEER_LOST, at once, from a thread (collectives release the GIL).
Rank 0 going down takes the others down the same way; a rank that finishes says so first.
"""

from __future__ import annotations

import json
import os
import select
import socket
import sys
import threading
import time
from pathlib import Path

import mlx.core as mx

import rasft_mlx.runtime.distributed as distributed

EXIT_PEER_LOST = 75
HEARTBEAT, FINISHED = b"h", b"f"
DEFAULT_SILENCE_SECONDS = 120.0


def coordinator_host() -> str:
    """Rank 0's address as the launcher told it: NCCL's host, JACCL's coordinator, or the first
    entry of the ring hostfile; RASFT_COORDINATOR overrides, loopback is the fallback."""
    if os.environ.get("RASFT_COORDINATOR"):
        return os.environ["RASFT_COORDINATOR"]
    if os.environ.get("NCCL_HOST_IP"):
        return os.environ["NCCL_HOST_IP"]
    if os.environ.get("MLX_JACCL_COORDINATOR"):
        return os.environ["MLX_JACCL_COORDINATOR"].rsplit(":", 1)[0]
    try:
        hosts = json.loads(Path(os.environ.get("MLX_HOSTFILE", "")).read_text())
        return str(hosts[0][0]).rsplit(":", 1)[0]
    except (OSError, ValueError, LookupError, TypeError):
        return "127.0.0.1"


class PeerWatchdog:
    def __init__(self, silence_seconds: float | None = None):
        env = os.environ.get("RASFT_PEER_SILENCE_SECONDS")
        self.silence = silence_seconds or float(env or DEFAULT_SILENCE_SECONDS)
        self.rank = distributed.rank()
        self.peers: dict[socket.socket, int] = {}  # connection -> the peer's rank
        self.finished: set[int] = set()
        self.closing = False
        self.lock = threading.Lock()

    def start(self) -> PeerWatchdog:
        """Connect (a collective: every rank calls it) and start the heartbeat thread."""
        world = distributed.world_size()
        listener = None
        port = 0
        if self.rank == 0:
            listener = socket.create_server(("", 0))
            listener.listen(world)
            port = listener.getsockname()[1]
        shared = distributed.all_sum(mx.array([port], dtype=mx.int32), "control")
        port = int(shared.item())
        if listener is not None:
            listener.settimeout(60)
            for _ in range(world - 1):
                connection, _ = listener.accept()
                peer = int.from_bytes(connection.recv(4), "little")
                self.peers[connection] = peer
            listener.close()
        else:
            connection = socket.create_connection((coordinator_host(), port), timeout=60)
            connection.sendall(self.rank.to_bytes(4, "little"))
            self.peers[connection] = 0
        for connection in self.peers:
            connection.setblocking(False)
        threading.Thread(target=self._watch, name="rasft-peer-watchdog", daemon=True).start()
        return self

    def finish(self) -> None:
        """This rank is done: tell the peers, so its exit is not taken for a death."""
        with self.lock:
            self.closing = True
            for connection in self.peers:
                try:
                    connection.setblocking(True)
                    connection.sendall(FINISHED)
                except OSError:
                    pass

    def _watch(self) -> None:
        last_heard = {peer: time.monotonic() for peer in self.peers.values()}
        while True:
            with self.lock:
                if self.closing:
                    return
                for connection in self.peers:
                    try:
                        connection.send(HEARTBEAT)
                    except OSError:
                        # A full buffer, or a peer gone: the read below tells which, and whether
                        # it said it finished first (its FINISHED may sit unread behind the break).
                        pass
            readable, _, _ = select.select(list(self.peers), [], [], 1.0)
            for connection in readable:
                peer = self.peers[connection]
                try:
                    data = connection.recv(4096)
                except OSError:
                    data = b""
                if FINISHED in data:
                    self.finished.add(peer)
                if not data:
                    if peer not in self.finished:
                        self._lost(peer, "its process ended")
                    with self.lock:
                        del self.peers[connection]
                        last_heard.pop(peer, None)
                    connection.close()
                    continue
                last_heard[peer] = time.monotonic()
            now = time.monotonic()
            for peer, heard in last_heard.items():
                if peer not in self.finished and now - heard > self.silence:
                    self._lost(peer, f"no heartbeat for {self.silence:.0f} s")
            if not self.peers:
                return

    def _lost(self, peer: int, why: str) -> None:
        if self.closing:
            return
        sys.stderr.write(
            f"\nrasft-mlx rank {self.rank}: lost rank {peer} ({why}); stopping this rank too. "
            "Resume the run with --resume once every rank is up.\n"
        )
        sys.stderr.flush()
        os._exit(EXIT_PEER_LOST)


def start_watchdog() -> PeerWatchdog | None:
    """The watchdog for a run over several processes; None in a single process."""
    if not distributed.distributed():
        return None
    return PeerWatchdog().start()
