"""Closing a TorchRunner (models.runner) whose model thread is stuck: the inference timeout gave up
on the batch (streams.flow.breaker.TimedRunner), and the model is then swapped out, promoted
away from, or the worker stops. Nothing may wait on that thread from the event loop, nor keep
the process from exiting (models.inference_thread)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models.inference_thread import InferenceThread
from models.runner import TorchRunner
from streams.errors import ModelTimeout
from streams.flow.breaker import TimedRunner

ROOT = Path(__file__).parents[2]
# Releases the stuck thread whatever happens, so a failing test still ends.
SAFETY_S = 8.0


class Stuck(nn.Module):
    """Blocks its thread until ``release`` is set: a stuck device or a deadlock."""

    def __init__(self, release: threading.Event) -> None:
        super().__init__()
        self.release = release
        self.entered = threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.entered.set()
        self.release.wait()
        return x.sum(dim=1)


async def test_closing_a_runner_whose_model_thread_is_stuck_never_blocks_the_event_loop():
    release = threading.Event()
    model = Stuck(release)
    runner = TorchRunner(model, name="stuck", version="1", device="cpu")
    runner.close_grace_s = 0.2
    safety = threading.Timer(SAFETY_S, release.set)
    safety.start()
    try:
        with pytest.raises(ModelTimeout):
            await TimedRunner(runner, 0.05).predict([np.ones((2, 3), dtype=np.float32)])
        assert model.entered.is_set() and not release.is_set(), "its thread is stuck in the model"
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        ticker = asyncio.create_task(tick())
        started = time.monotonic()
        await runner.aclose()
        took = time.monotonic() - started
        ticker.cancel()
        # Before: executor.shutdown(wait=True) on the loop, blocked until the model let go
        # (here the safety timer, SAFETY_S later; a deadlocked model: never).
        assert took < SAFETY_S / 2, f"aclose waited {took:.1f}s for a stuck model thread"
        assert ticks >= 5, "the event loop ran while the runner closed"
    finally:
        release.set()
        safety.cancel()


async def test_closing_an_idle_runner_waits_for_the_batch_it_is_scoring():
    release = threading.Event()
    model = Stuck(release)
    runner = TorchRunner(model, name="busy", version="1", device="cpu")
    scoring = asyncio.ensure_future(runner.predict([np.ones((2, 3), dtype=np.float32)]))
    await asyncio.to_thread(model.entered.wait, 5)
    threading.Timer(0.1, release.set).start()
    await runner.aclose()
    assert (await scoring).tolist() == [3.0, 3.0], "a batch that ends within the grace is scored, not dropped"


STUCK_PROCESS = """
import asyncio, threading, time
import numpy as np, torch
from models.runner import TorchRunner
from streams.flow.breaker import TimedRunner
from streams.errors import ModelTimeout

class Stuck(torch.nn.Module):
    def forward(self, x):
        threading.Event().wait()  # never set
        return x.sum(dim=1)

async def main():
    runner = TorchRunner(Stuck(), name="stuck", version="1", device="cpu")
    runner.close_grace_s = 0.1
    try:
        await TimedRunner(runner, 0.05).predict([np.ones((2, 3), dtype=np.float32)])
    except ModelTimeout:
        pass
    await runner.aclose()
    print("closed", flush=True)

asyncio.run(main())
"""


def test_a_process_whose_model_thread_is_stuck_still_exits():
    # Before: a ThreadPoolExecutor thread, joined at interpreter exit: the worker stopped, then
    # its process waited for the stuck model for good.
    result = subprocess.run(
        [sys.executable, "-c", STUCK_PROCESS], capture_output=True, text=True, timeout=60, cwd=ROOT, check=False
    )
    assert result.returncode == 0 and result.stdout == "closed\n", result.stderr[-2000:]


def test_the_inference_thread_runs_jobs_in_order_and_hands_back_their_errors():
    thread = InferenceThread("t")
    ran: list[int] = []
    first = thread.submit(ran.append, 1)
    failing = thread.submit(int, "x")
    last = thread.submit(ran.append, 2)
    assert first.result(5) is None and last.result(5) is None and ran == [1, 2]
    with pytest.raises(ValueError):
        failing.result(5)
    thread.shutdown()
    assert not thread.thread.is_alive() and thread.thread.daemon
    with pytest.raises(RuntimeError, match="after shutdown"):
        thread.submit(ran.append, 3)


def test_shutting_down_cancels_what_has_not_started_when_asked():
    release = threading.Event()
    thread = InferenceThread("t")
    running = thread.submit(release.wait, 5)
    waiting = thread.submit(int, "1")
    thread.shutdown(wait=False, cancel_futures=True)
    release.set()
    assert running.result(5) is True and waiting.cancelled()


def test_an_initializer_that_fails_fails_every_job_instead_of_leaving_it_waiting():
    def broken() -> None:
        raise OSError("no such thing")

    thread = InferenceThread("t", initializer=broken)
    with pytest.raises(RuntimeError, match="could not be set up: OSError"):
        thread.submit(int, "1").result(5)
    thread.shutdown()
