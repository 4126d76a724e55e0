"""The Kafka half of finding a key's owner (``streams.kafka.key_owners``), against a fake admin
client: keys go where every Kafka client's default partitioner puts them, members come with
the partitions they hold, and the admin client is always closed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import KafkaConnectionError

from streams.kafka.key_owners import LOOKUP_ERRORS, GroupMember, group_members, key_partition
from streams.records import Partition

# murmur2 as Kafka's own Java client computes it (its UtilsTest), as signed 32-bit ints.
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("key", "murmur2"), JAVA_MURMUR2.items())
@pytest.mark.parametrize("partitions", [1, 4, 7, 100])
def test_a_key_goes_to_the_partition_the_java_client_gives_it(key, murmur2, partitions):
    assert key_partition(key, partitions) == (murmur2 & 0x7FFFFFFF) % partitions


def assignment(*held: tuple[str, list[int]]) -> bytes:
    return ConsumerProtocolMemberAssignment(0, list(held), b"").encode()


class FakeAdmin:
    def __init__(self, groups: list[tuple], start: BaseException | None = None) -> None:
        self.groups, self.start_error = groups, start
        self.closed = False

    async def start(self) -> None:
        if self.start_error is not None:
            raise self.start_error

    async def describe_consumer_groups(self, group_ids: list[str]) -> list[Any]:
        described = type("Described", (), {"groups": self.groups})
        return [described()]

    async def close(self) -> None:
        self.closed = True


async def test_members_come_with_the_partitions_they_hold():
    held = assignment(("in", [0, 2]), ("other", [1]))
    members = [("m-1", "sluice-p@10.0.0.5:6066", "/10.0.0.5", b"", held), ("m-2", "c", "/10.0.0.6", b"", b"")]
    admin = FakeAdmin([(0, "g", "Stable", "consumer", "range", members)])
    found = await group_members(admin, "g")  # type: ignore[arg-type]
    assert [(m.member_id, m.client_id, m.client_host) for m in found] == [
        ("m-1", "sluice-p@10.0.0.5:6066", "/10.0.0.5"),
        ("m-2", "c", "/10.0.0.6"),
    ]
    assert found[0].partitions() == [Partition("in", 0), Partition("in", 2), Partition("other", 1)]
    assert not found[1].assignment
    assert admin.closed


async def test_a_group_in_error_has_no_members():
    members = [("m-1", "c", "/10.0.0.5", b"", assignment(("in", [0])))]
    admin = FakeAdmin([(16, "g", "", "", "", members)])
    assert await group_members(admin, "g") == []  # type: ignore[arg-type]


def test_an_assignment_is_decoded_only_when_asked():
    member = GroupMember("m", "not-ours", "/10.0.0.66", b"\x00junk")
    with pytest.raises(Exception):  # noqa: B017 - whatever the decoder raises, only when asked
        member.partitions()


async def test_the_admin_client_is_closed_when_it_cannot_start():
    admin = FakeAdmin([], start=KafkaConnectionError("broker down"))
    with pytest.raises(LOOKUP_ERRORS):
        await group_members(admin, "g")  # type: ignore[arg-type]
    assert admin.closed


async def test_the_admin_client_is_closed_when_the_lookup_is_cancelled():
    admin = FakeAdmin([])
    admin.start = asyncio.Event().wait  # type: ignore[method-assign]
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(group_members(admin, "g"), 0.05)  # type: ignore[arg-type]
    await asyncio.sleep(0)  # the close is shielded from the cancellation: let it finish
    assert admin.closed
