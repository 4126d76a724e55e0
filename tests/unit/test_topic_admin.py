"""Topic calls over Kafka's admin API (``streams.kafka.topic_admin``), against a fake admin client:
what each answers in the engine's terms, and a topic another worker created first."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.errors import TopicAlreadyExistsError

from streams.kafka.topic_admin import TopicAdmin


class FakeClient:
    """An admin client whose cluster holds ``topics`` (name -> partitions described, or an error code)."""

    def __init__(self, topics: dict[str, list[dict] | int], configs: dict[str, dict[str, str]] | None = None) -> None:
        self.topics, self.configs = topics, configs or {}
        self.created: list[Any] = []
        self.exists_already = False

    async def list_topics(self) -> list[str]:
        return list(self.topics)

    async def describe_topics(self, names: list[str]) -> list[dict]:
        described = []
        for name in names:
            found = self.topics.get(name, 3)  # UNKNOWN_TOPIC_OR_PARTITION
            if isinstance(found, int):
                described.append({"error_code": found, "topic": name, "partitions": []})
            else:
                described.append({"error_code": 0, "topic": name, "partitions": found})
        return described

    async def create_topics(self, new: list[Any]) -> None:
        self.created += new
        if self.exists_already:
            raise TopicAlreadyExistsError()

    async def describe_configs(self, resources: list[Any]) -> list[Any]:
        rows = [
            (0, "", 2, r.name, [(k, v, False, 0, False, []) for k, v in self.configs[r.name].items()])
            if r.name in self.configs
            else (3, "unknown topic", 2, r.name, [])
            for r in resources
        ]
        return [type("Response", (), {"resources": rows})()]


def partition(n: int, leader: int = 1, replicas: int = 3) -> dict:
    return {"partition": n, "leader": leader, "replicas": list(range(replicas))}


async def test_partitions_of_a_topic_in_order_and_none_for_a_missing_one():
    admin = TopicAdmin(FakeClient({"in": [partition(2), partition(0), partition(1)]}))  # type: ignore[arg-type]
    assert await admin.partitions("in") == [0, 1, 2]
    assert await admin.partitions("gone") == []
    assert await admin.topics() == {"in"}


async def test_the_shape_of_a_topic_is_its_partitions_and_replication():
    admin = TopicAdmin(FakeClient({"in": [partition(0, replicas=3), partition(1, replicas=3)], "bare": []}))  # type: ignore[arg-type]
    assert await admin.shape("in") == (2, 3)
    assert await admin.shape("bare") == (0, 1)


async def test_topics_are_created_in_one_request_and_one_another_worker_created_first_is_left():
    client = FakeClient({})
    admin = TopicAdmin(client)  # type: ignore[arg-type]
    await admin.create(["a", "b"], 4)
    assert [(t.name, t.num_partitions, t.replication_factor, t.topic_configs) for t in client.created] == [
        ("a", 4, 1, {}),
        ("b", 4, 1, {}),
    ]
    client.exists_already = True
    await admin.create(["c"], 2, 3, settings={"cleanup.policy": "compact"})
    assert client.created[-1].topic_configs == {"cleanup.policy": "compact"}


async def test_settings_of_existing_topics_only_and_only_those_asked():
    configs = {"out": {"cleanup.policy": "compact", "max.message.bytes": "2048", "retention.ms": "1"}}
    admin = TopicAdmin(FakeClient({"out": [partition(0)]}, configs))  # type: ignore[arg-type]
    found = await admin.settings(["out", "gone", "out"], ["cleanup.policy", "max.message.bytes"])
    assert found == {"out": {"cleanup.policy": "compact", "max.message.bytes": "2048"}}


async def test_waiting_for_leaders_ends_once_every_partition_has_one_or_at_the_timeout():
    client = FakeClient({"new": [partition(0), partition(1, leader=-1)]})
    admin = TopicAdmin(client)  # type: ignore[arg-type]
    await admin.wait_for_leaders(["new"], 0.3)  # returns all the same at the timeout
    client.topics["new"] = [partition(0), partition(1)]
    await asyncio.wait_for(admin.wait_for_leaders(["new"], 30.0), 2.0)
