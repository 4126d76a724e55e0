"""A ``Sink`` that produces to Kafka and reports when the broker acknowledged every record.

Records go out in hand-built batches, one per output partition (``create_batch`` /
``send_batch``), so the producer tracks one future per partition and batch instead of
one per record: per record, aiokafka's ``send()`` costs more than decoding the event.

Each output goes to its input's partition number (modulo the output topic's partition
count) and keeps its input's key. Per-key order holds, since one key's events all come
from one input partition; when both topics have the same partition count (the default
for topics sluice creates) the output is co-partitioned with its input, exactly where
the default key partitioner would have put it if the input was produced with it.

Records the broker will never take must not stall the pipeline. A record larger than the
topic accepts is not sent at all; a batch the broker refuses for good (too large, invalid)
is sent again one record at a time to find which records it refuses, and those are
reported as ``OutputRefused`` for the pipeline to replace. A refused batch also breaks the
idempotent producer's sequence numbers for its partition (every later batch there fails
with ``OutOfOrderSequenceNumber``), so the sink then starts a fresh producer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    InvalidTimestampError,
    KafkaError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    RecordListTooLargeError,
    UnknownError,
    UnknownProducerId,
)

from streams.errors import DeliveryFailed, OutputRefused
from streams.kafka.batches import (
    DEFAULT_MAX_RECORD_BYTES,
    append,
    by_partition,
    oversized,
    send_in_batches,
    target_partition,
)
from streams.records import OutputRecord

log = logging.getLogger(__name__)

# What the broker answers about a record it will never take: too large, a bad timestamp, or
# invalid (INVALID_RECORD, e.g. no key on a compacted topic, which aiokafka does not know by
# name and reports as UnknownError). Anything else that is not retriable (authorization, an
# unsupported format) is about the client or the cluster: raised, for a retry with back-off,
# never turned into dead letters.
_ABOUT_THE_RECORD = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidTimestampError, UnknownError)
# The producer's own state is broken (a refusal elsewhere in its partition's sequence, or
# fenced): a fresh producer sends the same record fine.
_PRODUCER_BROKEN = (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch, ProducerFenced)
# Attempts at sending one record alone when each fresh producer is broken again by a
# concurrent refusal; past them the failure is raised, for the caller's retry with back-off.
_ALONE_ATTEMPTS = 5


def refused_for_good(exc: BaseException) -> bool:
    """Whether a produce failure may be about the records themselves and will not pass on a retry."""
    return isinstance(exc, _ABOUT_THE_RECORD)


def needs_a_fresh_producer(exc: BaseException) -> bool:
    """Whether a failed batch breaks (or was failed by) the producer's sequence numbers."""
    return isinstance(exc, _ABOUT_THE_RECORD + _PRODUCER_BROKEN)


