"""Where a pipeline's model decisions are kept: the compacted topic ``[app] decisions_topic``.

The worker makes sure of the topic at start (``ensure_decisions_topic``: one partition,
compacted, so each pipeline's latest decision stays for good). Each pipeline's service reads it
from the beginning to the end offsets seen then before it loads a model (``DecisionLog.start``),
follows it while it runs (``DecisionLog.arrived``) and writes to it when this worker decides
(``DecisionLog.write``, acknowledged by every in-sync replica before anything changes).

Records about other pipelines are passed over; one that is not a readable decision is skipped
with a warning, and nothing of it is acted on (``app.model_decisions`` says what is readable).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from app.config import Config
from app.kafka_clients import Connection, connection, make_admin, make_consumer, make_producer
from app.model_decisions import Decision, InvalidDecision, parse_decision
from app.topics import is_compacted, partitions_of, topic_settings
from streams.errors import TopicMissingError
from streams.kafka.keyed_log import KeyedLog
from streams.kafka.replay import start_consumer, stop_consumer
from streams.kafka.topic_admin import TopicAdmin
from streams.records import SourceRecord, UndecodableRecord

log = logging.getLogger(__name__)

# Reading the topic to its end at start: seconds before the worker gives up with a line.
CATCH_UP_TIMEOUT_S = 60.0


async def ensure_decisions_topic(conn: Connection, topic: str, *, create: bool, timeout_s: float = 30.0) -> None:
    """The decisions topic exists (created if ``create``: 1 partition, compacted) and is compacted."""
    if not await partitions_of(conn, topic):
        if not create:
            raise TopicMissingError(
                f"the model decisions topic {topic} does not exist; create it compacted with 1 partition "
                f"(cleanup.policy=compact), or set [app] create_topics = true"
            )
        admin = TopicAdmin(make_admin(conn, request_timeout_ms=int(timeout_s * 1000)))
        await admin.start(timeout_s)
        try:
            await admin.create([topic], 1, settings={"cleanup.policy": "compact"})
            log.info("created the model decisions topic %s (compacted, 1 partition)", topic)
            await admin.wait_for_leaders([topic], timeout_s)
        finally:
            await admin.close()
    settings = (await topic_settings(conn, [topic], ["cleanup.policy"])).get(topic, {})
    if not is_compacted(settings):
        raise TopicMissingError(
            f"the model decisions topic {topic} has cleanup.policy={settings.get('cleanup.policy')}: a decision "
            f"would be deleted at the topic's retention, and a worker restarted after that would serve its "
            f"config's models again; set cleanup.policy=compact on it, or name another [app] decisions_topic"
        )


@dataclass(frozen=True)
class Withdrawn:
    """A tombstone for the pipeline: its decisions were deleted from the topic."""

    where: str


class DecisionLog:
    """Pipeline ``pipeline``'s decisions in ``config``'s decisions topic."""

    def __init__(self, config: Config, pipeline: str) -> None:
        self.topic = config.app.decisions_topic
        self.pipeline = pipeline
        self._key = pipeline.encode()
        self._conn = connection(config)
        self._client_id = f"sluice-{pipeline}-decisions"
        self._log: KeyedLog | None = None

    async def start(self) -> Decision | None:
        """Read the topic to the end offsets it has now: the pipeline's latest readable decision."""
        consumer = make_consumer(self._conn, group_id=None, client_id=self._client_id)
        await start_consumer(consumer)
        partitions = await partitions_of(self._conn, self.topic)
        self._log = KeyedLog(
            consumer, self.topic, partitions, lambda: make_producer(self._conn, client_id=self._client_id)
        )
        try:
            records = await asyncio.wait_for(self._log.catch_up(), CATCH_UP_TIMEOUT_S)
        except TimeoutError:
            raise TopicMissingError(
                f"could not read the model decisions topic {self.topic} to its end within "
                f"{CATCH_UP_TIMEOUT_S:.0f}s; check that the broker serves it (kafka-topics --describe)"
            ) from None
        latest: Decision | None = None
        for found in self._read(records):
            latest = None if isinstance(found, Withdrawn) else found
        return latest

    async def arrived(self) -> list[Decision | Withdrawn]:
        """The pipeline's decisions written since the last read (waiting a second for some)."""
        assert self._log is not None, "DecisionLog.start first"
        return self._read(await self._log.follow())

    async def write(self, decision: Decision) -> None:
        """Append ``decision``; returns once every in-sync replica has it (else ``DeliveryFailed``)."""
        assert self._log is not None, "DecisionLog.start first"
        await self._log.append(self._key, decision.to_json())

    async def stop(self) -> None:
        if self._log is None:
            return
        await self._log.close()
        await stop_consumer(self._log.consumer)

    def _read(self, records: list[SourceRecord]) -> list[Decision | Withdrawn]:
        found: list[Decision | Withdrawn] = []
        for record in records:
            where = f"{record.topic}[{record.partition}] offset {record.offset}"
            if isinstance(record, UndecodableRecord):
                log.warning(
                    "model decisions: skipped the record at %s, which cannot be decoded: %s", where, record.reason
                )
            elif record.key != self._key:
                continue  # another pipeline's
            elif record.value is None:
                found.append(Withdrawn(where))
            else:
                try:
                    found.append(parse_decision(record.key, record.value))
                except InvalidDecision as exc:
                    log.warning(
                        "pipeline %s: the record at %s is not a model decision this worker reads (%s): ignored, "
                        "nothing of it is loaded",
                        self.pipeline,
                        where,
                        exc,
                    )
        return found
