"""Fetching and back-pressure, with a fake source."""

from __future__ import annotations

import asyncio

from streams.flow.batcher import Batcher, BatchPolicy
from streams.flow.cost_model import CostModel
from streams.flow.feeder import Feeder
from streams.metrics import PipelineMetrics
from streams.records import InputRecord
from tests.fakes import ListSource, until


def feeder_over(n: int, *, queue_limit: int, bounded: bool = True, pause_after_s: float = 5.0) -> Feeder:
    records = [InputRecord("in", 0, i, 0, None, b"{}") for i in range(n)]
    batcher = Batcher(BatchPolicy(max_batch_size=10, latency_budget_ms=None), CostModel())
    return Feeder(
        ListSource(records, per_fetch=7, bounded=bounded),
        batcher,
        queue_limit=queue_limit,
        clock_ms=lambda: 0,
        metrics=PipelineMetrics("p"),
        pause_after_s=pause_after_s,
    )


async def test_the_queue_never_holds_more_than_its_limit_and_fills_again_when_emptied():
    feeder = feeder_over(100, queue_limit=20)
    running = asyncio.create_task(feeder.run())
    await asyncio.wait_for(feeder.arrived.wait(), 5)
    await until(lambda: len(feeder.batcher) == 20, "the queue filled")
    assert len(feeder.batcher) == 20, "fetches ask for no more than the room left"
    assert max(feeder.source.asked) <= 20  # type: ignore[attr-defined]
    taken = 0
    while taken < 100:
        plan = feeder.batcher.plan(0)
        if plan.take:
            taken += len(feeder.batcher.take(plan, 0))
            feeder.made_room()
        await asyncio.sleep(0)
        assert len(feeder.batcher) <= 20
    await asyncio.wait_for(running, 5)
    assert feeder.finished and feeder.metrics.received == 100


async def test_a_feeder_kept_waiting_for_room_keeps_the_source_alive_without_fetching():
    feeder = feeder_over(100, queue_limit=10, bounded=False, pause_after_s=0.001)
    running = asyncio.create_task(feeder.run())
    source: ListSource = feeder.source  # type: ignore[assignment]
    await until(lambda: source.keep_alives >= 3, "kept alive three times")
    assert len(feeder.batcher) == 10 and source.handed_out == 10, "nothing fetched while the queue is full"
    feeder.stop()
    await asyncio.wait_for(running, 5)
    assert not feeder.finished, "a live source never ends"


async def test_a_bounded_source_that_ends_wakes_whoever_waits_for_arrivals():
    feeder = feeder_over(0, queue_limit=10)
    waiting = asyncio.create_task(feeder.wait_for_arrivals(None))
    await asyncio.sleep(0)
    await asyncio.wait_for(feeder.run(), 5)
    await asyncio.wait_for(waiting, 5)
    assert feeder.finished
