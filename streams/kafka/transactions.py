"""Exactly-once delivery: each input partition's outputs and consumed offset in one Kafka
transaction, committed every ``interval_ms`` with nothing in flight.

Fencing. A worker that lost its partitions (it was paused past the session timeout, or cut
off from the coordinator) must not commit over their new owner. Since KIP-447 a transaction's
offsets can carry the consumer group's generation and member id, which the group coordinator
checks; aiokafka 0.14 sends ``TxnOffsetCommit`` v0, with the group id only, so that check is
not available. Fencing is therefore by transactional id, one per input partition
(``<group id>.<topic>.<partition>``, Kafka's original exactly-once scheme): whoever is
assigned a partition starts its producer, whose ``InitProducerId`` bumps the id's epoch,
aborts (or completes) the previous owner's open transaction and makes every later request of
the previous owner's producer fail with ``ProducerFenced``. Only then does the new owner read
the partition's committed offset (``KafkaBatchSource.start_from_committed``), so it never
starts before a transaction that was still completing.

Failures. Sending again after an unclear failure could write outputs twice in one
transaction, so nothing is retried: a failed send or commit raises ``TransactionFailed``
(``Fenced``: the broker names a newer producer), the driver stops, the worker exits, and the
partitions' next owner aborts the open transactions and scores their events again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Protocol

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import InvalidProducerEpoch, KafkaError, ProducerFenced

from streams.errors import Fenced, OutputRefused, SluiceError, TransactionFailed
from streams.kafka.batches import DEFAULT_MAX_RECORD_BYTES, oversized, send_in_batches, target_partition
from streams.records import OutputRecord, Partition

log = logging.getLogger(__name__)

# A producer for this transactional id (not started).
NewTransactionalProducer = Callable[[str], AIOKafkaProducer]


class StateInTransactions(Protocol):
    """What else commits in a partition's transaction: a stateful pipeline's changelog."""

    async def flush(self, partition: Partition, producer: AIOKafkaProducer) -> object:
        """Send the partition's changed state, before its offset is added and it commits."""
        ...

    def committed(self, partition: Partition) -> None:
        """The partition's transaction committed (a local copy of the changelog takes it)."""
        ...


_FENCED = (ProducerFenced, InvalidProducerEpoch)


def _failure(exc: BaseException, what: str) -> TransactionFailed:
    if isinstance(exc, _FENCED):
        return Fenced(f"{what}: fenced by a newer producer (another worker owns the partition now): {exc!r}")
    return TransactionFailed(f"{what}: {exc!r}")


def _names(partitions: Sequence[Partition] | set[Partition]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in sorted(partitions)) or "none"


class PartitionTransactions:
    """One transactional producer, with a transaction open, per input partition this worker owns."""

    def __init__(
        self, new_producer: NewTransactionalProducer, *, group_id: str, state: StateInTransactions | None = None
    ) -> None:
        self.new_producer = new_producer
        self.group_id = group_id
        self._producers: dict[Partition, AIOKafkaProducer] = {}
        # What else goes into a partition's transaction when it commits (a stateful pipeline's changelog).
        self.state = state
        # The first failure: once set, nothing more is committed, and the driver stops on it.
        self.failed: SluiceError | None = None
        self.failure_seen = asyncio.Event()

    def transactional_id(self, partition: Partition) -> str:
        return f"{self.group_id}.{partition.topic}.{partition.partition}"

    def producer_for(self, partition: Partition) -> AIOKafkaProducer | None:
        return self._producers.get(partition)

    @property
    def owned(self) -> set[Partition]:
        return set(self._producers)

    async def assign(self, partitions: set[Partition]) -> None:
        """Start a producer for each new partition (fencing its previous owner) and open a transaction;
        none after a failure (the worker is stopping: it would only fence the partitions' real owner)."""
        if self.failed is not None:
            return
        new = sorted(partitions - set(self._producers))
        started = await asyncio.gather(*(self._start(p) for p in new), return_exceptions=True)
        for partition, result in zip(new, started, strict=True):
            if isinstance(result, BaseException):
                self.fail(_failure(result, f"starting the producer of {partition.topic}[{partition.partition}]"))
            else:
                self._producers[partition] = result
        if new:
            log.info("transactions open for %s (previous owners fenced)", _names(new))

    async def _start(self, partition: Partition) -> AIOKafkaProducer:
        producer = self.new_producer(self.transactional_id(partition))
        try:
            await producer.start()  # InitProducerId: fences the previous owner, ends its transaction
            await producer.begin_transaction()
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        return producer

    async def release(self, partitions: set[Partition]) -> None:
        """Close the producers of partitions that go to another worker (their transactions were
        committed just before; what was opened since holds nothing, and is aborted)."""
        await asyncio.gather(*(self._close(p) for p in partitions if p in self._producers))

    async def close(self) -> None:
        """Abort whatever is open (a stop commits first, so only a failure leaves anything) and stop."""
        await self.release(set(self._producers))

    async def _close(self, partition: Partition) -> None:
        producer = self._producers.pop(partition)
        with contextlib.suppress(Exception):  # fenced or failed already: the broker aborts it
            await producer.abort_transaction()
        with contextlib.suppress(Exception):
            await producer.stop()

    async def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Add each partition's next offset to its transaction, commit, and open the next one."""
        if self.failed is not None:
            raise self.failed
        partitions = [p for p in offsets if p in self._producers]
        results = await asyncio.gather(*(self._commit_one(p, offsets[p]) for p in partitions), return_exceptions=True)
        for partition, result in zip(partitions, results, strict=True):
            if isinstance(result, BaseException):
                self.fail(_failure(result, f"committing the transaction of {partition.topic}[{partition.partition}]"))
        if self.failed is not None:
            raise self.failed

    async def _commit_one(self, partition: Partition, offset: int) -> None:
        producer = self._producers[partition]
        if self.state is not None:
            await self.state.flush(partition, producer)
        await producer.send_offsets_to_transaction({TopicPartition(*partition): offset}, self.group_id)
        await producer.commit_transaction()
        if self.state is not None:
            self.state.committed(partition)
        await producer.begin_transaction()

    def fail(self, failure: SluiceError) -> SluiceError:
        """Record ``failure``: nothing more is sent or committed. Returns the first failure."""
        log.error("exactly-once: %s; committing nothing more", failure)
        if self.failed is None:
            self.failed = failure
            self.failure_seen.set()
        return self.failed


