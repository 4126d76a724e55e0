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
# How long one fetch of a restore waits for records.
_RESTORE_POLL_MS = 500
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
        batch = producer.create_batch()
        for key, value in records:
            self.bytes_written += len(key) + (len(value) if value else 0)
            if batch.append(key=key, value=value, timestamp=None) is None:
                batch.close()
                sent.append(await producer.send_batch(batch, self.topic, partition=partition.partition))
                batch = producer.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        batch.close()
        sent.append(await producer.send_batch(batch, self.topic, partition=partition.partition))
        await asyncio.gather(*sent)
        self.records_written += len(changed)
        return len(changed)

    async def restore(self, partitions: set[Partition]) -> int:
        """Load the state of ``partitions`` from the changelog (replacing what was kept of them);
        returns the number of keys. Raises ``StateError`` for a changelog of another layout."""
        if not partitions:
            return 0
        started = time.monotonic()
        self.step.drop_partitions(list(partitions))
        self.found -= partitions
        store = self.step.store
        owner = {p.partition: p for p in partitions}
        consumer = self.new_consumer()
        await start_consumer(consumer)
        try:
            tps = [TopicPartition(self.topic, n) for n in sorted(owner)]
            consumer.assign(tps)
            end = await consumer.end_offsets(tps)
            # An explicit seek: aiokafka's seek_to_beginning can lose a race with the consumer's own
            # reset to its auto_offset_reset position, and would then read nothing.
            beginning = await consumer.beginning_offsets(tps)
            for tp in tps:
                consumer.seek(tp, beginning[tp])
            todo = {tp for tp in tps if end[tp] > beginning[tp]}
            while todo:
                fetched = await consumer.getmany(*todo, timeout_ms=_RESTORE_POLL_MS)
                for tp, records in fetched.items():
                    self._load_records(owner[tp.partition], [r for r in records if r.offset < end[tp]])
                todo = {tp for tp in todo if await consumer.position(tp) < end[tp]}
        finally:
            await stop_consumer(consumer)
        keys = sum(len(store.tables.get(p, {})) for p in partitions)
        log.info(
            "state of %s restored from %s: %d keys in %.1fs",
            ", ".join(f"{p.topic}[{p.partition}]" for p in sorted(partitions)),
            self.topic,
            keys,
            time.monotonic() - started,
        )
        return keys

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
