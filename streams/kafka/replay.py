"""A bounded replay of Kafka topics: every partition from a start offset up to the end
offset it had when the replay began, then stop.

Events that arrive during the replay are the live worker's job. The replay uses no
consumer group (it assigns partitions itself), so the live worker's committed offsets
are never touched; progress is checkpointed by the backfill (see ``streams.backfill.run``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.backfill.replay_plan import ReplayPlan
from streams.errors import TopicMissingError
from streams.kafka.undecodable import UNDECODABLE, reread_around_undecodable
from streams.records import Partition, SourceRecord

log = logging.getLogger(__name__)


async def start_consumer(consumer: AIOKafkaConsumer) -> None:
    """``consumer.start()``, then one turn of the loop so that the background task of a consumer
    with no group starts: aiokafka 0.14 stops such a consumer by cancelling that task and
    awaiting it, which raises ``CancelledError`` if it never ran. In a ``finally`` that error
    replaced the one that made the caller stop: a wrong pipeline name ended ``sluice backfill``
    with status 0 and nothing said (a cancelled command is a clean stop to Faust)."""
    await consumer.start()
    await asyncio.sleep(0)


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """``consumer.stop()`` that never turns the error being handled into aiokafka's
    ``CancelledError`` (see ``start_consumer``) unless the caller itself is being cancelled."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # the caller is being cancelled: that is not aiokafka's error


async def plan_replay(
    consumer: AIOKafkaConsumer, partitions_of: Mapping[str, Sequence[int]], *, from_timestamp_ms: int | None = None
) -> ReplayPlan:
    """Snapshot the end offsets of every partition (``topic -> partition numbers``; an empty
    list means the topic does not exist) and pick where to start."""
    missing = [t for t, parts in partitions_of.items() if not parts]
    if missing:
        raise TopicMissingError(f"topic(s) {', '.join(missing)} do not exist")
    partitions = [TopicPartition(t, p) for t, parts in partitions_of.items() for p in sorted(parts)]
    end = await consumer.end_offsets(partitions)
    start = await consumer.beginning_offsets(partitions)
    if from_timestamp_ms is not None:
        found = await consumer.offsets_for_times({tp: from_timestamp_ms for tp in partitions})
        for tp, at in found.items():
            start[tp] = at.offset if at is not None else end[tp]
    return ReplayPlan(
        start={Partition(tp.topic, tp.partition): at for tp, at in start.items()},
        end={Partition(tp.topic, tp.partition): at for tp, at in end.items()},
    )


class ReplaySource:
    """A ``streams.source.Source`` over a plan: each partition from ``position`` (default: the
    plan's start) up to the plan's end, then ``exhausted``. Uses no consumer group."""

    def __init__(
        self, consumer: AIOKafkaConsumer, plan: ReplayPlan, position: Mapping[Partition, int], *, poll_ms: int = 1000
    ) -> None:
        self.consumer = consumer
        self.plan = plan
        self.poll_ms = poll_ms
        todo = {p: position.get(p, plan.start[p]) for p in plan.end}
        # Per partition still to read: the first offset not yet handed out, to go back to if a
        # fetch cannot be decoded, and to tell the backlog.
        self._upcoming = {TopicPartition(*p): at for p, at in todo.items() if at < plan.end[p]}
        self._end = {TopicPartition(*p): at for p, at in plan.end.items()}
        self._assigned = False

    @property
    def exhausted(self) -> bool:
        return not self._upcoming

    def backlog(self) -> int:
        return sum(self._end[tp] - at for tp, at in self._upcoming.items())

    def lag_by_partition(self) -> dict[Partition, int]:
        return {Partition(tp.topic, tp.partition): self._end[tp] - at for tp, at in self._upcoming.items()}

    async def keep_alive(self) -> list[SourceRecord]:
        return []  # no group to stay in

    async def next_batch(self, max_records: int) -> list[SourceRecord]:
        if not self._upcoming:
            return []
        if not self._assigned:
            self.consumer.assign(list(self._upcoming))
            for tp, at in self._upcoming.items():
                self.consumer.seek(tp, at)
            self._assigned = True
        try:
            fetched = await self.consumer.getmany(*self._upcoming, timeout_ms=self.poll_ms, max_records=max_records)
        except UNDECODABLE as exc:
            log.warning("a fetch could not be decoded (%r); reading partition by partition to find the record", exc)
            fetched = await reread_around_undecodable(self.consumer, dict(self._upcoming), max_records, self.poll_ms)
        batch: list[SourceRecord] = []
        for tp, records in fetched.items():
            end = self._end[tp]
            batch.extend(r for r in records if r.offset < end)
            if records:
                self._upcoming[tp] = records[-1].offset + 1
            if self._upcoming[tp] >= end:
                self._finish(tp)
        # A partition whose remaining records were deleted by retention or compaction
        # ends early: its position jumps past the snapshot.
        for tp in list(self._upcoming):
            if await self.consumer.position(tp) >= self._end[tp]:
                self._finish(tp)
        return batch

    def _finish(self, tp: TopicPartition) -> None:
        del self._upcoming[tp]
        self.consumer.pause(tp)