class KafkaSink:
    """Owns its producer: ``new_producer`` makes one (idempotent, ``enable_idempotence=True``,
    so that retries keep per-partition order and never duplicate within a session); the sink
    starts it, and starts another when a refusal breaks it.

    ``max_record_bytes`` maps topics to the largest record they accept (their
    ``max.message.bytes``); other topics get ``DEFAULT_MAX_RECORD_BYTES``.
    """

    def __init__(
        self,
        new_producer: Callable[[], AIOKafkaProducer],
        *,
        max_record_bytes: Mapping[str, int] | None = None,
    ) -> None:
        self._new_producer = new_producer
        self._limits = dict(max_record_bytes or {})
        self._partition_counts: dict[str, int] = {}
        self._producer: AIOKafkaProducer | None = None
        self._generation = 0
        self._sending = asyncio.Lock()
        # One batch is taken apart at a time: each refusal found breaks the producer for
        # everything sent beside it.
        self._isolating = asyncio.Lock()

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("KafkaSink.start() was not called")
        return self._producer

    async def start(self) -> None:
        producer = self._new_producer()
        await producer.start()
        self._producer = producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    def limit(self, topic: str) -> int:
        return self._limits.get(topic, DEFAULT_MAX_RECORD_BYTES)

    async def _partitions(self, topic: str) -> int:
        count = self._partition_counts.get(topic)
        if count is None:
            count = len(await self.producer.partitions_for(topic))
            self._partition_counts[topic] = count
        return count

    async def send(self, records: Sequence[OutputRecord]) -> Awaitable[None]:
        """``streams.flow.pipeline.Sink.send``: a Kafka error worth retrying, now or when awaiting the
        acknowledgement, is raised as ``DeliveryFailed`` (the engine knows no Kafka client)."""
        try:
            acknowledged = await self._send(records)
        except KafkaError as exc:
            raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from exc
        return _delivery_failed_on_kafka_errors(acknowledged)

    async def _send(self, records: Sequence[OutputRecord]) -> Awaitable[None]:
        refused = oversized(records, self.limit)
        if refused:
            gone = {id(record) for record, _ in refused}
            records = [record for record in records if id(record) not in gone]
        counts = {topic: await self._partitions(topic) for topic in {record.topic for record in records}}
        sent: list[tuple[list[OutputRecord], asyncio.Future[object]]] = []
        async with self._sending:
            generation = self._generation
            for (topic, partition), group in by_partition(records, counts).items():
                if partition is None:
                    for record in group:
                        future = await self.producer.send(
                            record.topic,
                            record.value,
                            key=record.key,
                            headers=record.headers,
                            timestamp_ms=record.timestamp,
                        )
                        sent.append(([record], future))
                    continue
                sent += await send_in_batches(self.producer, group, topic, partition)
        return self._acknowledged(sent, refused, generation)

    async def _acknowledged(
        self,
        sent: list[tuple[list[OutputRecord], asyncio.Future[object]]],
        refused: list[tuple[OutputRecord, str]],
        generation: int,
    ) -> None:
        results = await asyncio.gather(*(future for _, future in sent), return_exceptions=True)
        failed = [(members, r) for (members, _), r in zip(sent, results, strict=True) if isinstance(r, BaseException)]
        if any(needs_a_fresh_producer(exc) for _, exc in failed):
            await self._restart(generation)
        for _, exc in failed:
            if not needs_a_fresh_producer(exc):
                raise exc  # worth retrying: the caller sends everything again
        async with self._isolating:
            for members, exc in failed:
                log.warning(
                    "the broker refused a batch of %d output(s) to %s (%r); sending them one by one",
                    len(members),
                    members[0].topic,
                    exc,
                )
                for record in members:
                    reason = await self._send_alone(record)
                    if reason is not None:
                        refused.append((record, reason))
        if refused:
            raise OutputRefused(refused)

    async def _send_alone(self, record: OutputRecord) -> str | None:
        """Send one record in a batch of its own; the broker's reason if it refuses it for good."""
        for attempt in range(1, _ALONE_ATTEMPTS + 1):
            async with self._sending:
                generation = self._generation
                partition = target_partition(record, await self._partitions(record.topic))
                if partition is None:
                    future = await self.producer.send(
                        record.topic,
                        record.value,
                        key=record.key,
                        headers=list(record.headers),
                        timestamp_ms=record.timestamp,
                    )
                else:
                    batch = self.producer.create_batch()
                    append(batch, record)
                    batch.close()
                    future = await self.producer.send_batch(batch, record.topic, partition=partition)
            try:
                await future
            except KafkaError as exc:
                if not needs_a_fresh_producer(exc):
                    raise
                await self._restart(generation)
                if refused_for_good(exc):
                    return f"{type(exc).__name__}: {exc}"
                if attempt == _ALONE_ATTEMPTS:
                    raise
                continue  # not about this record: send it again with the fresh producer
            return None
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _restart(self, generation: int) -> None:
        """Replace the producer that sent ``generation``'s batches, unless that was done already."""
        async with self._sending:
            if generation != self._generation:
                return
            old = self.producer
            fresh = self._new_producer()
            try:
                await fresh.start()
            except BaseException:
                await fresh.stop()
                raise
            self._producer = fresh
            self._generation += 1
        log.warning("started a new Kafka producer: a refused batch breaks the old one's sequence numbers")
        # Whatever the old producer still holds is flushed (or fails) before it closes; each
        # batch's own acknowledgement handles that.
        await old.stop()


async def _delivery_failed_on_kafka_errors(acknowledged: Awaitable[None]) -> None:
    try:
        await acknowledged
    except KafkaError as exc:
        raise DeliveryFailed(f"{type(exc).__name__}: {exc}") from exc
