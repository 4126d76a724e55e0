"""A ``Sink`` that produces to Kafka and returns once the broker acknowledged every record."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence

from aiokafka import AIOKafkaProducer

from streams.records import OutputRecord


class KafkaSink:
    """Sends a whole batch without awaiting each record, then awaits all acknowledgements.

    The producer should be idempotent (``enable_idempotence=True``) so that retries keep
    per-partition order and never duplicate within a session.
    """

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer

    async def send(self, records: Sequence[OutputRecord]) -> Awaitable[None]:
        # producer.send() only waits when its buffer is full (back-pressure); the returned
        # futures resolve when the broker acknowledges.
        pending = [await self.producer.send(r.topic, r.value, key=r.key) for r in records]
        return _all_acknowledged(pending)


async def _all_acknowledged(pending: list[asyncio.Future[object]]) -> None:
    if pending:
        await asyncio.gather(*pending)
