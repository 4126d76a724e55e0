"""``GET /pipelines/NAME/keys/KEY``: a key's per-key state, answered by the worker that owns the
key's partition; any other worker says which one does.

A key's partition is the one Kafka's default partitioner gives it (murmur2 of the key), as
producers place keys. The owner is found in the consumer group's description: each worker
names its web address in its consumer's client id (``sluice-NAME@host:port``, ``[v6]:port``
for IPv6), the way Kafka Streams workers advertise ``application.server``.

A client id is whatever the client says, so it is never trusted alone: a member is named only
when the address it advertises is where the broker saw it connect from (``client_host`` in the
group's description): an IP address equal to it, or a host name that resolves, here, to it.
The redirect then names that verified IP address, not the name (a later lookup could answer
otherwise). So a client that joins the group can at most have requests sent to the machine it
connects to Kafka from; a member that fails the check is logged once and its keys answer 503.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Collection, Iterable, Set
from dataclasses import dataclass
from typing import Any, Protocol

from app.addresses import IPAddress, host_port, ip_address, parse_web_address
from app.config import Config, PipelineConfig
from app.kafka_clients import connection, make_admin
from streams.errors import StateError
from streams.features.serving import key_view
from streams.features.step import FeatureStep
from streams.kafka.key_owners import LOOKUP_ERRORS, group_members, key_partition
from streams.records import Partition

log = logging.getLogger(__name__)

# How long the group's assignment is reused for requests about keys another worker owns, and
# how long one lookup may take: the endpoint never costs the worker more than that.
OWNERS_TTL_S = 2.0
OWNER_LOOKUP_TIMEOUT_S = 5.0
# Looking up the host names members advertise: how long a request waits for one (a name that
# does not answer costs only its own members), and how long an answer is reused.
RESOLVE_TIMEOUT_S = 2.0
RESOLVED_TTL_S = 10.0
MAX_PENDING_LOOKUPS = 2
# The members already logged as unverified (member id, client id, address seen): once each.
_MAX_WARNED = 1024

MOVING = "the key's partition is moving between workers; ask again in a moment"
UNVERIFIED = (
    "the key's partition is held by a group member whose web address could not be verified "
    "(it does not connect to Kafka from the address it names); not redirecting: see the worker's log"
)


class TopicPartitions(Protocol):
    """What the pipeline's consumer knows of its topics (a Kafka consumer is one)."""

    def partitions_for_topic(self, topic: str) -> Collection[int] | None: ...


@dataclass(frozen=True)
class Member:
    """A group member that names a web address in its client id."""

    member_id: str
    client_id: str
    host: str  # as advertised, without brackets
    port: int
    seen_from: IPAddress | None  # where the broker saw it connect from

    @property
    def advertised(self) -> str:
        return host_port(self.host, self.port)


@dataclass(frozen=True)
class Owner:
    """Who holds a partition: ``address`` is the verified host:port to redirect to, or None."""

    member: Member
    address: str | None


def seen_from(client_host: str) -> IPAddress | None:
    """The address in the group description's ``client_host``: Java's ``InetAddress.toString()``,
    ``/10.0.0.5``, ``name/10.0.0.5`` or ``/0:0:0:0:0:0:0:1`` (IPv6 uncompressed, maybe a zone)."""
    return ip_address(client_host.rsplit("/", 1)[-1])