class TransactionalSink:
    """A ``streams.flow.pipeline.Sink`` that sends each output with its input partition's producer, in
    its open transaction, to the input's partition number (modulo the topic's count), keyed like
    its input (a re-keyed event: to its new key's partition). A record the broker would refuse for
    good (over its topic's limit, or without a key for a compacted topic) is not sent but reported
    as ``OutputRefused``, to be dead-lettered in the same transaction: sent, the broker's refusal
    would fail the whole transaction, and the same record again after each restart. Any other
    failure raises ``TransactionFailed``.
    """

    def __init__(
        self,
        transactions: PartitionTransactions,
        *,
        input_topic: str,
        max_record_bytes: Mapping[str, int] | None = None,
        compacted: Iterable[str] = (),
    ) -> None:
        self.transactions = transactions
        self.input_topic = input_topic
        self._limits = dict(max_record_bytes or {})
        self._compacted = frozenset(compacted)
        self._partition_counts: dict[str, int] = {}

    async def start(self) -> None:
        """Producers start as partitions are assigned (``PartitionTransactions.assign``)."""

    async def stop(self) -> None:
        await self.transactions.close()

    def limit(self, topic: str) -> int:
        return self._limits.get(topic, DEFAULT_MAX_RECORD_BYTES)

    async def send(self, records: Sequence[OutputRecord]) -> Awaitable[None]:
        if self.transactions.failed is not None:
            raise self.transactions.failed
        refused: list[tuple[OutputRecord, str]] = []
        too_large = {id(record): reason for record, reason in oversized(records, self.limit)}
        groups: dict[tuple[int, str], list[OutputRecord]] = {}
        for record in records:
            if id(record) in too_large:
                refused.append((record, too_large[id(record)]))
                continue
            if record.key is None and record.topic in self._compacted:
                refused.append((record, f"{record.topic} is compacted: it refuses records without a key"))
                continue
            if record.partition is None:  # every output answers an input: it has no transaction otherwise
                raise ValueError(f"an output to {record.topic} names no input partition")
            groups.setdefault((record.partition, record.topic), []).append(record)
        sent: list[asyncio.Future[object]] = []
        dropped = 0
        try:
            for (source, topic), group in groups.items():
                producer = self.transactions.producer_for(Partition(self.input_topic, source))
                if producer is None:
                    # Not ours (any more): its next owner scores these events; nothing is committed for them.
                    dropped += len(group)
                    continue
                count = self._partition_counts.get(topic)
                if count is None:
                    count = self._partition_counts[topic] = len(await producer.partitions_for(topic))
                # The input partition's transaction holds them; a re-keyed record goes to its key's partition.
                by_target: dict[int, list[OutputRecord]] = {}
                for record in group:
                    by_target.setdefault(target_partition(record, count), []).append(record)  # type: ignore[arg-type]
                for partition, records_there in by_target.items():
                    sent += [future for _, future in await send_in_batches(producer, records_there, topic, partition)]
        except KafkaError as exc:
            raise self.transactions.fail(_failure(exc, "sending outputs")) from exc
        if dropped:
            log.warning("%d outputs of partitions this worker no longer owns were not sent", dropped)
        return self._acknowledged(sent, refused)

    async def _acknowledged(self, sent: list[asyncio.Future[object]], refused: list[tuple[OutputRecord, str]]) -> None:
        results = await asyncio.gather(*sent, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise self.transactions.fail(_failure(result, "an output was not acknowledged")) from result
        if refused:
            raise OutputRefused(refused)
