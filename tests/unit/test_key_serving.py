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
from streams.records import Partition

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


async def test_a_member_that_names_an_address_it_does_not_connect_from_is_not_named(monkeypatch, caplog):
    # The rogue of the issue: any client can join the group with this client id.
    members = [member(f"{PREFIX}evil.example:80", "/10.0.0.66", [1, 2], member_id="rogue-1")]
    resolving(monkeypatch, {"evil.example": ["203.0.113.7"]})
    keys, _ = serving(monkeypatch, members)
    with caplog.at_level(logging.WARNING, logger="app.key_serving"):
        status, body = await ask(keys, 1)
    assert status == 503, body
    assert "owner" not in body and "evil.example" not in str(body)
    assert "could not be verified" in body["error"]
    assert body["partition"] == 1
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    text = warning.getMessage()
    for words in ("rogue-1", "evil.example:80", "10.0.0.66", "203.0.113.7", PIPELINE.group_id):
        assert words in text, text


async def test_a_name_that_does_not_resolve_or_an_ip_of_another_host_is_not_named(monkeypatch):
    members = [
        member(f"{PREFIX}evil.example:80", "/10.0.0.66", [0]),
        member(f"{PREFIX}203.0.113.7:80", "/10.0.0.66", [1]),
        member(f"{PREFIX}[2001:db8::7]:80", "/10.0.0.66", [2]),
    ]
    resolving(monkeypatch, {})
    keys, _ = serving(monkeypatch, members)
    for partition in (0, 1, 2):
        status, body = await ask(keys, partition)
        assert status == 503 and "owner" not in body, (partition, body)


async def test_each_unverified_member_is_logged_once(monkeypatch, caplog):
    monkeypatch.setattr(key_serving, "OWNERS_TTL_S", 0.0)  # every request asks the group again
    members = [member(f"{PREFIX}evil.example:80", "/10.0.0.66", [1], member_id="rogue-1")]
    resolving(monkeypatch, {})
    keys, made = serving(monkeypatch, members)
    with caplog.at_level(logging.WARNING, logger="app.key_serving"):
        for _ in range(3):
            assert (await ask(keys, 1))[0] == 503
    assert len(made) == 3
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


async def test_an_ip_the_member_connects_from_is_named(monkeypatch):
    members = [member(f"{PREFIX}10.0.0.5:6066", "/10.0.0.5", [3])]
    asked = resolving(monkeypatch, {})
    keys, _ = serving(monkeypatch, members)
    assert await ask(keys, 3) == (307, {"owner": "10.0.0.5:6066", "topic": TOPIC, "partition": 3})
    assert asked == [], "an IP address needs no lookup"


@pytest.mark.parametrize("host", ["worker-1", "sluice_worker_1", "worker-1.cluster.local", "Worker_2.local"])
async def test_a_host_name_that_resolves_to_where_the_member_connects_from_is_named_by_that_address(monkeypatch, host):
    # Names with '_' are common (compose v1 containers, some DNS zones); glibc resolves them.
    members = [member(f"{PREFIX}{host}:6066", "/10.0.0.5", [3])]
    resolving(monkeypatch, {host: ["10.0.0.9", "10.0.0.5"]})
    keys, _ = serving(monkeypatch, members)
    # The redirect names the address verified, not the name: a later lookup (the client's) could
    # answer another address.
    assert await ask(keys, 3) == (307, {"owner": "10.0.0.5:6066", "topic": TOPIC, "partition": 3})


