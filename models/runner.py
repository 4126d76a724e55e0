"""Runs a PyTorch module on whole batches in a worker thread, so the event loop keeps consuming."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from models.fit import inference_form, predictions_of
from models.inference_thread import InferenceThread

log = logging.getLogger(__name__)

# How long closing a runner (a swap, a promotion, a stop) waits for the batch its thread is scoring.
# A model stuck on its thread (the inference timeout gave up on it: a lost device, a deadlock)
# never lets go, and the event loop must not wait for it.
CLOSE_GRACE_S = 10.0


def resolve_device(device: str) -> torch.device:
    """``auto`` means CUDA when this machine has it, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _inference_thread(threads: int, nice: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)
    if nice > 0 and hasattr(os, "setpriority"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except OSError as exc:  # a container may forbid it; the shadow then only skips batches
            log.warning("could not lower the priority of the inference thread of a shadow: %s", exc)


class TorchRunner:
    """The production runner: one module, one device, one inference thread.

    One thread, because a batch already uses every core through torch's intra-op pool;
    a second concurrent batch would only contend with it. The batcher keeps the next
    batch filling while this one runs.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        name: str,
        version: str,
        device: str = "auto",
        threads: int = 0,
        nice: int = 0,
    ) -> None:
        self._name = name
        self._version = version
        self.device = resolve_device(device)
        if threads > 0:
            torch.set_num_threads(threads)
        self.module = inference_form(module.to(self.device))
        # OpenMP's thread count is a setting of each thread: set in whichever thread built the
        # runner (the worker builds it off the event loop), it leaves the inference thread at
        # one OpenMP thread per core, each spinning between batches on cores the event loop needs.
        # ``nice``: a shadow's thread yields the CPU to everything else (the champion's thread, the
        # event loop, the broker on the same host): Linux schedules each thread with its own nice value.
        self._executor = InferenceThread(
            f"sluice-infer-{name}", initializer=functools.partial(_inference_thread, threads, nice)
        )
        self.close_grace_s = CLOSE_GRACE_S

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> str:
        return self._version

    def predict_now(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        """Score one batch on the calling thread."""
        rows = int(inputs[0].shape[0])
        with torch.inference_mode():
            tensors = [torch.from_numpy(x).to(self.device, non_blocking=True) for x in inputs]
            return predictions_of(self.module(*tensors), rows, self._name)

    async def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.predict_now, inputs)

    def warm_up(self, input_shapes: Sequence[tuple[int, ...]], batch_sizes: Sequence[int]) -> dict[int, float]:
        """Run zero batches of each size once untimed, then timed; return seconds per batch size.

        The first call of a module allocates and picks kernels; timing it would mislead
        whoever plans batches from these numbers.
        """
        timings = self._executor.submit(self._timed_batches, input_shapes, batch_sizes).result()
        log.info(
            "model %s v%s warmed up on %s: %s",
            self._name,
            self._version,
            self.device,
            ", ".join(f"batch {s}: {t * 1e3:.2f} ms" for s, t in timings.items()),
        )
        return timings

    def _timed_batches(self, input_shapes: Sequence[tuple[int, ...]], batch_sizes: Sequence[int]) -> dict[int, float]:
        # On the inference thread: its settings and warmed state are the ones batches get.
        timings: dict[int, float] = {}
        for size in batch_sizes:
            batch = [np.zeros((size, *shape), dtype=np.float32) for shape in input_shapes]
            self.predict_now(batch)
            started = time.perf_counter()
            self.predict_now(batch)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            timings[size] = time.perf_counter() - started
        return timings

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    async def aclose(self) -> None:
        """Stop the inference thread without blocking the event loop: batches not started are
        dropped, the one being scored gets ``close_grace_s``; a thread still busy then (a stuck
        model) is left behind with a warning."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + self.close_grace_s
        while self._executor.thread.is_alive():
            if time.monotonic() >= deadline:
                log.warning(
                    "model %s v%s: its inference thread is still scoring a batch %.0fs after the model was closed "
                    "(stuck?): left behind",
                    self._name,
                    self._version,
                    self.close_grace_s,
                )
                return
            await asyncio.sleep(0.01)
