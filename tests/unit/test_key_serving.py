"""Who ``GET /pipelines/NAME/keys/KEY`` names as a key's owner, against a fake group description
and a fake resolver: only a member that connects to Kafka from the address it advertises (as
the broker saw the connection) is named, and the lookup never leaks its admin client."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import KafkaConnectionError
from aiokafka.partitioner import murmur2

from app import key_serving
from app.config import load_config
from app.key_serving import KeyServing

CONFIG = load_config("config/sluice.toml", environ={})
PIPELINE = CONFIG.pipelines[0]
TOPIC = PIPELINE.input_topics[0]
PARTITIONS = 4
OWN_ADDRESS = "10.0.0.1:6066"


def key_of(partition: int) -> bytes:
    """A key the default partitioner puts in ``partition``."""
    return next(
        k for k in (f"acct-{i}".encode() for i in range(10_000)) if (murmur2(k) & 0x7FFFFFFF) % PARTITIONS == partition
    )


def member(client_id: str, client_host: str, partitions: list[int], member_id: str | None = None) -> tuple:
    """One member of a DescribeGroups answer (v0-v3 layout), holding ``partitions`` of the input topic."""
    assignment = ConsumerProtocolMemberAssignment(0, [(TOPIC, partitions)], b"").encode() if partitions else b""
    return (member_id or f"{client_id}-{len(partitions)}", client_id, client_host, b"", assignment)


class FakeAdmin:
    """An admin client whose start fails, hangs, or whose group holds ``members``."""

    def __init__(self, members: list[tuple], start: BaseException | None = None, hang: bool = False) -> None:
        self.members, self.start_error, self.hang = members, start, hang
        self.started = self.closed = False

    async def start(self) -> None:
        if self.hang:
            await asyncio.Event().wait()
        if self.start_error is not None:
            raise self.start_error
        self.started = True

    async def describe_consumer_groups(self, group_ids: list[str]) -> list[Any]:
        assert self.started and not self.closed
        group = (0, group_ids[0], "Stable", "consumer", "roundrobin", self.members)

        class Described:
            def __init__(self) -> None:
                self.groups = [group]

        return [Described()]

    async def close(self) -> None:
        self.closed = True


class FakeConsumer:
    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(PARTITIONS))


def serving(monkeypatch: pytest.MonkeyPatch, members: list[tuple], **admin: Any) -> tuple[KeyServing, list[FakeAdmin]]:
    """A KeyServing for this worker (``OWN_ADDRESS``) whose every group lookup sees ``members``."""
    made: list[FakeAdmin] = []

    def make_admin(conn: Any) -> FakeAdmin:
        made.append(FakeAdmin(members, **admin))
        return made[-1]

    monkeypatch.setattr(key_serving, "connection", lambda config: {})
    monkeypatch.setattr(key_serving, "make_admin", make_admin)
    return KeyServing(CONFIG, PIPELINE, lambda: OWN_ADDRESS), made


def resolving(monkeypatch: pytest.MonkeyPatch, names: dict[str, list[str]], hang: frozenset[str] = frozenset()) -> list:
    """Host names resolve as ``names`` says (others do not resolve; those in ``hang`` never answer).
    Returns the names looked up, in order."""
    asked: list[str] = []

    async def getaddrinfo(host: str, port: Any, *args: Any, **kwargs: Any) -> list[tuple]:
        asked.append(host)
        if host in hang:
            await asyncio.Event().wait()
        if host not in names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [
            (socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, 0)) for ip in names[host]
        ]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    return asked


async def ask(keys: KeyServing, partition: int, ready: set[int] = frozenset()) -> tuple[int, dict[str, Any]]:
    return await keys.answer(key_of(partition), None, FakeConsumer(), {TopicPartition(TOPIC, p) for p in ready})  # type: ignore[arg-type]


PREFIX = f"sluice-{PIPELINE.name}@"


async def test_the_admin_client_is_closed_when_it_cannot_start(monkeypatch, caplog):
    keys, made = serving(monkeypatch, [], start=KafkaConnectionError("broker down"))
    with caplog.at_level(logging.WARNING, logger="app.key_serving"):
        status, _ = await ask(keys, 0)
    assert status == 503
    assert [a.closed for a in made] == [True]


async def test_the_admin_client_is_closed_when_the_lookup_times_out(monkeypatch, caplog):
    monkeypatch.setattr(key_serving, "OWNER_LOOKUP_TIMEOUT_S", 0.05)
    keys, made = serving(monkeypatch, [], hang=True)
    with caplog.at_level(logging.WARNING, logger="app.key_serving"):
        status, _ = await ask(keys, 0)
    assert status == 503
    await asyncio.sleep(0)  # the close is shielded from the cancellation: let it finish
    assert [a.closed for a in made] == [True]


async def test_the_admin_client_is_closed_after_a_lookup(monkeypatch):
    keys, made = serving(monkeypatch, [member(f"{PREFIX}10.0.0.5:6066", "/10.0.0.5", [3])])
    assert (await ask(keys, 3))[0] == 307
    assert [a.closed for a in made] == [True]
