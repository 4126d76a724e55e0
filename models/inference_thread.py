"""A model's one inference thread: runs what is submitted to it, in order, as an ``Executor``.

Why not a ``ThreadPoolExecutor(max_workers=1)``: its threads are joined when the interpreter
exits. A model stuck on its thread (a lost device, a deadlock: what the inference timeout gives
up on) then keeps the process alive after the worker stopped, until someone kills it. This
thread is a daemon: whoever closes the runner waits for it as long as they choose
(``TorchRunner.aclose``), and the process can exit without it.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")
_Job = tuple[Future[Any], Callable[[], Any]]


class InferenceThread(Executor):
    """One daemon thread named ``name``, started at the first ``submit``; ``initializer`` runs on it
    first (its torch settings, its priority)."""

    def __init__(self, name: str, initializer: Callable[[], None] | None = None) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._initializer = initializer
        self._lock = threading.Lock()
        self._closed = False
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future: Future[T] = Future()
            self._jobs.put((future, functools.partial(fn, *args, **kwargs)))
            if self.thread.ident is None:  # not started yet
                self.thread.start()
            return future

    def _run(self) -> None:
        broken: BaseException | None = None
        if self._initializer is not None:
            try:
                self._initializer()
            except BaseException as exc:  # noqa: BLE001 - every job is failed with it below
                broken = exc
        while (job := self._jobs.get()) is not None:
            future, call = job
            if not future.set_running_or_notify_cancel():
                continue  # cancelled while it waited
            if broken is not None:
                future.set_exception(RuntimeError(f"the inference thread could not be set up: {broken!r}"))
                continue
            try:
                result = call()
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for the future
                future.set_exception(exc)
            else:
                future.set_result(result)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more work; with ``cancel_futures`` what has not started is cancelled; with ``wait``,
        returns once the thread has finished what it runs (forever, for a stuck model)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                if cancel_futures:
                    while True:
                        try:
                            job = self._jobs.get_nowait()
                        except queue.Empty:
                            break
                        if job is not None:
                            job[0].cancel()
                self._jobs.put(None)
        if wait and self.thread.ident is not None:
            self.thread.join()
