"""A test kit for pipelines: a source of given events and a sink that collects, no broker.

The driver reads from a ``streams.source.Source`` and sends through a ``streams.flow.delivery.Sink``;
these three stand in for Kafka in a user's tests, so the real pipeline runs over them (decode,
per-key features, the batcher and driver, the model, encode, dead letters):

- ``EventSource`` hands out the given events (``Event``) in their order, each at the next offset of its
  partition, and then ends (a bounded source, like the backfill's replay);
- ``CollectingSink`` keeps every output, in the order sent, and acknowledges it at once;
  ``decoded(topic)`` reads a topic's outputs back as JSON;
- ``CountingProgress`` counts what was acknowledged; nothing is committed anywhere.

What Kafka does is not here: no consumer group, no commits, transactions or rebalances, no
broker limits on record sizes. ``app.testing`` builds a configured pipeline over these.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from streams.records import InputRecord, OutputRecord, Partition, SourceRecord

# What a value may be given as: a JSON object (encoded as JSON), raw bytes (passed as they are,
# malformed or not), text (encoded as UTF-8), or None (a record without a value).
Value = Mapping[str, Any] | bytes | str | None


@dataclass(frozen=True)
class Event:
    """One input record as a test gives it. ``timestamp``: milliseconds since the epoch (default:
    when the ``EventSource`` was made); ``topic``: default the source's."""

    value: Value
    key: str | bytes | None = None
    timestamp: int | None = None
    partition: int = 0
    topic: str | None = None
    headers: Sequence[tuple[str, bytes]] = ()


def _bytes(value: Value) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value, separators=(",", ":")).encode()


class EventSource:
    """A bounded ``streams.source.Source`` of given events (an ``Event``, or just a value).

    Offsets count from 0 in each (topic, partition), in the order given. ``per_fetch``: at most
    this many records per ``next_batch`` (default: as many as the driver asks for), to make the
    driver see the events arrive over several fetches.
    """

    def __init__(
        self,
        events: Iterable[Event | Value],
        *,
        topic: str = "events",
        now_ms: int | None = None,
        per_fetch: int | None = None,
    ) -> None:
        stamp = time.time_ns() // 1_000_000 if now_ms is None else now_ms
        offsets: dict[tuple[str, int], int] = {}
        self.records: list[InputRecord] = []
        for given in events:
            event = given if isinstance(given, Event) else Event(given)
            where = (event.topic or topic, event.partition)
            offset = offsets[where] = offsets.get(where, -1) + 1
            self.records.append(
                InputRecord(
                    topic=where[0],
                    partition=where[1],
                    offset=offset,
                    timestamp=stamp if event.timestamp is None else event.timestamp,
                    key=_bytes(event.key),
                    value=_bytes(event.value),
                    headers=tuple(event.headers),
                )
            )
        if per_fetch is not None and per_fetch < 1:
            raise ValueError("per_fetch must be at least 1")
        self.per_fetch = per_fetch
        self.handed_out = 0

    @property
    def exhausted(self) -> bool:
        return self.handed_out == len(self.records)

    async def next_batch(self, max_records: int) -> list[SourceRecord]:
        n = min(max_records, self.per_fetch or max_records, len(self.records) - self.handed_out)
        batch: list[SourceRecord] = list(self.records[self.handed_out : self.handed_out + n])
        self.handed_out += n
        await asyncio.sleep(0)  # a fetch lets the loop run, as a consumer's does
        return batch

    async def keep_alive(self) -> list[SourceRecord]:
        await asyncio.sleep(0)
        return []

    def backlog(self) -> int:
        return len(self.records) - self.handed_out

    def lag_by_partition(self) -> dict[Partition, int]:
        lag: dict[Partition, int] = {}
        for record in self.records[self.handed_out :]:
            where = Partition(record.topic, record.partition)
            lag[where] = lag.get(where, 0) + 1
        return lag


class CollectingSink:
    """A ``streams.flow.delivery.Sink`` that keeps what it is sent, in order, and acknowledges it at once."""

    def __init__(self) -> None:
        self.records: list[OutputRecord] = []

    async def send(self, records: Sequence[OutputRecord]) -> Awaitable[None]:
        self.records.extend(records)
        acknowledged = asyncio.get_running_loop().create_future()
        acknowledged.set_result(None)
        return acknowledged

    def on(self, topic: str) -> list[OutputRecord]:
        """The outputs sent to ``topic``, in the order sent."""
        return [r for r in self.records if r.topic == topic]

    def decoded(self, topic: str) -> list[dict[str, Any]]:
        """The outputs sent to ``topic``, each value parsed as JSON (predictions, dead letters)."""
        return [json.loads(r.value) for r in self.on(topic)]


class CountingProgress:
    """A ``streams.source.Progress`` that counts acknowledged events; its commits make nothing durable."""

    needs_quiet = False

    def __init__(self) -> None:
        self.events = self.scored = self.dead_lettered = self.commits = 0
        self.finished = False  # the driver's final commit came

    def acknowledged(self, records: Sequence[SourceRecord], scored: int, dead_lettered: int) -> None:
        self.events += len(records)
        self.scored += scored
        self.dead_lettered += dead_lettered

    async def wait_until_due(self) -> None:
        await asyncio.Event().wait()  # never due: the driver commits once, when it finishes

    async def commit(self, *, final: bool = False) -> None:
        self.commits += 1
        self.finished = self.finished or final
