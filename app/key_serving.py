"""``GET /pipelines/NAME/keys/KEY``: a key's per-key state, answered by the worker that owns the
key's partition; any other worker says which one does.

A key's partition is the one Kafka's default partitioner gives it (murmur2 of the key), as
producers place keys. The owner is found in the consumer group's description: each worker
names its web address in its consumer's client id (``sluice-NAME@host:port``), the way Kafka
Streams workers advertise ``application.server``. Only members with this pipeline's prefix and
a plain ``host:port`` count, so a client that joins the group cannot redirect requests.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Set
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

from app.config import Config, PipelineConfig
from app.kafka_clients import connection, make_admin
from streams.features.serving import key_view
from streams.features.step import FeatureStep
from streams.records import Partition

log = logging.getLogger(__name__)

# How long the group's assignment is reused for requests about keys another worker owns, and
# how long one lookup may take: the endpoint never costs the worker more than that.
OWNERS_TTL_S = 2.0
OWNER_LOOKUP_TIMEOUT_S = 5.0
# What an advertised web address may be: host:port, nothing a browser would follow elsewhere.
WEB_ADDRESS = re.compile(r"[A-Za-z0-9.-]{1,253}:[0-9]{1,5}")


class KeyServing:
    def __init__(self, config: Config, pipeline: PipelineConfig, web_address: Callable[[], str] | None) -> None:
        self.config = config
        self.pipeline = pipeline
        self.web_address = web_address
        self._owners: dict[Partition, str] = {}
        self._owners_at = float("-inf")
        self._lock = asyncio.Lock()

    def client_id(self) -> str:
        """The consumer's client id: it names this worker's web address for the others."""
        name = f"sluice-{self.pipeline.name}"
        return f"{name}@{self.web_address()}" if self.web_address is not None else name

    async def answer(
        self, key: bytes, step: FeatureStep, consumer: AIOKafkaConsumer, ready: Set[TopicPartition]
    ) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body): 200 with the key's state, 404 for a key with none, 307 naming the
        owner (``owner``, and ``Location``), 503 while its partition moves between workers."""
        topic = self.pipeline.input_topics[0]
        count = len(consumer.partitions_for_topic(topic) or ())
        if not count:
            return 503, {"error": f"the partitions of {topic} are not known yet"}
        partition = Partition(topic, (murmur2(key) & 0x7FFFFFFF) % count)
        where = {"topic": topic, "partition": partition.partition}
        if TopicPartition(*partition) in ready:
            view = key_view(step, partition, key)
            if view is None:
                return 404, {"error": "no state for this key (never seen, or forgotten after its TTL)", **where}
            return 200, {"key": key.decode("utf-8", "replace"), **where, **view}
        owner = await self._owner_of(partition)
        if owner is None or (self.web_address is not None and owner == self.web_address()):
            # Nobody, or this worker before its state is restored: a rebalance is under way.
            return 503, {"error": "the key's partition is moving between workers; ask again in a moment", **where}
        return 307, {"owner": owner, **where}

    async def _owner_of(self, partition: Partition) -> str | None:
        async with self._lock:  # one lookup at a time; requests meanwhile share its answer
            if time.monotonic() - self._owners_at > OWNERS_TTL_S:
                try:
                    self._owners = await asyncio.wait_for(self._describe_owners(), OWNER_LOOKUP_TIMEOUT_S)
                except (TimeoutError, KafkaError) as exc:
                    log.warning("pipeline %s: could not ask the group who owns what: %r", self.pipeline.name, exc)
                    self._owners = {}
                self._owners_at = time.monotonic()
            return self._owners.get(partition)

    async def _describe_owners(self) -> dict[Partition, str]:
        prefix = f"sluice-{self.pipeline.name}@"
        # Made outside the try, closed in its finally: also when start() fails or the lookup's
        # timeout cancels it (shielded, so that cancellation cannot cut the close short).
        admin = make_admin(connection(self.config))
        try:
            await admin.start()
            (described,) = await admin.describe_consumer_groups([self.pipeline.group_id])
        finally:
            await asyncio.shield(admin.close())
        owners: dict[Partition, str] = {}
        for group in described.groups:
            for member in group[-1]:
                client_id, assignment = str(member[1]), member[-1]
                address = client_id[len(prefix) :]
                if not assignment or not client_id.startswith(prefix) or not WEB_ADDRESS.fullmatch(address):
                    continue
                for topic, numbers in ConsumerProtocolMemberAssignment.decode(assignment).assignment:
                    owners.update({Partition(topic, n): address for n in numbers})
        return owners
