"""A live source's fetches, on the real broker: held for a fuller answer while records come,
answered at once after a poll that brought none (streams.kafka.fetch_pacing)."""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.kafka.fetch_pacing import FetchPacing
from streams.kafka.group_source import KafkaBatchSource
from streams.records import Partition
from tests.integration.kafka_helpers import produce_raw, unique


async def _nothing(_: set[Partition]) -> None:
    return None


async def test_fetches_are_held_while_records_come_and_answered_at_once_after_a_quiet_poll(kafka):
    topic = unique("pacing")
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    await produce_raw(kafka, topic, [(b"k", b"v%d" % i) for i in range(10)])
    pacing = FetchPacing(busy_min_bytes=64 * 1024, busy_wait_ms=5, idle_wait_ms=100)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=kafka,
        group_id=unique("pacing-group"),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **pacing.idle_settings(),
    )
    await consumer.start()
    try:
        source = KafkaBatchSource(consumer, [topic], poll_ms=100, pacing=pacing)
        source.subscribe(_nothing)

        def knobs() -> tuple[int, int]:
            fetcher = consumer._fetcher
            return fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms

        assert knobs() == (1, 100)
        got: list[object] = []
        async with asyncio.timeout(60):
            while len(got) < 10:
                got += await source.next_batch(100)
        assert knobs() == (64 * 1024, 5)  # records came: the broker holds the next fetch
        assert await source.next_batch(100) == []  # all ten read: a quiet poll
        assert knobs() == (1, 100)  # the next event is answered at once
    finally:
        await consumer.stop()