class KeyServing:
    def __init__(self, config: Config, pipeline: PipelineConfig, web_address: Callable[[], str] | None) -> None:
        self.config = config
        self.pipeline = pipeline
        self.web_address = web_address
        self._owners: dict[Partition, Owner] = {}
        self._owners_at = float("-inf")
        self._lock = asyncio.Lock()
        # Host name -> (when asked, the lookup): a lookup under way is waited for, not repeated.
        self._lookups: dict[str, tuple[float, asyncio.Task[frozenset[IPAddress]]]] = {}
        self._warned: set[tuple[str, str, str]] = set()

    def own_address(self) -> str | None:
        """This worker's web address as its client id names it (IPv6 in brackets)."""
        if self.web_address is None:
            return None
        address = self.web_address()
        host, _, port = address.rpartition(":")
        if ":" in host and not host.startswith("["):  # an IPv6 address, as the bind names it
            address = f"[{host}]:{port}"
        parsed = parse_web_address(address)
        return host_port(*parsed) if parsed is not None else address

    def client_id(self) -> str:
        """The consumer's client id: it names this worker's web address for the others."""
        name = f"sluice-{self.pipeline.name}"
        own = self.own_address()
        return f"{name}@{own}" if own is not None else name

    async def answer(
        self, key: bytes, step: FeatureStep, consumer: TopicPartitions, ready: Set[tuple[str, int]]
    ) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body): 200 with the key's state, 404 for a key with none, 307 naming the
        owner (``owner``, and ``Location``), 503 while its partition moves between workers or
        while the member that holds it is not a verified worker. ``ready``: the partitions whose
        state this worker holds (``Partition``s, or a Kafka client's equal (topic, partition) tuples)."""
        topic = self.pipeline.input_topics[0]
        count = len(consumer.partitions_for_topic(topic) or ())
        if not count:
            return 503, {"error": f"the partitions of {topic} are not known yet"}
        partition = Partition(topic, key_partition(key, count))
        where = {"topic": topic, "partition": partition.partition}
        if partition in ready:
            try:
                view = key_view(step, partition, key)
            except StateError as exc:
                # A damaged record: the partition's next batch stops the worker, which rebuilds the
                # copy from the changelog at its restart; the caller learns why now, in words.
                return 500, {"error": str(exc), **where}
            if view is None:
                return 404, {"error": "no state for this key (never seen, or forgotten after its TTL)", **where}
            return 200, {"key": key.decode("utf-8", "replace"), **where, **view}
        owner = await self._owner_of(partition)
        if owner is None or owner.member.advertised == self.own_address():
            # Nobody, or this worker before its state is restored: a rebalance is under way.
            return 503, {"error": MOVING, **where}
        if owner.address is None:
            return 503, {"error": UNVERIFIED, **where}
        return 307, {"owner": owner.address, **where}

    async def _owner_of(self, partition: Partition) -> Owner | None:
        async with self._lock:  # one lookup at a time; requests meanwhile share its answer
            if time.monotonic() - self._owners_at > OWNERS_TTL_S:
                try:
                    held = await asyncio.wait_for(self._describe_group(), OWNER_LOOKUP_TIMEOUT_S)
                except (TimeoutError, *LOOKUP_ERRORS) as exc:
                    log.warning("pipeline %s: could not ask the group who owns what: %r", self.pipeline.name, exc)
                    self._owners = {}
                else:
                    self._owners = await self._verified(held)
                self._owners_at = time.monotonic()
            return self._owners.get(partition)

    async def _describe_group(self) -> list[tuple[Member, list[Partition]]]:
        """The group's members that advertise a web address, with the partitions each holds."""
        prefix = f"sluice-{self.pipeline.name}@"
        # The admin client is closed whatever happens, also when the lookup's timeout cancels it.
        members = await group_members(make_admin(connection(self.config)), self.pipeline.group_id)
        held: list[tuple[Member, list[Partition]]] = []
        for m in members:
            address = parse_web_address(m.client_id[len(prefix) :]) if m.client_id.startswith(prefix) else None
            if not m.assignment or address is None:
                continue
            held.append((Member(m.member_id, m.client_id, *address, seen_from(m.client_host)), m.partitions()))
        return held

    async def _verified(self, held: list[tuple[Member, list[Partition]]]) -> dict[Partition, Owner]:
        """Each partition's owner, with the address to redirect to where its member is verified."""
        own = self.own_address()
        names = {m.host for m, _ in held if m.advertised != own and ip_address(m.host) is None}
        self._lookups = {h: e for h, e in self._lookups.items() if h in names or not e[1].done()}
        resolved = dict(zip(names, await asyncio.gather(*(self._addresses_of(h) for h in names)), strict=True))
        owners: dict[Partition, Owner] = {}
        for member, partitions in held:
            address: str | None = None
            if member.advertised == own:
                address = own
            elif member.seen_from is not None:
                literal = ip_address(member.host)
                addresses = {literal} if literal is not None else resolved.get(member.host) or frozenset()
                if member.seen_from in addresses:
                    address = host_port(member.seen_from, member.port)
            if address is None:
                self._warn_unverified(member, partitions, resolved.get(member.host, frozenset()))
            owners.update({p: Owner(member, address) for p in partitions})
        return owners

    async def _addresses_of(self, host: str) -> frozenset[IPAddress] | None:
        """The addresses ``host`` resolves to (empty: none), None if the lookup has not answered
        within ``RESOLVE_TIMEOUT_S``. A lookup is waited for once: while it goes on, later refreshes
        take its member as unverified at once, so a name that never answers delays one request, not
        every one. At most ``MAX_PENDING_LOOKUPS`` go on at a time: each holds a thread of the loop's
        executor, which model loads and Kafka's own lookups need too."""
        now = time.monotonic()
        entry = self._lookups.get(host)
        if entry is None or (entry[1].done() and now - entry[0] > RESOLVED_TTL_S):
            pending = sum(not task.done() for _, task in self._lookups.values())
            if pending >= MAX_PENDING_LOOKUPS:
                return None
            entry = self._lookups[host] = (now, asyncio.get_running_loop().create_task(_resolve(host)))
        elif not entry[1].done() and now - entry[0] >= RESOLVE_TIMEOUT_S:
            return None
        try:
            return await asyncio.wait_for(asyncio.shield(entry[1]), RESOLVE_TIMEOUT_S)
        except TimeoutError:
            return None

    def _warn_unverified(
        self, member: Member, partitions: Iterable[Partition], resolved: frozenset[IPAddress] | None
    ) -> None:
        seen = str(member.seen_from) if member.seen_from is not None else "an address it could not read"
        key = (member.member_id, member.client_id, seen)
        if key in self._warned:
            return
        if len(self._warned) >= _MAX_WARNED:
            self._warned.clear()
        self._warned.add(key)
        if ip_address(member.host) is not None:
            why = "that is another address"
        elif resolved is None:
            why = f"looking up {member.host!r} did not answer within {RESOLVE_TIMEOUT_S:g}s"
        elif not resolved:
            why = f"{member.host!r} does not resolve here"
        else:
            why = f"{member.host!r} resolves here to {', '.join(sorted(map(str, resolved)))} only"
        log.warning(
            "pipeline %s: not redirecting key requests to %s: group %s member %s (client id %r) names it as its "
            "web address, but the broker saw it connect from %s, and %s. Requests for keys of partitions %s "
            "answer 503 while it holds them. If it is a sluice worker, bind its web server (web_bind) to the "
            "address it reaches Kafka from, or make its host name resolve to that address; if it is not, it "
            "has no business in the group: find the client at %s and restrict who may join the group "
            "(Kafka ACLs on the group)",
            self.pipeline.name,
            member.advertised,
            self.pipeline.group_id,
            member.member_id,
            member.client_id,
            seen,
            why,
            ", ".join(f"{p.topic}[{p.partition}]" for p in partitions),
            seen,
        )


async def _resolve(host: str) -> frozenset[IPAddress]:
    """The addresses ``host`` resolves to (the system's resolver, off the event loop); empty when
    it does not resolve."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:  # gaierror; idna refuses labels over 63 characters
        log.debug("looking up %r: %r", host, exc)
        return frozenset()
    addresses = (ip_address(str(info[4][0])) for info in infos)
    return frozenset(a for a in addresses if a is not None)
