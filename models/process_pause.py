"""A child process stopped while the champion scores a batch, and continued after.

Even at nice 19 in Linux's idle class, a shadow's process computing on the second of two cores
slows the champion's work on the first (shared caches and memory bandwidth, a hypervisor's
scheduling of its virtual CPUs): measured at 40% load on a 2-core host, the champion's median
latency went from 7 to 15 ms (``bench/results/shadow-40``). Stopped (``SIGSTOP``) while the
worker scores a batch, the shadow computes only between the champion's batches, when nothing
latency-bound is running in the worker.

Signals go through a pidfd (Linux 5.3): a pid may be reused once its process is reaped, a pidfd
never names another process. Where there is none, ``Pause`` does nothing. The time the child
spent stopped is counted, so its runner's timeout measures the child's own time, not the
champion's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time


class Pause:
    """Stops and continues one child process; ``hold``/``release`` nest (the outermost pair counts).

    Thread-safe: the event loop holds and releases, the runner's threads close it and read the
    time stopped; the lock is held only for a signal's system call."""

    def __init__(self, pid: int) -> None:
        self._fd: int | None = None
        if hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal"):
            with contextlib.suppress(OSError):
                self._fd = os.pidfd_open(pid)
        self._holds = 0
        self._since: float | None = None
        self._stopped_s = 0.0
        self._lock = threading.Lock()

    @property
    def supported(self) -> bool:
        return self._fd is not None

    def hold(self) -> None:
        with self._lock:
            self._holds += 1
            if self._holds == 1 and self._signal(signal.SIGSTOP):
                self._since = time.monotonic()

    def release(self) -> None:
        with self._lock:
            if self._holds == 0:
                return
            self._holds -= 1
            if self._holds == 0:
                self._continue()

    def stopped_s(self) -> float:
        """Seconds the child has spent stopped so far."""
        with self._lock:
            since = self._since
            return self._stopped_s + (time.monotonic() - since if since is not None else 0.0)

    def close(self) -> None:
        """Continue the child (a stopped child can neither leave politely nor die of SIGTERM), and
        forget it: a closed ``Pause`` signals nothing, so its fd's number, reused, is never signalled."""
        with self._lock:
            self._holds = 0
            self._continue()
            self._signal(signal.SIGCONT)  # whatever stopped it
            fd, self._fd = self._fd, None
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def _continue(self) -> None:
        if self._since is not None:
            self._signal(signal.SIGCONT)
            self._stopped_s += time.monotonic() - self._since
            self._since = None

    def _signal(self, signum: int) -> bool:
        if self._fd is None:
            return False
        try:
            signal.pidfd_send_signal(self._fd, signum)
        except OSError:  # the child has exited (or its pidfd was closed by a close meanwhile)
            return False
        return True