@pytest.mark.parametrize(
    ("advertised", "client_host", "names", "owner"),
    [
        ("[::1]:6066", "/0:0:0:0:0:0:0:1", {}, "[::1]:6066"),  # Java writes IPv6 addresses uncompressed
        ("[2001:db8::5]:6066", "/2001:db8:0:0:0:0:0:5", {}, "[2001:db8::5]:6066"),
        ("[2001:DB8:0::5]:6066", "/2001:db8:0:0:0:0:0:5%0", {}, "[2001:db8::5]:6066"),  # a scope id from Java
        ("worker-6:6066", "/2001:db8:0:0:0:0:0:5", {"worker-6": ["2001:db8::5"]}, "[2001:db8::5]:6066"),
        ("10.0.0.5:6066", "/::ffff:10.0.0.5", {}, "10.0.0.5:6066"),  # an IPv4 client on a dual-stack listener
        ("worker-4:6066", "worker-4/10.0.0.5", {"worker-4": ["10.0.0.5"]}, "10.0.0.5:6066"),  # Java's name/ip
    ],
)
async def test_ipv6_members_are_named_in_brackets(monkeypatch, advertised, client_host, names, owner):
    members = [member(f"{PREFIX}{advertised}", client_host, [2])]
    resolving(monkeypatch, names)
    keys, _ = serving(monkeypatch, members)
    assert await ask(keys, 2) == (307, {"owner": owner, "topic": TOPIC, "partition": 2})


@pytest.mark.parametrize(
    "client_id",
    [
        "sluice-other@10.0.0.5:6066",  # another pipeline's prefix
        f"{PREFIX}10.0.0.5",  # no port
        f"{PREFIX}10.0.0.5:0",
        f"{PREFIX}10.0.0.5:65536",
        f"{PREFIX}10.0.0.5:6066/x",
        f"{PREFIX}user@10.0.0.5:6066",
        f"{PREFIX}::1:6066",  # IPv6 without brackets: which colon starts the port?
        f"{PREFIX}[::1%eth0]:6066",
        f"{PREFIX}[not-ip]:6066",
        f"{PREFIX}10.0.0.5:6066 ",
    ],
)
async def test_client_ids_that_are_not_a_plain_address_of_this_pipeline_are_never_named(monkeypatch, client_id):
    members = [member(client_id, "/10.0.0.5", [0]), member(client_id, "/::1", [1])]
    resolving(monkeypatch, {"10.0.0.5": ["10.0.0.5"]})
    keys, _ = serving(monkeypatch, members)
    for partition in (0, 1):
        status, body = await ask(keys, partition)
        assert status == 503 and "owner" not in body, (client_id, body)


async def test_a_name_whose_lookup_hangs_costs_only_its_own_members(monkeypatch):
    monkeypatch.setattr(key_serving, "RESOLVE_TIMEOUT_S", 0.05)
    members = [
        member(f"{PREFIX}slow.example:80", "/10.0.0.66", [0]),
        member(f"{PREFIX}worker-1:6066", "/10.0.0.5", [1]),
    ]
    asked = resolving(monkeypatch, {"worker-1": ["10.0.0.5"]}, hang=frozenset({"slow.example"}))
    keys, _ = serving(monkeypatch, members)
    assert (await ask(keys, 0))[0] == 503
    assert await ask(keys, 1) == (307, {"owner": "10.0.0.5:6066", "topic": TOPIC, "partition": 1})
    monkeypatch.setattr(key_serving, "OWNERS_TTL_S", 0.0)
    await ask(keys, 0)
    assert asked.count("slow.example") == 1, "a lookup still under way is waited for again, not started again"


async def test_a_lookup_that_hangs_is_waited_for_once_then_its_member_is_unverified_at_once(monkeypatch):
    monkeypatch.setattr(key_serving, "RESOLVE_TIMEOUT_S", 0.2)
    monkeypatch.setattr(key_serving, "OWNERS_TTL_S", 0.0)
    members = [member(f"{PREFIX}slow.example:80", "/10.0.0.66", [0])]
    resolving(monkeypatch, {}, hang=frozenset({"slow.example"}))
    keys, _ = serving(monkeypatch, members)
    assert (await ask(keys, 0))[0] == 503  # waited RESOLVE_TIMEOUT_S for the lookup
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert (await ask(keys, 0))[0] == 503
    assert loop.time() - started < 0.2, "the lookup still under way is not waited for again"


