"""A keyed topic read as a log of decisions (streams.kafka.keyed_log), against a fake consumer and
producer: read to the end offsets seen when the read began, then followed; a write that is not
acknowledged is a DeliveryFailed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError

from streams.errors import DeliveryFailed
from streams.kafka.keyed_log import KeyedLog
from tests.unit.test_tail import FakeConsumer

A, B = TopicPartition("decisions", 0), TopicPartition("decisions", 1)


class GrowingConsumer(FakeConsumer):
    """Its partitions grow by ``grows`` records at each fetch after the end offsets are read."""

    def __init__(self, lengths: dict[TopicPartition, int], grows: int = 0) -> None:
        super().__init__(lengths)
        self.grows = grows
        self.ends_read = False

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        self.ends_read = True
        return {tp: self.lengths[tp] for tp in tps}

    async def getmany(self, *tps: TopicPartition, timeout_ms: int, max_records: int | None) -> dict:
        if self.ends_read:
            for tp in self.lengths:
                self.lengths[tp] += self.grows
        return await super().getmany(*tps, timeout_ms=timeout_ms, max_records=2)


async def test_catching_up_reads_to_the_ends_seen_then_and_following_hands_out_the_rest():
    consumer = GrowingConsumer({A: 5, B: 0}, grows=1)
    log = KeyedLog(consumer, "decisions", [0, 1])  # type: ignore[arg-type]
    caught = await log.catch_up()
    assert [(r.partition, r.offset) for r in caught] == [(0, n) for n in range(5)], "to the snapshot, no further"
    consumer.grows = 0
    later = [r for _ in range(10) for r in await log.follow()]
    by_partition = {p: [r.offset for r in later if r.partition == p] for p in (0, 1)}
    assert by_partition[0] == list(range(5, consumer.lengths[A])), "what came after the snapshot, none lost"
    assert by_partition[1] == list(range(consumer.lengths[B])), "a partition empty at the snapshot: all of it"


async def test_an_empty_topic_is_caught_up_at_once():
    log = KeyedLog(GrowingConsumer({A: 0, B: 0}), "decisions", [0, 1])  # type: ignore[arg-type]
    assert await log.catch_up() == []
    assert await log.follow() == []


async def test_following_before_catching_up_is_a_bug_that_says_so():
    log = KeyedLog(GrowingConsumer({A: 1}), "decisions", [0])  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="before catch_up"):
        await log.follow()


class Producer:
    def __init__(self, fails: BaseException | None = None, hangs: bool = False, refuses_start: bool = False) -> None:
        self.fails, self.hangs, self.refuses_start = fails, hangs, refuses_start
        self.sent: list[tuple[str, bytes | None, bytes]] = []
        self.started = self.stopped = 0

    async def start(self) -> None:
        self.started += 1
        if self.refuses_start:
            raise KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 9092)]")

    async def stop(self) -> None:
        self.stopped += 1

    async def send_and_wait(self, topic: str, value: bytes | None, *, key: bytes) -> Any:
        if self.hangs:
            await asyncio.Event().wait()
        if self.fails is not None:
            raise self.fails
        self.sent.append((topic, value, key))
        return type("Meta", (), {"offset": len(self.sent) - 1})()


def keyed_log(producer: Producer) -> KeyedLog:
    return KeyedLog(GrowingConsumer({A: 0}), "decisions", [0], lambda: producer)  # type: ignore[arg-type, return-value]


async def test_appending_starts_a_producer_once_and_waits_for_the_acknowledgement():
    producer = Producer()
    log = keyed_log(producer)
    assert producer.started == 0, "a reader that never writes makes no producer"
    assert [await log.append(b"p", b"{}"), await log.append(b"p", b"[]")] == [0, 1]
    assert producer.sent == [("decisions", b"{}", b"p"), ("decisions", b"[]", b"p")]
    assert producer.started == 1
    await log.close()
    assert producer.stopped == 1


@pytest.mark.parametrize(
    ("producer", "why"),
    [
        (Producer(KafkaTimeoutError()), "decisions did not take the record within 30s: KafkaTimeoutError"),
        (Producer(refuses_start=True), "Unable to bootstrap"),
        (Producer(hangs=True), "within 0s"),
    ],
)
async def test_a_record_not_acknowledged_is_delivery_failed(producer, why):
    log = keyed_log(producer)
    with pytest.raises(DeliveryFailed, match=why):
        await log.append(b"p", b"{}", timeout_s=0.01 if producer.hangs else 30.0)
    assert producer.stopped == (1 if producer.refuses_start else 0), "a producer that did not start is closed"
