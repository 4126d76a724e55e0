"""Make sure a pipeline's topics exist before it consumes or produces."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

from app.kafka_clients import Connection, describe, make_admin, quiet_client_logs, why_unreachable
from streams.errors import BrokerUnreachableError, TopicMissingError
from streams.kafka.topic_admin import UNREACHABLE, TopicAdmin

log = logging.getLogger(__name__)


def as_connection(conn: Connection | str) -> Connection:
    return {"bootstrap_servers": conn} if isinstance(conn, str) else conn


def _what_to_check(protocol: str) -> str:
    checks = []
    if protocol.startswith("SASL_"):
        checks.append("the credentials in the environment variables [app.security] names, and sasl_mechanism")
    if protocol in ("SSL", "SASL_SSL"):
        checks.append(
            "that ssl_cafile is the CA that signed the broker's certificate and, if the broker wants one, "
            "the client certificate (ssl_certfile, ssl_keyfile)"
        )
    checks.append("that the port speaks protocol " + protocol)
    return "; ".join(checks)


async def ensure_topics(
    conn: Connection | str, topics: Iterable[str], *, create: bool, partitions: int, timeout_s: float = 30.0
) -> None:
    conn = as_connection(conn)
    bootstrap = conn["bootstrap_servers"]
    wanted = sorted(set(topics))
    admin = TopicAdmin(make_admin(conn, request_timeout_ms=int(timeout_s * 1000)))
    try:
        # The client logs each failed attempt at ERROR; the one line raised below says it all.
        with quiet_client_logs():
            await admin.start(timeout_s)
    except UNREACHABLE as exc:
        await admin.close()
        protocol = conn.get("security_protocol", "PLAINTEXT")
        if protocol != "PLAINTEXT":
            with quiet_client_logs():
                reason = await why_unreachable(conn, min(timeout_s, 10.0))
            raise BrokerUnreachableError(
                f"cannot connect to Kafka at {describe(conn)}: {reason}; check {_what_to_check(protocol)}"
            ) from exc
        raise BrokerUnreachableError(
            f"no Kafka broker answered at {bootstrap} within {timeout_s:.0f}s; check that it is running "
            f"(docker/kafka-local status), that [app] broker or $SLUICE_BROKER points at it, and whether the "
            f"cluster needs TLS or SASL ([app.security])"
        ) from exc
    try:
        existing = await admin.topics()
        missing = [t for t in wanted if t not in existing]
        if not missing:
            return
        if not create:
            raise TopicMissingError(
                f"topic(s) {', '.join(missing)} do not exist on {bootstrap}; create them, "
                f"or set [app] create_topics = true"
            )
        await admin.create(missing, partitions)  # any that another worker created first are left
        log.info("created topic(s) %s with %d partitions", ", ".join(missing), partitions)
        await admin.wait_for_leaders(missing, timeout_s)
    finally:
        await admin.close()


async def ensure_changelog(
    conn: Connection | str, topic: str, input_topic: str, *, create: bool, timeout_s: float = 30.0
) -> int:
    """Make sure a stateful pipeline's changelog topic is there and fit: compacted (only each key's
    latest state is kept; under ``delete`` state would vanish at the retention), with at least as
    many partitions as the input topic (partition n holds input partition n's keys). Created so
    if missing and ``create``. Returns its ``max.message.bytes``."""
    conn = as_connection(conn)
    inputs = len(await partitions_of(conn, input_topic))
    admin = TopicAdmin(make_admin(conn, request_timeout_ms=int(timeout_s * 1000)))
    await admin.start(timeout_s)
    try:
        if topic not in await admin.topics():
            if not create:
                raise TopicMissingError(
                    f"the state changelog {topic} does not exist; create it compacted with {inputs} partitions "
                    f"(cleanup.policy=compact), or set [app] create_topics = true"
                )
            await admin.create([topic], inputs, settings={"cleanup.policy": "compact"})
            log.info("created the state changelog %s (compacted, %d partitions)", topic, inputs)
            await admin.wait_for_leaders([topic], timeout_s)
    finally:
        await admin.close()
    settings = (await topic_settings(conn, [topic], ["cleanup.policy", "max.message.bytes"])).get(topic, {})
    if not is_compacted(settings):
        raise TopicMissingError(
            f"the state changelog {topic} has cleanup.policy={settings.get('cleanup.policy')}: state would be deleted "
            f"at the topic's retention; set cleanup.policy=compact on it, or name another changelog_topic"
        )
    have = len(await partitions_of(conn, topic))
    if have < inputs:
        raise TopicMissingError(
            f"the state changelog {topic} has {have} partitions but the input topic {input_topic} has {inputs}; "
            f"give it {inputs} (kafka-topics --alter --partitions {inputs}) or name another changelog_topic"
        )
    return int(settings.get("max.message.bytes", 1048588))


async def ensure_repartition(
    conn: Connection | str, topic: str, source_topic: str, *, create: bool, timeout_s: float = 30.0
) -> None:
    """Make sure the repartition topic of a pipeline keyed by an event field is there and fit. Created
    (if ``create``) with the source topic's partitions, replication, retention and timestamp window:
    it holds the same events, and a backfill replays it, so it keeps them as long as the source does. It must keep
    every record (not compacted: each record is keyed, compaction would drop a key's older events)
    with the producer's timestamps (``CreateTime``: windows are measured by them)."""
    conn = as_connection(conn)
    if not await partitions_of(conn, topic):
        if not create:
            raise TopicMissingError(
                f"the repartition topic {topic} does not exist; create it (as many partitions as {source_topic}, "
                f"and its retention), or set [app] create_topics = true"
            )
        await _create_like(conn, topic, source_topic, timeout_s)
    settings = (await topic_settings(conn, [topic], ["cleanup.policy", "message.timestamp.type"])).get(topic, {})
    if is_compacted(settings):
        raise TopicMissingError(
            f"the repartition topic {topic} is compacted: it would drop a key's older events; "
            f"set cleanup.policy=delete on it, or name another repartition_topic"
        )
    if settings.get("message.timestamp.type", "CreateTime") != "CreateTime":
        raise TopicMissingError(
            f"the repartition topic {topic} has message.timestamp.type={settings['message.timestamp.type']}: the "
            f"events' own timestamps would be replaced; set it to CreateTime, or name another repartition_topic"
        )


async def _create_like(conn: Connection, topic: str, source_topic: str, timeout_s: float) -> None:
    # What the source keeps, and the timestamps it takes (a record it took is then taken here too).
    kept = ["retention.ms", "retention.bytes", "message.timestamp.before.max.ms", "message.timestamp.after.max.ms"]
    copied = (await topic_settings(conn, [source_topic], kept)).get(source_topic, {})
    admin = TopicAdmin(make_admin(conn, request_timeout_ms=int(timeout_s * 1000)))
    await admin.start(timeout_s)
    try:
        partitions, replicas = await admin.shape(source_topic)
        await admin.create([topic], partitions, replicas, settings=copied)
        log.info(
            "created the repartition topic %s (%d partitions, replication %d, as %s)",
            topic,
            partitions,
            replicas,
            source_topic,
        )
        await admin.wait_for_leaders([topic], timeout_s)
    finally:
        await admin.close()


async def timestamp_window_ms(conn: Connection | str, topic: str) -> tuple[int | None, int | None]:
    """How far behind and ahead of the broker's clock a record's timestamp may be for ``topic``
    (``message.timestamp.before.max.ms``, ``after.max.ms``); None where there is no bound."""
    names = ["message.timestamp.before.max.ms", "message.timestamp.after.max.ms"]
    settings = (await topic_settings(conn, [topic], names)).get(topic, {})
    bounds = [int(settings[name]) if name in settings else None for name in names]
    return tuple(None if b is None or b >= 2**62 else b for b in bounds)  # type: ignore[return-value]


async def check_broker(conn: Connection | str, timeout_s: float = 15.0) -> None:
    """Connect once, so an unreachable broker or refused credentials is one clear error up front."""
    await ensure_topics(conn, [], create=False, partitions=1, timeout_s=timeout_s)


async def partitions_of(conn: Connection | str, topic: str) -> list[int]:
    """The partition numbers of ``topic``; empty if it does not exist."""
    admin = TopicAdmin(make_admin(as_connection(conn)))
    await admin.start()
    try:
        return await admin.partitions(topic)
    finally:
        await admin.close()


async def topic_settings(
    conn: Connection | str, topics: Iterable[str], names: Sequence[str]
) -> dict[str, dict[str, str]]:
    """The settings ``names`` of each existing topic among ``topics`` (a missing topic is left out)."""
    admin = TopicAdmin(make_admin(as_connection(conn)))
    await admin.start()
    try:
        return await admin.settings(topics, names)
    finally:
        await admin.close()


async def max_message_bytes(conn: Connection | str, topics: Iterable[str]) -> dict[str, int]:
    """Each existing topic's ``max.message.bytes``: the largest record batch it accepts."""
    settings = await topic_settings(conn, topics, ["max.message.bytes"])
    return {topic: int(s["max.message.bytes"]) for topic, s in settings.items() if "max.message.bytes" in s}


def is_compacted(settings: Mapping[str, str]) -> bool:
    return "compact" in str(settings.get("cleanup.policy", "")).split(",")


async def compacted_topics(conn: Connection | str, topics: Iterable[str]) -> set[str]:
    """The compacted ones among ``topics``: they refuse records without a key."""
    settings = await topic_settings(conn, topics, ["cleanup.policy"])
    return {topic for topic, s in settings.items() if is_compacted(s)}
