"""The changelog of a stateful pipeline: a compacted topic holding each key's latest state.

Written at each commit, in the input partition's transaction (``PartitionTransactions``, one per
input partition, with the partition's consumed offset): the state of every key changed since
the last commit, or a tombstone for a key forgotten after its TTL. So the changelog and the
committed offset always describe the same point of the stream: a worker killed at any moment
leaves an open transaction, which the partition's next owner aborts, and it restores the state
as of the committed offset and scores from there. No event is counted twice or lost.

Changelog partition n holds the state of input partition n: a record per key (its record key
prefixed with ``k``) and one for the partition's event time (``w``, which decides when keys go
idle). Restoring reads it from the beginning to its last stable offset as a ``read_committed``
consumer (aborted transactions are skipped), before any event of the partition is scored.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.errors import StateError
from streams.features.snapshot import decode_state, encode_state
from streams.features.step import FeatureStep
from streams.kafka.replay import start_consumer, stop_consumer
from streams.records import Partition

log = logging.getLogger(__name__)

# A read_committed consumer with no group (not started).
NewConsumer = Callable[[], AIOKafkaConsumer]
# How long one fetch of a restore waits for records. Records come back as soon as there are
# any; the wait is spent whole only when what is left to read is a transaction's commit
# marker (no record, the position still moves past it), the usual tail after a restart.
_RESTORE_POLL_MS = 100
# Changelog record keys: a key's state, and the partition's event time.
KEY_PREFIX = b"k"
EVENT_TIME_KEY = b"w"
_EVENT_TIME = struct.Struct("<q")


class Changelog:
    def __init__(self, step: FeatureStep, topic: str, new_consumer: NewConsumer) -> None:
        self.step = step
        self.topic = topic
        self.new_consumer = new_consumer
        # Records written and bytes since start, for the metrics and the benchmarks.
        self.records_written = 0
        self.bytes_written = 0
        # The partitions whose last restore found records (others had no state in the changelog).
        self.found: set[Partition] = set()
        # Per partition: the records sent in its open transaction and the offset they start after.
        self._uncommitted: dict[Partition, tuple[list[tuple[bytes, bytes | None]], int]] = {}

    async def flush(self, partition: Partition, producer: AIOKafkaProducer) -> int:
        """Send the partition's changed keys in ``producer``'s open transaction; returns how many."""
        spec, store = self.step.spec, self.step.store
        self.step.sweep(partition)
        changed = store.take_changed(partition)
        if not changed:
            return 0
        event_time = self.step.latest_ms.get(partition)
        records: list[tuple[bytes, bytes | None]] = (
            [] if event_time is None else [(EVENT_TIME_KEY, _EVENT_TIME.pack(event_time))]
        )
        for key, slot in changed:
            value = None if slot is None else encode_state(spec.layout_id, int(store.offset[slot]), *store.events(slot))
            records.append((KEY_PREFIX + key, value))
        sent = []
        batch, in_batch = producer.create_batch(), 0
        for key, value in records:
            self.bytes_written += len(key) + (len(value) if value else 0)
            if batch.append(key=key, value=value, timestamp=None) is None:
                batch.close()
                sent.append(await producer.send_batch(batch, self.topic, partition=partition.partition))
                batch, in_batch = producer.create_batch(), 0
                batch.append(key=key, value=value, timestamp=None)
            in_batch += 1
        batch.close()
        sent.append(await producer.send_batch(batch, self.topic, partition=partition.partition))
        delivered = await asyncio.gather(*sent)
        if store.keeps_local_copy:
            # The local copy takes them once the transaction commits (``committed``): the changelog
            # up to just after the last of them (the last batch's base offset and its records).
            self._uncommitted[partition] = (records, delivered[-1].offset + in_batch)
        self.records_written += len(changed)
        return len(changed)

    def committed(self, partition: Partition) -> None:
        """The partition's transaction committed: what it carried is the local copy's now."""
        written = self._uncommitted.pop(partition, None)
        if written is not None:
            self.step.store.persisted(partition, *written)

    async def restore(self, partitions: set[Partition]) -> int:
        """Load the state of ``partitions`` from the changelog (replacing what was kept of them);
        returns the number of keys. Raises ``StateError`` for a changelog of another layout."""
        if not partitions:
            return 0
        started = time.monotonic()
        self.step.drop_partitions(list(partitions))
        self.found -= partitions
        self._uncommitted = {p: w for p, w in self._uncommitted.items() if p not in partitions}
        store = self.step.store
        owner = {p.partition: p for p in partitions}
        for partition in partitions:
            await store.acquire(partition)
        consumer = self.new_consumer()
        await start_consumer(consumer)
        try:
            tps = [TopicPartition(self.topic, n) for n in sorted(owner)]
            consumer.assign(tps)
            end = await consumer.end_offsets(tps)
            beginning = await consumer.beginning_offsets(tps)
            start = {tp: self._start_of(owner[tp.partition], beginning[tp], end[tp]) for tp in tps}
            # An explicit seek: aiokafka's seek_to_beginning can lose a race with the consumer's own
            # reset to its auto_offset_reset position, and would then read nothing.
            for tp in tps:
                consumer.seek(tp, start[tp])
            todo = {tp for tp in tps if end[tp] > start[tp]}
            while todo:
                fetched = await consumer.getmany(*todo, timeout_ms=_RESTORE_POLL_MS)
                for tp, records in fetched.items():
                    wanted = [r for r in records if r.offset < end[tp]]
                    self._load_records(owner[tp.partition], wanted)
                    if wanted:
                        store.restored(owner[tp.partition], wanted[-1].offset + 1)
                todo = {tp for tp in todo if await consumer.position(tp) < end[tp]}
        finally:
            await stop_consumer(consumer)
        for tp in tps:
            store.restored(owner[tp.partition], end[tp])
        keys = sum(store.key_count(p) for p in partitions)
        log.info(
            "state of %s restored from %s: %d keys in %.1fs (%s)",
            ", ".join(f"{p.topic}[{p.partition}]" for p in sorted(partitions)),
            self.topic,
            keys,
            time.monotonic() - started,
            ", ".join(f"read from offset {start[tp]} to {end[tp]}" for tp in tps),
        )
        return keys

    def _start_of(self, partition: Partition, beginning: int, end: int) -> int:
        """Where the restore of ``partition`` reads the changelog from: after what the store's local
        copy holds, or the beginning (no copy, or one that does not fit the changelog: wiped)."""
        local = self.step.store.open(partition)
        if local is None:
            return beginning
        checkpoint, event_time = local
        if not beginning <= checkpoint <= end:
            log.warning(
                "the local state of %s[%d] reflects %s up to offset %d, which it does not hold now (%d to %d): "
                "rebuilding it from the changelog",
                *partition,
                self.topic,
                checkpoint,
                beginning,
                end,
            )
            self.step.store.wipe(partition)
            return beginning
        if checkpoint > beginning:
            self.found.add(partition)
        if event_time is not None:
            self.step.latest_ms[partition] = event_time
        return checkpoint

    def _load_records(self, partition: Partition, records: list[Any]) -> None:
        if records:
            self.found.add(partition)
        for record in records:
            if not record.key:
                continue
            try:
                self._load(partition, record.key, record.value)
            except StateError as exc:
                where = f"{self.topic}[{record.partition}]@{record.offset}"
                raise StateError(f"{where} (state of {partition.topic}[{partition.partition}]): {exc}") from None

    def _load(self, partition: Partition, key: bytes, value: bytes | None) -> None:
        spec, store = self.step.spec, self.step.store
        if key == EVENT_TIME_KEY:
            if value is None or len(value) != _EVENT_TIME.size:
                raise StateError(f"{self.topic}: the event time record of partition {partition.partition} is damaged")
            self.step.latest_ms[partition] = _EVENT_TIME.unpack(value)[0]
        elif key[:1] == KEY_PREFIX and value is None:
            store.unload(partition, key[1:])  # forgotten: idle past its TTL
        elif key[:1] == KEY_PREFIX and value is not None:
            times, values, offset = decode_state(value, spec.layout_id, len(spec.fields), spec.capacity)
            store.load(partition, key[1:], times, values, offset)
        else:
            raise StateError(
                f"{self.topic} holds a record sluice did not write (key {key[:40]!r}); is it another topic?"
            )
        store.mirror(partition, key, value)