async def test_at_most_a_few_lookups_are_under_way_at_once(monkeypatch):
    monkeypatch.setattr(key_serving, "RESOLVE_TIMEOUT_S", 0.01)
    monkeypatch.setattr(key_serving, "OWNERS_TTL_S", 0.0)
    names = [f"slow-{n}.example" for n in range(6)]
    members = [member(f"{PREFIX}{name}:80", "/10.0.0.66", [n]) for n, name in enumerate(names)]
    asked = resolving(monkeypatch, {}, hang=frozenset(names))
    keys, _ = serving(monkeypatch, members)
    for _ in range(3):
        assert (await ask(keys, 0))[0] == 503
    assert len(asked) == key_serving.MAX_PENDING_LOOKUPS, "each hung lookup holds an executor thread"


async def test_lookups_are_cached(monkeypatch):
    monkeypatch.setattr(key_serving, "OWNERS_TTL_S", 0.0)
    members = [member(f"{PREFIX}worker-1:6066", "/10.0.0.5", [1])]
    asked = resolving(monkeypatch, {"worker-1": ["10.0.0.5"]})
    keys, made = serving(monkeypatch, members)
    for _ in range(3):
        assert (await ask(keys, 1))[0] == 307
    assert len(made) == 3 and asked == ["worker-1"]


async def test_this_worker_before_its_state_is_restored_is_a_partition_moving(monkeypatch):
    members = [member(f"{PREFIX}{OWN_ADDRESS}", "/10.0.0.1", [0])]
    keys, _ = serving(monkeypatch, members)
    status, body = await ask(keys, 0)
    assert status == 503 and "moving between workers" in body["error"]


async def test_a_partition_nobody_holds_is_moving(monkeypatch):
    keys, _ = serving(monkeypatch, [member(f"{PREFIX}10.0.0.5:6066", "/10.0.0.5", [])])
    status, body = await ask(keys, 0)
    assert status == 503 and "moving between workers" in body["error"]


@pytest.mark.parametrize(
    ("web_address", "client_id"),
    [
        ("10.0.0.1:6066", "10.0.0.1:6066"),
        ("worker_1.local:6066", "worker_1.local:6066"),
        ("::1:6066", "[::1]:6066"),  # a worker bound to an IPv6 address
        ("2001:db8::5:6066", "[2001:db8::5]:6066"),
        ("[2001:db8::5]:6066", "[2001:db8::5]:6066"),
    ],
)
def test_the_client_id_names_the_web_address_as_host_port_with_ipv6_in_brackets(web_address, client_id):
    keys = KeyServing(CONFIG, PIPELINE, lambda: web_address)
    assert keys.client_id() == f"{PREFIX}{client_id}"
    assert KeyServing(CONFIG, PIPELINE, None).client_id() == f"sluice-{PIPELINE.name}"


async def test_an_ipv6_worker_recognises_itself(monkeypatch):
    members = [member(f"{PREFIX}[::1]:6066", "/0:0:0:0:0:0:0:1", [0])]
    monkeypatch.setattr(key_serving, "connection", lambda config: {})
    monkeypatch.setattr(key_serving, "make_admin", lambda conn: FakeAdmin(members))
    keys = KeyServing(CONFIG, PIPELINE, lambda: "::1:6066")
    status, body = await ask(keys, 0)
    assert status == 503 and "moving between workers" in body["error"]


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


@pytest.mark.parametrize("as_type", [Partition, TopicPartition])
async def test_a_key_of_a_partition_ready_here_is_answered_here(monkeypatch, as_type):
    # Ready partitions are the engine's Partitions, or a Kafka client's equal tuples.
    keys, made = serving(monkeypatch, [])
    monkeypatch.setattr(key_serving, "key_view", lambda step, partition, key: None)
    status, body = await keys.answer(key_of(2), None, FakeConsumer(), {as_type(TOPIC, 2)})  # type: ignore[arg-type]
    assert (status, body["partition"]) == (404, 2)
    assert made == [], "no group lookup for a key served here"
