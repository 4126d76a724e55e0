"""The live source: a consumer-group member that hands out whole fetches and commits after them.

Consumes with aiokafka's batch API (``getmany``) rather than per-event iteration: the
per-event cost of a stream abstraction is what a batching server cannot afford. Offsets
are committed explicitly, never automatically. When a rebalance takes partitions away,
the owner of this source is told first (``on_revoke``) so it can finish and commit what
it has in flight for them.

A record batch that cannot be decoded (a bad CRC, bytes its codec cannot decompress, a codec
aiokafka has no library for) makes ``getmany`` raise, losing what that call took from other
partitions and naming none. This source then reads carefully (``_read_around_undecodable``):
every partition back to its first record not handed out, one partition at a time, and in the
one that fails again, one record at a time; each undecodable record is logged at ERROR with its
position, counted (``undecodable``) and handed out as an ``UndecodableRecord``, which the
pipeline dead-letters and commits like any bad event, instead of stopping on the same batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from streams.kafka.fetch_pacing import FetchPacing
from streams.kafka.undecodable import UNDECODABLE, read_past_undecodable
from streams.records import Partition, SourceRecord, UndecodableRecord

log = logging.getLogger(__name__)

# Told of partitions revoked from (or assigned to) this member, before (after) they move.
PartitionsMoved = Callable[[set[Partition]], Awaitable[None]]


def _names(tps: Sequence[TopicPartition] | set[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(tps)) or "none"


class _Listener(ConsumerRebalanceListener):
    def __init__(self, source: KafkaBatchSource) -> None:
        self.source = source

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        if revoked:
            log.info("partitions revoked: %s; finishing what is in flight for them", _names(revoked))
            await self.source.on_revoke({Partition(tp.topic, tp.partition) for tp in revoked})
        for tp in revoked:
            self.source.fetched_up_to.pop(tp, None)
            self.source.committed.pop(tp, None)
            self.source.ready.discard(tp)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        log.info("partitions assigned: %s", _names(assigned))
        if self.source.on_assign is not None:
            await self.source.on_assign({Partition(tp.topic, tp.partition) for tp in assigned})
        self.source.joined.set()


async def _nothing_in_flight(_: set[Partition]) -> None:
    return None


class KafkaBatchSource:
    """A ``streams.source.Source`` that never ends: a member of the pipeline's consumer group."""

    exhausted = False

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        topics: Sequence[str],
        *,
        poll_ms: int,
        gated: bool = False,
        pacing: FetchPacing | None = None,
    ) -> None:
        self.consumer = consumer
        self.topics = list(topics)
        self.poll_ms = poll_ms
        self.pacing = pacing
        self._busy = False
        self.on_revoke: PartitionsMoved = _nothing_in_flight
        self.on_assign: PartitionsMoved | None = None
        # Gated (exactly-once): a partition's records are handed out only once ``start_from_committed``
        # has read its committed offset after the assignment hook ran, and never below it: aiokafka
        # reads committed offsets before the hook, possibly before the previous owner's last
        # transaction was completed, and may already have fetched from there.
        self.gated = gated
        self.ready: set[TopicPartition] = set()
        # Next offset to fetch per partition, to tell how much the broker holds beyond it.
        self.fetched_up_to: dict[TopicPartition, int] = {}
        # Where each partition was when this worker got it, then what it committed since.
        self.committed: dict[TopicPartition, int] = {}
        # Records skipped because they could not be decoded, since this source was made.
        self.undecodable = 0
        # Set once the group gave this member its partitions (maybe none): it scores what arrives.
        self.joined = asyncio.Event()

    def subscribe(self, on_revoke: PartitionsMoved, on_assign: PartitionsMoved | None = None) -> None:
        """Join the group; ``on_revoke`` runs before partitions go to another member, to finish
        and commit what is in flight for them; ``on_assign`` when partitions come to this one."""
        self.on_revoke = on_revoke
        self.on_assign = on_assign
        self.consumer.subscribe(self.topics, listener=_Listener(self))

    async def start_from_committed(self, partitions: set[Partition]) -> None:
        """Read each partition's committed offset now and consume from there (a gated source
        hands out nothing of a partition before this)."""
        for partition in sorted(partitions):
            tp = TopicPartition(*partition)
            offset = await self.consumer.committed(tp)
            if offset is None:
                offset = (await self.consumer.beginning_offsets([tp]))[tp]
            self.consumer.seek(tp, offset)
            self.fetched_up_to[tp] = offset
            self.committed[tp] = offset
            self.ready.add(tp)

    async def committed_offsets(self, partitions: set[Partition]) -> dict[Partition, int]:
        """The group's committed offset of each of ``partitions`` that has one."""
        found = {p: await self.consumer.committed(TopicPartition(*p)) for p in sorted(partitions)}
        return {p: offset for p, offset in found.items() if offset is not None}

    def mark_committed(self, offsets: dict[Partition, int]) -> None:
        """Offsets committed by someone else on this source's behalf (a transaction), for the lag."""
        self.committed.update({TopicPartition(*p): o for p, o in offsets.items()})

    def _fresh(self, tp: TopicPartition, records: list[Any]) -> list[Any]:
        """Gated: nothing of a partition not started from its committed offset, nothing below what was handed out."""
        if not self.gated:
            return records
        if tp not in self.ready:
            return []
        floor = self.fetched_up_to[tp]
        if records and records[0].offset < floor:
            return [r for r in records if r.offset >= floor]
        return records

    async def next_batch(self, max_records: int) -> list[SourceRecord]:
        """Up to ``max_records`` records, each partition's in offset order; empty on timeout."""
        if self.consumer.paused():
            self.consumer.resume(*self.consumer.paused())
            log.info("consuming again")
        try:
            fetched = await self.consumer.getmany(timeout_ms=self.poll_ms, max_records=max_records)
        except UNDECODABLE as exc:
            return await self._read_around_undecodable(max_records, exc)
        if self.pacing is not None and bool(fetched) != self._busy:
            self._busy = bool(fetched)
            self.pacing.apply(self.consumer, self._busy)
        return self._collect(fetched)

    async def _read_around_undecodable(self, max_records: int, error: Exception) -> list[SourceRecord]:
        """After a fetch that could not be decoded: the records that can be, in each partition's
        order, with every record that cannot skipped (see the module's docstring)."""
        log.warning("a fetch could not be decoded (%r); reading partition by partition to find the record", error)
        await self._rewind()
        batch: list[SourceRecord] = []
        for tp in sorted(self.consumer.assignment()):
            if len(batch) >= max_records:
                break
            try:
                batch += await self._read_carefully(tp, max_records - len(batch))
            except IllegalStateError:
                continue  # taken away by a rebalance meanwhile: its next owner reads it
        return batch

    async def _rewind(self) -> None:
        """Every partition back to its first record not yet handed out: the failed getmany may have
        moved some past records it then dropped."""
        for tp in self.consumer.assignment():
            offset = self.fetched_up_to.get(tp)
            # A partition a rebalance takes away meanwhile is its next owner's to read.
            with contextlib.suppress(IllegalStateError):
                if offset is None:
                    # Nothing handed out since this member got it: it started at the group's commit,
                    # or, with none, at the beginning (the live consumer resets to "earliest").
                    offset = await self.consumer.committed(tp)
                if offset is None:
                    await self.consumer.seek_to_beginning(tp)
                else:
                    self.consumer.seek(tp, offset)

    async def _read_carefully(self, tp: TopicPartition, room: int) -> list[SourceRecord]:
        """Up to ``room`` records of one partition, an ``UndecodableRecord`` in place of each one
        that cannot be decoded."""
        records = self._fresh(tp, await read_past_undecodable(self.consumer, tp, room, self.poll_ms))
        if records:
            self.fetched_up_to[tp] = records[-1].offset + 1
            self.committed.setdefault(tp, records[0].offset)
        self.undecodable += sum(1 for r in records if type(r) is UndecodableRecord)
        return records

    async def keep_alive(self) -> list[SourceRecord]:
        """Poll without fetching (partitions paused) while the owner cannot take more events, so the
        group keeps this member and its partitions; returns anything already fetched before the pause."""
        if not self.consumer.paused() and self.consumer.assignment():
            self.consumer.pause(*self.consumer.assignment())
            log.info("queue full for a while (the model is slow or down): partitions paused, still in the group")
        try:
            fetched = await self.consumer.getmany(timeout_ms=self.poll_ms, max_records=1)
        except UNDECODABLE:
            # Dropped here, read again (and around) by next_batch once the queue has room.
            await self._rewind()
            return []
        return self._collect(fetched)

    def _collect(self, fetched: dict[TopicPartition, list[Any]]) -> list[SourceRecord]:
        batch: list[SourceRecord] = []
        for tp, fetched_records in fetched.items():
            records = self._fresh(tp, fetched_records)
            if not records:
                continue
            batch.extend(records)
            self.fetched_up_to[tp] = records[-1].offset + 1
            self.committed.setdefault(tp, records[0].offset)
        return batch

    def backlog(self) -> int:
        """Records the broker holds for our partitions beyond what was fetched (consumer lag)."""
        lag = 0
        for tp, fetched in self.fetched_up_to.items():
            high = self.consumer.highwater(tp)
            if high is not None and high > fetched:
                lag += high - fetched
        return lag

    def lag_by_partition(self) -> dict[Partition, int]:
        """Per assigned partition: records the broker holds after this worker's last commit."""
        lag: dict[Partition, int] = {}
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            base = self.committed.get(tp)
            if high is not None and base is not None:
                lag[Partition(tp.topic, tp.partition)] = max(0, high - base)
        return lag

    async def commit_offsets(self, next_offsets: dict[Partition, int]) -> bool:
        """Commit these next-offsets. True when done with them: committed, or the partitions went to
        another member (which scores those records again); False when the commit should be retried."""
        assigned = self.consumer.assignment()
        # Partitions already taken away were committed before they went (see on_revoke),
        # or will be redelivered to their new owner: never commit for another member.
        offsets = {TopicPartition(*p): o for p, o in next_offsets.items()}
        offsets = {tp: o for tp, o in offsets.items() if tp in assigned}
        if not offsets:
            return True
        try:
            await self.consumer.commit(offsets)
            self.committed.update(offsets)
        except (CommitFailedError, IllegalStateError) as exc:
            log.warning("commit failed after a rebalance; these records will be scored again: %s", exc)
        except KafkaError as exc:
            log.warning("commit failed (%r); retrying with the next commit", exc)
            return False
        return True
