"""Where partitions begin, asked of a Kafka consumer in the engine's terms (``Partition``), so
that a caller outside the adapters never names the client's own partition type."""

from __future__ import annotations

from collections.abc import Iterable

from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.records import Partition


async def beginning_offsets(consumer: AIOKafkaConsumer, partitions: Iterable[Partition]) -> dict[Partition, int]:
    """Each partition's first offset still in its log (earlier records were deleted by retention
    or compaction), keyed in the order ``partitions`` gives them. ``consumer`` is started."""
    wanted = [Partition(*p) for p in partitions]
    found = await consumer.beginning_offsets([TopicPartition(*p) for p in wanted])
    return {p: found[TopicPartition(*p)] for p in wanted}
