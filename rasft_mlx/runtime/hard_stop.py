"""The second SIGINT/SIGTERM ends the process within a second or two, even inside a native call.

Python runs a signal handler only when the main thread is back in the interpreter: while it sits
in one long MLX call (a compiled step, a prefill, a matmul on a slow BLAS) neither the first
signal's "stopping..." nor the second signal's abort happens. The C-level handler does write
each signal's number to the wakeup fd at once, and MLX releases the GIL while it computes, so a
watcher thread reading that fd sees both signals when they land. On the second one it gives the
Python handler `grace_seconds` to end the process the ordinary way, then calls `os._exit`.

What a hard exit loses: the work since the last checkpoint, and nothing else: checkpoints,
adapters and summaries are written to a temp name and renamed (`fileio.atomic_write`,
`checkpoint.write_checkpoint`), so a file is either whole or absent; a temp file cut off
mid-write may remain (dot-prefixed, ignored by --resume).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

WATCHED = (signal.SIGINT, signal.SIGTERM)
GRACE_SECONDS = 0.5
_enabled = False  # the command line turns it on; a library caller (a notebook) keeps its kernel


def enable() -> None:
    """Let the stop handlers of this process end it on a second signal (`rasft-mlx` does)."""
    global _enabled
    _enabled = True


def enabled() -> bool:
    return _enabled


class SecondSignalExit:
    """While active (a context manager, entered on the main thread): counts SIGINT/SIGTERM as
    they arrive; tells the user at once when the first one is waiting for a native call to
    return; the second one ends the process with the shell's code for it (130, 143)."""

    def __init__(self, grace_seconds: float = GRACE_SECONDS, first_notice_seconds: float = 2.0):
        self.grace_seconds = grace_seconds
        self.first_notice_seconds = first_notice_seconds
        self.acknowledged = threading.Event()  # the Python handler ran for the first signal
        self._read_fd = self._write_fd = None
        self._previous_fd = -1
        self._thread: threading.Thread | None = None

    def __enter__(self) -> SecondSignalExit:
        if threading.current_thread() is not threading.main_thread():
            return self
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self._previous_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name="second-signal", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is None:
            return
        signal.set_wakeup_fd(self._previous_fd)
        os.close(self._write_fd)  # the watcher reads end-of-file and returns
        self._thread.join(timeout=5)
        os.close(self._read_fd)
        self._thread = None

    def _watch(self) -> None:
        seen = 0
        while True:
            try:
                data = os.read(self._read_fd, 64)
            except OSError:
                return
            if not data:
                return
            for number in data:
                if number not in WATCHED:
                    continue
                seen += 1
                if seen == 1:
                    threading.Thread(target=self._notice_if_stuck, daemon=True).start()
                else:
                    self._exit_soon(signal.Signals(number))

    def _notice_if_stuck(self) -> None:
        if not self.acknowledged.wait(self.first_notice_seconds):
            _write_stderr(
                "signal received; the main thread is inside a long native call and stops when "
                "it returns (send it again to end at once)\n"
            )

    def _exit_soon(self, sig: signal.Signals) -> None:
        time.sleep(self.grace_seconds)  # the ordinary KeyboardInterrupt path, if it can run
        _write_stderr(f"{sig.name} again: ending now; the last checkpoint stays\n")
        if sys.stderr is not None and sys.stderr.isatty():
            _write_stderr("\x1b[?25h")  # a live progress display may have hidden the cursor
        os._exit(128 + int(sig))


def _write_stderr(text: str) -> None:
    try:
        os.write(2, text.encode())
    except OSError:
        pass
