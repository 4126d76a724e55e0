"""Topics through Kafka's admin API, in the engine's terms: which exist, their partitions and
settings, creating them, and waiting until every partition has a leader.

The caller builds the admin client (``app.kafka_clients.make_admin``) and decides what a
missing or unfit topic means; this module only asks the broker. A topic that another worker
created first counts as created.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping, Sequence

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

# What starting an admin client raises when no broker answers: refused or cut connections
# (the client's own error), or no answer within the caller's timeout.
UNREACHABLE = (KafkaConnectionError, TimeoutError)


class TopicAdmin:
    """An admin client's topic calls. ``start`` connects; ``close`` must follow it."""

    def __init__(self, client: AIOKafkaAdminClient) -> None:
        self.client = client

    async def start(self, timeout_s: float | None = None) -> None:
        """Connect to the cluster (within ``timeout_s``: else ``TimeoutError``)."""
        if timeout_s is None:
            await self.client.start()
        else:
            await asyncio.wait_for(self.client.start(), timeout_s)

    async def close(self) -> None:
        await self.client.close()

    async def topics(self) -> set[str]:
        """The names of every topic of the cluster."""
        return set(await self.client.list_topics())

    async def create(
        self, names: Sequence[str], partitions: int, replication: int = 1, settings: Mapping[str, str] | None = None
    ) -> None:
        """Create the topics ``names`` in one request, each with ``partitions``, ``replication`` and
        the topic ``settings``; one that exists already (another worker created it first) is left."""
        configs = dict(settings) if settings is not None else None
        new = [NewTopic(name, partitions, replication, topic_configs=configs) for name in names]
        with contextlib.suppress(TopicAlreadyExistsError):
            await self.client.create_topics(new)

    async def partitions(self, topic: str) -> list[int]:
        """The partition numbers of ``topic``; empty if it does not exist."""
        (described,) = await self.client.describe_topics([topic])
        if described.get("error_code", 0) != 0:
            return []
        return sorted(p["partition"] for p in described["partitions"])

    async def shape(self, topic: str) -> tuple[int, int]:
        """How many partitions ``topic`` has, and the replication of its first (1 if it has none)."""
        (described,) = await self.client.describe_topics([topic])
        partitions = described["partitions"]
        return len(partitions), len(partitions[0]["replicas"]) if partitions else 1

    async def wait_for_leaders(self, topics: list[str], timeout_s: float) -> None:
        """Until every partition of ``topics`` has a leader, or ``timeout_s`` has passed (then it
        returns all the same: producing earlier only earns retries)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            described = await self.client.describe_topics(topics)
            if all(
                d.get("error_code", 0) == 0 and d["partitions"] and all(p["leader"] >= 0 for p in d["partitions"])
                for d in described
            ):
                return
            await asyncio.sleep(0.1)

    async def settings(self, topics: Iterable[str], names: Sequence[str]) -> dict[str, dict[str, str]]:
        """The settings ``names`` of each existing topic among ``topics`` (a missing topic is left out)."""
        wanted = sorted(set(topics))
        responses = await self.client.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t, dict.fromkeys(names)) for t in wanted]
        )
        found: dict[str, dict[str, str]] = {}
        for response in responses:
            for error_code, _, _, topic, entries in response.resources:
                if error_code == 0:
                    found[topic] = {name: value for name, value, *_ in entries if name in names}
        return found
