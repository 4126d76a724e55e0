"""The Kafka half of finding who owns a key: the partition Kafka's default partitioner gives the
key, and the members of a consumer group with the partitions each holds, as the broker's
description of the group names them. Whom to trust among the members is the caller's call.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2

from streams.records import Partition

# What asking the group can raise when the broker is away or refuses (a timeout aside).
LOOKUP_ERRORS = (KafkaError,)


def key_partition(key: bytes, partitions: int) -> int:
    """The partition of ``partitions`` that Kafka's default partitioner gives ``key``: the positive
    murmur2 of its bytes, as producers place keys."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True)
class GroupMember:
    """A member of a consumer group as the broker describes it. ``client_id`` is whatever the
    client says; ``client_host`` is where the broker saw it connect from (Java's
    ``InetAddress.toString()``: ``/10.0.0.5``, ``name/10.0.0.5``)."""

    member_id: str
    client_id: str
    client_host: str
    assignment: bytes  # the consumer protocol's encoding; empty while it holds nothing

    def partitions(self) -> list[Partition]:
        """The partitions assigned to it (decoded only when asked: a member the caller passes over
        is never decoded)."""
        decoded = ConsumerProtocolMemberAssignment.decode(self.assignment).assignment
        return [Partition(topic, n) for topic, numbers in decoded for n in numbers]


async def group_members(admin: AIOKafkaAdminClient, group_id: str) -> list[GroupMember]:
    """The members of ``group_id`` (none while the group is in error). Starts ``admin`` and closes it
    whatever happens: also when its start fails or the caller's timeout cancels the lookup (the
    close is shielded, so that cancellation cannot cut it short)."""
    try:
        await admin.start()
        (described,) = await admin.describe_consumer_groups([group_id])
    finally:
        await asyncio.shield(admin.close())
    members: list[GroupMember] = []
    for group in described.groups:
        # DescribeGroups v0-v3: (error, group, state, protocol type, protocol, members, ...);
        # a member: (member id, client id, client host, metadata, assignment).
        if group[0] != 0:
            continue
        members += (GroupMember(m[0], m[1], m[2], m[4]) for m in group[5])
    return members
