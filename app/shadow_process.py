"""A live shadow's records, written by the shadow's own process (``models.process_runner``'s ``aside``).

Encoding a shadow's records and handing them to a producer is Python work per record, as much
as the champion's own outputs cost: on the worker's event loop it took the champion's p50 from
7 to 22 ms at 40% load (``bench/results/shadow.md``). Here it runs in the shadow's process, on
a producer of its own built from the same config (its connection, security and limits, as the
worker's), on an event loop thread of its own; the worker only sends each batch over, with the
source positions, ids and served scores the records carry.

Records are sent without waiting for their acknowledgement: with ``MAX_PENDING`` batches still
unacknowledged (the broker behind or away), a batch's records are not sent at all, and counted
lost; the model never waits for the broker. What is lost (refused, undeliverable, or not sent)
is told to the worker with the next batch's predictions; what is lost after the last batch (at
a stop, or when the process is ended) is logged here, not counted by the worker. Told to stop,
it waits up to ``LEAVE_S`` in all for what it sent.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any, TypeVar

import numpy as np

from app.build import build_kafka_sink
from app.config import Config, PipelineConfig
from app.kafka_clients import connection
from streams.flow.shadow_records import ShadowRecords, as_positions, checked

log = logging.getLogger(__name__)

T = TypeVar("T")

# A batch's records in one send: nothing else shares this process's loop.
WHOLE_BATCH = 1 << 30
# Batches sent and not yet acknowledged before the next waits for the oldest.
MAX_PENDING = 8
# How long starting the producer may take; how long leaving may take in all (less than the
# worker gives the process to leave: models.process_runner.LEAVE_S).
START_S = 60.0
LEAVE_S = 6.0


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
        self._unsent = 0  # records never handed to the producer (counted here, not by ShadowRecords)
        self._failed = 0  # records of sends that raised (counted on the loop's thread)
        self._told = 0

    def __call__(self, predictions: np.ndarray, extra: Any) -> int:
        """Hand the batch's records to the producer, never waiting for the broker (the worker times
        this call as the model's); how many records were lost since the last call."""
        rows, ids, served, served_name, served_version = extra
        positions = as_positions(rows)
        scores = checked(predictions, len(positions))
        while self._pending and self._pending[0].done():
            self._pending.popleft()
        if len(self._pending) >= MAX_PENDING:
            # The broker is behind or away: this batch's records are lost evidence, counted, and
            # the model goes on scoring (waiting here would look like a hung model to the worker).
            self._unsent += len(positions)
            log.warning(
                "shadow %s: %d batches of records still unacknowledged; %d record(s) of this batch not sent",
                self._records.name,
                len(self._pending),
                len(positions),
            )
        else:
            record = self._records.record(
                positions,
                np.arange(len(positions)),
                ids,
                scores,
                np.asarray(served),
                version=self.version,
                served_name=served_name,
                served_version=served_version,
            )
            sent = asyncio.run_coroutine_threadsafe(record, self._loop)
            sent.add_done_callback(functools.partial(self._count_failure, len(positions)))
            self._pending.append(sent)
        # Each counter has one writer (this thread, or the loop's): read whole from the other.
        lost = self._records.lost_outputs + self._failed + self._unsent
        new, self._told = lost - self._told, lost
        return new

    def _count_failure(self, records: int, sent: concurrent.futures.Future[None]) -> None:
        # ``record`` counts what the broker refuses or never takes; anything else it raised
        # (an encoding error) left its records unsent.
        if not sent.cancelled() and sent.exception() is not None:
            self._failed += records
            log.warning("shadow %s: %d record(s) not sent: %r", self._records.name, records, sent.exception())

    def close(self) -> None:
        """Within ``LEAVE_S`` in all: wait for the records sent, then stop the producer and the loop."""
        deadline = time.monotonic() + LEAVE_S
        _, waiting = concurrent.futures.wait(self._pending, timeout=LEAVE_S / 2)
        if waiting:
            log.warning(
                "shadow %s: %d batch(es) of records still unacknowledged when it stopped",
                self._records.name,
                len(waiting),
            )
        with contextlib.suppress(Exception):
            self._wait(self._sink.stop(), max(0.1, deadline - time.monotonic()))
        self._end_loop(max(0.1, deadline - time.monotonic()))

    def _wait(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)

    def _end_loop(self, within_s: float = LEAVE_S) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(within_s)
