"""A model scored in a process of its own: a shadow that cannot slow the serving process down.

A thread of the worker's process, even at the lowest priority, shares the worker's GIL: a small
model's forward is mostly Python (module calls, torch's dispatch) and holds the GIL between its
kernels, so the event loop waits for it, in steps of the interpreter's switch interval (5 ms),
at each of a batch's turns. Measured with a 10x-the-champion shadow on one thread: the
champion's p99 went from 26 to 59 ms at 40% load (``bench/results/shadow.md``). A child process
has its own interpreter, its own GIL and its own priority; only the batch's arrays (pickled, a
copy) and the predictions cross a pipe.

The child loads the model itself, from a picklable ``factory`` (the same loader, checks and
warm-up as in the worker): it says it is ready, or why not, before ``start`` returns. A child that
dies (a crash in native code, killed for memory) fails the batch it had and is started again at a
later batch, after ``RESTART_AFTER_S``; a child that does not answer a batch within ``timeout_s``
is killed (which a thread never can be) and started again the same way, and one still scoring
when the runner closes is terminated. A child never outlives the worker, even one killed outright.

An ``aside`` (a second picklable factory) puts more of the work in the child: built there after
the model loads, it is handed each batch's predictions and what the worker sent with the inputs
(a shadow's process writes the shadow's records with them: ``app.shadow_process``); an idle
child is asked to leave at close, so its aside can finish, before it is terminated.

``pause``/``resume`` stop the child while the worker's champion scores a batch
(``models.process_pause``); a batch's timeout counts only the time the child was not paused.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any, Protocol

import numpy as np

from models.inference_thread import InferenceThread
from models.process_pause import Pause
from streams.errors import ModelError, ModelLoadError, ModelTimeout

log = logging.getLogger(__name__)

# A model's process that died is started again at a batch at least this long after.
RESTART_AFTER_S = 30.0
# How long a start may take: spawning an interpreter, importing torch, loading and warming up.
START_TIMEOUT_S = 300.0
# How long a terminated child may take to leave before it is killed.
CLOSE_GRACE_S = 2.0
# How long an idle child told to stop may take to finish what its ``aside`` sends, before it is terminated.
LEAVE_S = 10.0
# The lowest nice value: a process asking for it also gets the idle scheduling class.
LOWEST_NICE = 19
# How a child's log lines look on the worker's stderr.
CHILD_LOG_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"
# Linux's prctl option: the signal the kernel sends this process when its parent dies.
PR_SET_PDEATHSIG = 1
# How often a batch's wait for its answer looks at the time the child spent paused (``_answered``).
ANSWER_POLL_S = 0.5
# The most time paused a batch's timeout discounts, in timeouts: a child paused at every batch of a
# champion under a backlog still has its hang noticed (within this many timeouts more).
MAX_PAUSED_TIMEOUTS = 3.0


class BatchScorer(Protocol):
    """What the factory builds in the child: a model that scores a batch on the calling thread."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...

    def predict_now(self, inputs: Sequence[np.ndarray]) -> np.ndarray: ...


class Aside(Protocol):
    """What ``aside`` builds in the child, after the model loads: told each batch's predictions and
    the ``extra`` the worker sent with its inputs (a shadow's process writes its records with it);
    what it returns goes back with the predictions. ``close``: the child is told to stop."""

    def __call__(self, predictions: np.ndarray, extra: Any) -> Any: ...

    def close(self) -> None: ...


