"""Make sure a pipeline's topics exist before it consumes or produces."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, TopicAlreadyExistsError

log = logging.getLogger(__name__)


class TopicMissingError(Exception):
    """A configured topic does not exist and sluice is not allowed to create it."""


class BrokerUnreachableError(Exception):
    """No broker answered at the configured address."""


async def ensure_topics(
    bootstrap: str, topics: Iterable[str], *, create: bool, partitions: int, timeout_s: float = 30.0
) -> None:
    wanted = sorted(set(topics))
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
    except (KafkaConnectionError, TimeoutError) as exc:
        raise BrokerUnreachableError(
            f"no Kafka broker answered at {bootstrap} within {timeout_s:.0f}s; check that it is running "
            f"(docker/kafka-local status) and that [app] broker or $SLUICE_BROKER points at it"
        ) from exc
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in wanted if t not in existing]
        if not missing:
            return
        if not create:
            raise TopicMissingError(
                f"topic(s) {', '.join(missing)} do not exist on {bootstrap}; create them, "
                f"or set [app] create_topics = true"
            )
        with contextlib.suppress(TopicAlreadyExistsError):  # another worker created it first
            await admin.create_topics([NewTopic(t, partitions, 1) for t in missing])
        log.info("created topic(s) %s with %d partitions", ", ".join(missing), partitions)
        await _wait_for_leaders(admin, missing, timeout_s)
    finally:
        await admin.close()


async def _wait_for_leaders(admin: AIOKafkaAdminClient, topics: list[str], timeout_s: float) -> None:
    # A topic is usable once every partition has a leader; producing earlier only earns retries.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        described = await admin.describe_topics(topics)
        if all(
            d.get("error_code", 0) == 0 and d["partitions"] and all(p["leader"] >= 0 for p in d["partitions"])
            for d in described
        ):
            return
        await asyncio.sleep(0.1)


async def partitions_of(bootstrap: str, topic: str) -> list[int]:
    """The partition numbers of ``topic``; empty if it does not exist."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if described.get("error_code", 0) != 0:
        return []
    return sorted(p["partition"] for p in described["partitions"])
