"""A shadow's records on the shadow topic: encoded and sent a slice at a time, losses counted.

Used where the shadow's model runs: on the worker's event loop for a shadow on a thread (and a
backfill's candidates), and in the shadow's own process for one in a process of its own
(``app.shadow_process``), which then costs the worker's event loop nothing per record.

They are evidence, not decisions: sent at least once while the worker runs, each refused or
undelivered one counted in ``lost_outputs`` (and logged, at most every ``LOG_EVERY_S``), never
a dead letter: its event was served, and a dead letter would say that it was not.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import operator
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from streams.codecs.shadow_encode import encode_shadow
from streams.errors import OutputRefused
from streams.flow.delivery import Delivery, Sink
from streams.records import OutputRecord, SourceRecord

log = logging.getLogger(__name__)

# At most one log line per this many seconds about a shadow's lost records.
LOG_EVERY_S = 30.0
# Encoded and sent this many at a time, the event loop let go between (a gathered batch is as
# large as the champion's largest, and the champion's batches must not wait behind all of it).
SLICE_ROWS = 128


class Position(NamedTuple):
    """What a shadow record says of its event's source: a consumed record without its value (what
    crosses to a shadow's process)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()


# A record's position as a plain tuple, read in C: what crosses the pipe to a shadow's process.
# (A list of NamedTuples pickles at ~1 µs per row, on the worker's GIL; plain tuples ~5x faster.)
_POSITION_FIELDS = operator.attrgetter("topic", "partition", "offset", "timestamp", "key")


def positions(records: Sequence[SourceRecord], rows: np.ndarray) -> list[tuple[Any, ...]]:
    """The positions of ``records`` at ``rows`` as plain tuples (``as_positions`` makes them records)."""
    return list(map(_POSITION_FIELDS, map(records.__getitem__, rows.tolist())))


def as_positions(rows: Sequence[tuple[Any, ...]]) -> list[Position]:
    return list(itertools.starmap(Position, rows))


def checked(predictions: Any, events: int) -> np.ndarray:
    """``predictions`` as one number (or row of numbers) per event; ``ValueError`` if they are not."""
    out = np.asarray(predictions)
    if out.ndim == 0 or len(out) != events:
        raise ValueError(f"{out.size} prediction(s) for {events} events")
    if out.dtype.kind not in "biuf" or out.size < len(out):
        raise ValueError(f"no number per event: {out.dtype} predictions of shape {out.shape}")
    return out


class ShadowRecords:
    """Writes one shadow's records to ``topic`` through ``sink``."""

    def __init__(
        self,
        sink: Sink,
        *,
        topic: str,
        pipeline: str,
        name: str,
        key_by_position: bool = False,
        slice_rows: int = SLICE_ROWS,
    ) -> None:
        self.topic = topic
        # On a loop that serves the champion too, a slice at a time; in a process of its own, a
        # whole batch per send (fewer, larger produce requests: less of the broker's CPU too).
        self.slice_rows = max(1, slice_rows)
        self.name = name
        self.key_by_position = key_by_position
        # Sent again while the destination is away, like any output; one refused for good is
        # counted, never replaced by a dead letter (so no dead-letter topic is named).
        self._delivery = Delivery(
            _CountingRefusals(sink, self._refused),
            pipeline=pipeline,
            dead_letter_topic="",
            max_copy_bytes=0,
            clock_ms=_never_called,
            label=f"{pipeline} (shadow {name})",
        )
        self.lost_outputs = 0
        self._last_log = -LOG_EVERY_S

    async def record(
        self,
        records: Sequence[SourceRecord],
        rows: np.ndarray,
        ids: Sequence[Any],
        predictions: np.ndarray,
        served: np.ndarray,
        *,
        version: str,
        served_name: str,
        served_version: str,
    ) -> None:
        """Send one record per event of ``rows`` (indices into ``records``) and wait until each is
        acknowledged or counted lost; never raises for the records' sake."""
        shipments = []
        for start in range(0, len(rows), self.slice_rows):
            part = slice(start, start + self.slice_rows)
            outputs = encode_shadow(
                records,
                rows[part],
                ids[part],
                predictions[part],
                served[part],
                topic=self.topic,
                name=self.name,
                version=version,
                served_name=served_name,
                served_version=served_version,
                key_by_position=self.key_by_position,
            )
            try:
                shipments.append(await self._delivery.send(outputs))
            except Exception as exc:  # noqa: BLE001 - evidence, not decisions: see the module's docstring
                self._lost(len(outputs), exc)
            await asyncio.sleep(0)
        for shipment in shipments:
            try:
                await self._delivery.settle(shipment)
            except Exception as exc:  # noqa: BLE001 - as above
                self._lost(len(shipment.outputs), exc)

    def _lost(self, count: int, exc: Exception) -> None:
        self.lost_outputs += count
        self.log_now("shadow %s: %d output(s) not delivered to %s: %s", self.name, count, self.topic, exc)

    def _refused(self, refused: Sequence[tuple[OutputRecord, str]]) -> None:
        self.lost_outputs += len(refused)
        self.log_now(
            "shadow %s: %d output(s) refused for good by the destination (%s), not sent again",
            self.name,
            len(refused),
            refused[0][1],
        )

    def log_now(self, message: str, *args: object) -> None:
        """A warning about this shadow, unless one was logged in the last ``LOG_EVERY_S`` (its
        ``Shadow`` logs its failures and skips here too: one shadow, one pace)."""
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            log.warning(message, *args)


def _never_called() -> int:
    raise AssertionError("a shadow's delivery never makes a dead letter: its refusals are counted as lost")


class _CountingRefusals:
    """A shadow's sink: what ``sink`` refuses for good is handed to ``on_refused`` instead of raising."""

    def __init__(self, sink: Sink, on_refused: Callable[[Sequence[tuple[OutputRecord, str]]], None]) -> None:
        self.sink = sink
        self.on_refused = on_refused

    async def send(self, records: Sequence[OutputRecord]) -> Awaitable[None]:
        return self._counted(await self.sink.send(records))

    async def _counted(self, acknowledged: Awaitable[None]) -> None:
        try:
            await acknowledged
        except OutputRefused as refused:
            self.on_refused(refused.refused)
