"""Closing a TorchRunner (models.runner) whose model thread is stuck: the inference timeout gave up
on the batch (streams.flow.breaker.TimedRunner), and the model is then swapped out, promoted
away from, or the worker stops. Nothing may wait on that thread from the event loop."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
import torch
from torch import nn

from models.runner import TorchRunner
from streams.errors import ModelTimeout
from streams.flow.breaker import TimedRunner

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
