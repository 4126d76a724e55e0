"""Acknowledgement in order, redelivery, and the live progress (group commits), with fakes."""

from __future__ import annotations

import asyncio

import orjson

from streams.codecs.codec import EventSchema, TensorField
from streams.flow.acknowledger import Acknowledger, InFlight
from streams.flow.delivery import Shipment
from streams.flow.live_stats import LiveStats
from streams.flow.pipeline import Pipeline, PipelineTopics
from streams.kafka.group_commits import GroupCommits
from streams.metrics import PipelineMetrics
from streams.records import InputRecord, OutputRecord, Partition
from tests.fakes import ListSink, RecordingProgress, SumRunner


def acknowledger(sink: ListSink, progress: RecordingProgress) -> Acknowledger:
    pipeline = Pipeline(
        name="p",
        schema=EventSchema(id_field="id", inputs=(TensorField("x", (1,)),)),
        runner=SumRunner(),
        sink=sink,
        topics=PipelineTopics(output="out", dead_letter="dlq"),
    )
    return Acknowledger(
        pipeline.delivery,
        progress,
        max_in_flight=4,
        latency_budget_ms=50,
        clock_ms=lambda: 1_000,
        metrics=PipelineMetrics("p"),
        stats=LiveStats(),
    )


def in_flight(offset: int, acknowledged: asyncio.Future[None]) -> InFlight:
    record = InputRecord("in", 0, offset, 990, None, b"{}")
    output = OutputRecord("out", None, orjson.dumps({"offset": offset}), 0)
    return InFlight([record], Shipment([output], acknowledged, None), scored=1, dead_lettered=0)


async def test_batches_are_reported_in_the_order_they_were_sent_whatever_order_they_are_acknowledged_in():
    progress = RecordingProgress()
    acks = acknowledger(ListSink(), progress)
    running = asyncio.create_task(acks.run())
    first, second = asyncio.get_running_loop().create_future(), asyncio.get_running_loop().create_future()
    await acks.put(in_flight(0, first))
    await acks.put(in_flight(1, second))
    second.set_result(None)
    await asyncio.sleep(0.01)
    assert progress.acknowledged_offsets == [], "the second waits behind the first"
    first.set_result(None)
    await asyncio.wait_for(acks.drain(), 5)
    assert progress.acknowledged_offsets == [("in", 0, 0), ("in", 0, 1)]
    assert acks.metrics.predictions == 2
    running.cancel()


async def test_group_commits_keep_offsets_a_failed_commit_did_not_take():
    answers = [False, True]
    committed: list[dict[Partition, int]] = []

    async def commit_offsets(offsets: dict[Partition, int]) -> bool:
        committed.append(dict(offsets))
        return answers.pop(0)

    commits = GroupCommits(commit_offsets, interval_ms=1000)
    commits.acknowledged([InputRecord("in", 0, 4, 0, None, None)], 1, 0)
    await commits.commit()
    commits.acknowledged([InputRecord("in", 1, 9, 0, None, None)], 1, 0)
    await commits.commit()
    assert committed == [{Partition("in", 0): 5}, {Partition("in", 0): 5, Partition("in", 1): 10}]
    await commits.commit()
    assert len(committed) == 2, "nothing new: no commit"
