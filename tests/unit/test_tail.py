"""Following partitions without a group (``streams.kafka.tail``, what ``sluice watch`` reads), against
a fake consumer: where it starts, and a fetch that cannot be decoded read around, record by record."""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import CorruptRecordException

from streams.kafka.tail import Tail
from streams.records import InputRecord, Partition, UndecodableRecord


class FakeConsumer:
    """Partitions of ``length`` records (timestamp = 1000 * offset); offsets in ``bad`` cannot be decoded."""

    def __init__(self, lengths: dict[TopicPartition, int], bad: frozenset[tuple[TopicPartition, int]] = frozenset()):
        self.lengths, self.bad = lengths, bad
        self.at: dict[TopicPartition, int] = {}

    def assign(self, tps: list[TopicPartition]) -> None:
        self.at = dict.fromkeys(tps, 0)

    async def seek_to_end(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self.at[tp] = self.lengths[tp]

    async def beginning_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return dict.fromkeys(tps, 0)

    async def offsets_for_times(self, wanted: dict[TopicPartition, int]) -> dict[TopicPartition, Any]:
        found = {tp: -(-ms // 1000) for tp, ms in wanted.items()}
        return {tp: type("At", (), {"offset": n})() if n < self.lengths[tp] else None for tp, n in found.items()}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.at[tp] = offset

    async def position(self, tp: TopicPartition) -> int:
        return self.at[tp]

    async def getmany(self, *tps: TopicPartition, timeout_ms: int, max_records: int | None) -> dict:
        fetched: dict[TopicPartition, list[InputRecord]] = {}
        room = max_records or 1_000
        for tp in tps or list(self.at):
            offsets = range(self.at[tp], min(self.lengths[tp], self.at[tp] + room))
            if any((tp, n) in self.bad for n in offsets):
                raise CorruptRecordException("CRC mismatch")
            if offsets:
                fetched[tp] = [InputRecord(tp.topic, tp.partition, n, n * 1000, None, b"v") for n in offsets]
                self.at[tp] = offsets[-1] + 1
                room -= len(offsets)
        return fetched


A, B = TopicPartition("out", 0), TopicPartition("out", 1)


def positions(records: list) -> list[tuple[int, int]]:
    return [(r.partition, r.offset) for r in records]


async def test_it_starts_at_the_end_or_the_beginning_or_a_time():
    consumer = FakeConsumer({A: 3, B: 5})
    tail = Tail(consumer, [Partition("out", 0), Partition("out", 1)])  # type: ignore[arg-type]
    await tail.seek()
    assert consumer.at == {A: 3, B: 5}
    await tail.seek(from_beginning=True)
    assert consumer.at == {A: 0, B: 0}
    await tail.seek(since_ms=3_500)
    assert consumer.at == {A: 3, B: 4}  # nothing that recent in partition 0: it stays at its end


async def test_records_come_each_partition_in_order_up_to_the_room_given():
    tail = Tail(FakeConsumer({A: 2, B: 3}), [Partition("out", 0), Partition("out", 1)])  # type: ignore[arg-type]
    await tail.seek(from_beginning=True)
    assert positions(await tail.next_batch(4, timeout_ms=10, reread_room=4)) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert positions(await tail.next_batch(None, timeout_ms=10, reread_room=500)) == [(1, 2)]
    assert await tail.next_batch(None, timeout_ms=10, reread_room=500) == []


async def test_a_fetch_that_cannot_be_decoded_is_read_around_from_what_was_not_handed_out():
    consumer = FakeConsumer({A: 2, B: 4}, bad=frozenset({(B, 2)}))
    tail = Tail(consumer, [Partition("out", 0), Partition("out", 1)])  # type: ignore[arg-type]
    await tail.seek(from_beginning=True)
    assert positions(await tail.next_batch(3, timeout_ms=10, reread_room=3)) == [(0, 0), (0, 1), (1, 0)]
    batch = await tail.next_batch(None, timeout_ms=10, reread_room=500)
    assert positions(batch) == [(1, 1), (1, 2), (1, 3)]
    assert [type(r) is UndecodableRecord for r in batch] == [False, True, False]
