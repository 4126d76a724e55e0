"""A live shadow's records, written by the shadow's own process (``models.process_runner``'s ``aside``).

Encoding a shadow's records and handing them to a producer is Python work per record, as much
as the champion's own outputs cost: on the worker's event loop it took the champion's p50 from
7 to 22 ms at 40% load (``bench/results/shadow.md``). Here it runs in the shadow's process, on
a producer of its own built from the same config (its connection, security and limits, as the
worker's), on an event loop thread of its own; the worker only sends each batch over, with the
source positions, ids and served scores the records carry.

Records are sent without waiting for the next batch: at most ``MAX_PENDING`` batches wait for
their acknowledgement, then the process waits for the oldest (the shadow falls behind and the
worker skips batches, counted). What is lost (refused, or undeliverable) is told to the worker
with the next batch's predictions. Told to stop, it waits up to ``LEAVE_S`` for what it sent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Coroutine
from typing import Any, TypeVar

import numpy as np

from app.build import build_kafka_sink
from app.config import Config, PipelineConfig
from app.kafka_clients import connection
from streams.flow.shadow_records import ShadowRecords, checked

log = logging.getLogger(__name__)

T = TypeVar("T")

# A batch's records in one send: nothing else shares this process's loop.
WHOLE_BATCH = 1 << 30
# Batches sent and not yet acknowledged before the next waits for the oldest.
MAX_PENDING = 8
# How long starting the producer, and leaving, may take.
START_S = 60.0
LEAVE_S = 8.0


class ShadowWriter:
    """Built in the shadow's process (``functools.partial(ShadowWriter, config, pipeline)`` is what
    crosses to it), from the model's name and version, which its records carry."""

    def __init__(self, config: Config, p: PipelineConfig, name: str, version: str) -> None:
        self.version = version
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sluice-shadow-records", daemon=True)
        self._thread.start()
        try:
            topic = p.roles.shadow_topic
            self._sink = self._wait(
                # A backfill's producer settings: evidence can wait a few milliseconds, and
                # larger produce requests cost the broker (often the worker's host) less CPU.
                build_kafka_sink(connection(config), [topic], "backfill", client_id=f"sluice-{p.name}-shadow-{name}"),
                START_S,
            )
            self._wait(self._sink.start(), START_S)
        except BaseException:
            self._end_loop()
            raise
        self._records = ShadowRecords(self._sink, topic=topic, pipeline=p.name, name=name, slice_rows=WHOLE_BATCH)
        self._pending: deque[concurrent.futures.Future[None]] = deque()
        self._told = 0

    def __call__(self, predictions: np.ndarray, extra: Any) -> int:
        """Send the batch's records; how many records were lost since the last call."""
        positions, ids, served, served_name, served_version = extra
        scores = checked(predictions, len(positions))
        while self._pending and self._pending[0].done():
            self._pending.popleft()
        if len(self._pending) >= MAX_PENDING:
            with contextlib.suppress(Exception):  # its losses are counted by ShadowRecords
                self._pending.popleft().result()
        rows = np.arange(len(positions))
        record = self._records.record(
            positions,
            rows,
            ids,
            scores,
            np.asarray(served),
            version=self.version,
            served_name=served_name,
            served_version=served_version,
        )
        self._pending.append(asyncio.run_coroutine_threadsafe(record, self._loop))
        lost = self._records.lost_outputs  # counted on the loop's thread; an int read is whole
        new, self._told = lost - self._told, lost
        return new

    def close(self) -> None:
        """Wait up to ``LEAVE_S`` for the records sent, then stop the producer and the loop."""
        _, waiting = concurrent.futures.wait(self._pending, timeout=LEAVE_S)
        if waiting:
            log.warning(
                "shadow %s: %d batch(es) of records still unacknowledged when it stopped",
                self._records.name,
                len(waiting),
            )
        with contextlib.suppress(Exception):
            self._wait(self._sink.stop(), LEAVE_S)
        self._end_loop()

    def _wait(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def _end_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(LEAVE_S)