class ProcessRunner:
    """A ``Runner`` whose model lives in a child process at priority ``nice``; ``what`` names it in errors."""

    def __init__(
        self,
        factory: Callable[[], BatchScorer],
        *,
        what: str,
        nice: int = 0,
        timeout_s: float | None = None,
        aside: Callable[[str, str], Aside] | None = None,
    ) -> None:
        self._factory = factory
        # Built in the child from the model's name and version (``Aside``); None: predictions only.
        self.aside = aside
        self.what = what
        self.nice = nice
        # A batch not answered in this long: the child is killed (a process, unlike a thread, can
        # be) and started again later; the batch fails with ModelTimeout. None: waits as long as it takes.
        self.timeout_s = timeout_s
        self._closed = False
        self._lock = threading.Lock()  # the child's life (start, loss, close) changes under it
        self._name = self._version = ""
        self._process: Any = None
        self._conn: Connection | None = None
        # Stops the child while the champion scores (``pause``); a new one per child.
        self._pause: Pause | None = None
        self._died_at: float | None = None
        # Whether a batch is between its send and its answer: the pipe then belongs to the I/O thread.
        self._busy = False
        # Sends and receives block (a batch's arrays through a pipe): they run on a thread of
        # their own, which holds the GIL only to pickle, and leaves the event loop free.
        self._io = InferenceThread(f"sluice-process-{what}")

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> str:
        return self._version

    def start(self) -> None:
        """Start the child and wait until its model is loaded (blocking); ``ModelLoadError`` if it is not.

        Started from the runner's own I/O thread, as a restart is: Linux ends a child whose parent
        *thread* exits (``_die_with``), and that thread lives as long as the runner."""
        self._io.submit(self._start_here).result()

    def _start_here(self) -> None:
        context = multiprocessing.get_context("spawn")  # never fork a process with threads
        parent, child = context.Pipe()
        process = context.Process(
            target=_serve,
            args=(child, self._factory, self.nice, os.getpid(), self.aside),
            name=f"sluice-{self.what}",
            daemon=True,
        )
        process.start()
        child.close()
        pause = Pause(process.pid or 0)  # at once: if it dies, another runner's start may reap it
        if not pause.supported:
            _say_once_unpausable(self.what)
        try:
            self._wait_until_ready(process, parent)
        except BaseException:
            pause.close()
            raise
        with self._lock:
            if self._closed:  # closed while it started (a restart): it must not outlive the runner
                pause.close()
                _stop(process, parent)
                raise ModelError(f"{self.what}: closed")
            self._process, self._conn, self._pause = process, parent, pause

    def _wait_until_ready(self, process: Any, parent: Connection) -> None:
        try:
            if not parent.poll(START_TIMEOUT_S):
                raise ModelLoadError(f"{self.what}: its process did not load the model in {START_TIMEOUT_S:.0f} s")
            reply = parent.recv()
        except (EOFError, OSError) as exc:
            process.join(CLOSE_GRACE_S)
            raise ModelLoadError(f"{self.what}: its process exited while loading the model ({_exit(process)})") from exc
        except BaseException:
            _stop(process, parent)
            raise
        if reply[0] != "ready":
            _stop(process, parent)
            raise ModelLoadError(reply[1])
        self._name, self._version = reply[1], reply[2]

    def pause(self) -> None:
        """Stop the child until ``resume`` (the champion scores a batch meanwhile); nests. Called
        from the event loop, never blocks; a batch it scores waits, its timeout not counting."""
        if self._pause is not None and not self._closed:
            self._pause.hold()

    def resume(self) -> None:
        if self._pause is not None:
            self._pause.release()

    async def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        return (await self.predict_with(inputs, None))[0]

    async def predict_with(self, inputs: Sequence[np.ndarray], extra: Any) -> tuple[np.ndarray, Any]:
        """The predictions, and what the child's ``aside`` made of them and ``extra`` (None without one)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._io, self._call, list(inputs), extra)

    def _call(self, inputs: list[np.ndarray], extra: Any) -> tuple[np.ndarray, Any]:
        if self._closed:
            raise ModelError(f"{self.what}: closed")
        if self._conn is None:
            self._restart()
        with self._lock:  # a close meanwhile: the pipe is no longer this thread's
            if self._closed or self._conn is None:
                raise ModelError(f"{self.what}: closed")
            conn, pause = self._conn, self._pause
            self._busy = True
        try:
            conn.send(("predict", inputs, extra))
            if self.timeout_s is not None and not _answered(conn, self.timeout_s, pause):
                self._lost()
                raise ModelTimeout(f"{self.what}: no answer in {self.timeout_s:g} s: its process was ended")
            reply = conn.recv()
        except (EOFError, OSError) as exc:
            self._lost()
            raise ModelError(f"{self.what}: its process exited while scoring a batch ({_exit(self._process)})") from exc
        finally:
            self._busy = False
        if reply[0] == "error":
            raise ModelError(reply[1])
        return np.asarray(reply[1]), reply[2]

    def _restart(self) -> None:
        waited = time.monotonic() - (self._died_at or 0.0)
        if waited < RESTART_AFTER_S:
            raise ModelError(f"{self.what}: its process exited; started again in {RESTART_AFTER_S - waited:.0f} s")
        log.warning("%s: starting its process again after it exited", self.what)
        self._died_at = time.monotonic()  # a failed start waits as long as a death
        self._start_here()  # on the I/O thread already
        self._died_at = None

    def _lost(self) -> None:
        with self._lock:
            if self._process is not None and self._conn is not None:
                self._let_go()
            self._conn, self._died_at = None, time.monotonic()

    def _let_go(self) -> None:
        """End the current child (holding ``_lock``): continued first, if paused, then stopped."""
        if self._pause is not None:
            self._pause.close()
            self._pause = None
        if self._conn is not None:
            _stop(self._process, self._conn)

    def close(self) -> None:
        """End the child, scoring or not (a model stuck in a batch never answers); the batch it had
        fails. An idle child is asked to leave first, so its ``aside`` can finish what it sends."""
        with self._lock:
            self._closed = True  # a batch not yet begun fails at once from here
            if self._process is not None and self._conn is not None:
                if self._pause is not None:
                    self._pause.close()  # a stopped child can neither finish a batch nor leave
                if self._busy:
                    log.warning("%s: its process was still scoring a batch when closed: terminated", self.what)
                else:
                    _ask_to_leave(self._process, self._conn)
                self._let_go()
            self._conn = None
        # Only now: Linux ends the child with the thread that started it (``_die_with``), which
        # must therefore outlive the child's goodbye.
        self._io.shutdown(wait=False, cancel_futures=True)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)


def _answered(conn: Connection, timeout_s: float, pause: Pause | None) -> bool:
    """Whether the child answers within ``timeout_s`` of its own time: the time it spends paused
    while the champion scores does not count (at full load it may be paused most of the time), up
    to ``MAX_PAUSED_TIMEOUTS`` timeouts of it (a hung child may be paused as often as a busy one)."""
    paused_before = pause.stopped_s() if pause is not None else 0.0
    deadline = time.monotonic() + timeout_s
    while True:
        paused = pause.stopped_s() - paused_before if pause is not None else 0.0
        left = deadline + min(paused, MAX_PAUSED_TIMEOUTS * timeout_s) - time.monotonic()
        if left <= 0:
            return False
        if conn.poll(min(left, ANSWER_POLL_S)):
            return True


def _ask_to_leave(process: Any, conn: Connection) -> None:
    """Tell an idle child to stop, and give it ``LEAVE_S`` to: its ``aside`` may have records to send."""
    with contextlib.suppress(OSError, ValueError):
        conn.send(("close",))
        process.join(LEAVE_S)


def _stop(process: Any, conn: Connection) -> None:
    """End the child: terminated (it keeps nothing worth a goodbye, and the pipe may be another
    thread's), then killed. The pipe is closed only once the child is gone, so a thread waiting on
    it reads the end of it."""
    if process.is_alive():
        process.terminate()
        with contextlib.suppress(OSError):  # not reaped yet: its pid is still its own
            os.kill(process.pid, signal.SIGCONT)  # a stopped process's SIGTERM waits for it
        process.join(CLOSE_GRACE_S)
    if process.is_alive():
        process.kill()
        process.join()
    conn.close()


_told_unpausable = False


def _say_once_unpausable(what: str) -> None:
    global _told_unpausable
    if not _told_unpausable:
        _told_unpausable = True
        log.warning(
            "%s: this system cannot pause a process through a pidfd (Linux 5.3 or later, allowed by the "
            "container's seccomp profile): shadows run while the champion scores, and may slow it",
            what,
        )


def _exit(process: Any) -> str:
    code = None if process is None else process.exitcode
    if code is None:
        return "still running"
    return f"killed by signal {-code}" if code < 0 else f"exit status {code}"


def _serve(
    conn: Connection,
    factory: Callable[[], BatchScorer],
    nice: int,
    parent: int,
    aside_factory: Callable[[str, str], Aside] | None = None,
) -> None:
    """The child: load the model, say so, then score each batch sent until told to close (or orphaned)."""
    # Ctrl-C reaches the whole process group: the worker decides when its models stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A spawned interpreter has no logging set up: its warnings (an aside's lost records) go to the
    # worker's stderr, each line naming this process.
    logging.basicConfig(level=logging.WARNING, format=CHILD_LOG_FORMAT)
    _die_with(parent)
    if nice > 0 and hasattr(os, "nice"):
        # Before any thread starts: torch's threads inherit it. A container may forbid it; the
        # model then competes as any process does.
        with contextlib.suppress(OSError):
            os.nice(nice)
    if nice >= LOWEST_NICE and hasattr(os, "sched_setscheduler"):
        # The lowest priority asked for: Linux's idle class as well, which runs only on a core
        # nothing else wants (nice 19 still takes a small share, ~1/70th, of a core the worker is
        # on, and cannot defer to it at once). Inherited by the threads started after it; never
        # refused to an unprivileged process, which may lower its own priority.
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    try:
        model = factory()
        aside = None if aside_factory is None else aside_factory(model.name, model.version)
    except Exception as exc:  # noqa: BLE001 - told to the parent, which reports it as a load error
        conn.send(("failed", str(exc) if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", model.name, model.version))
    try:
        _score_until_told(conn, model, aside)
    finally:
        if aside is not None:
            aside.close()


def _score_until_told(conn: Connection, model: BatchScorer, aside: Aside | None) -> None:
    while True:
        try:
            message = conn.recv()
        except Exception:  # noqa: BLE001 - the worker is gone, or the pipe holds what it never sent
            return
        if message[0] != "predict":
            return
        reply: tuple[Any, ...]
        try:
            predictions = model.predict_now(message[1])
            extra = message[2]
            reply = ("ok", predictions, None if aside is None or extra is None else aside(predictions, extra))
        except Exception as exc:  # noqa: BLE001 - the batch fails, the model stays
            reply = ("error", f"{type(exc).__name__}: {exc}")
        conn.send(reply)


def _die_with(parent: int) -> None:
    """A worker killed outright (SIGKILL, the OOM killer) cannot end its children: on Linux the
    kernel ends this one with it (strictly: with the thread that started it, hence ``start``);
    elsewhere it ends at its next read of the closed pipe."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the worker died before the line above took effect
        os._exit(0)
