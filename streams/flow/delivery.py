"""Delivery: the one owner of sending outputs, re-sending them, and what the destination refuses.

The driver hands ``Delivery`` each scored batch's outputs (``send``) and, in batch order, waits
for them to be settled (``settle``): acknowledged by the destination; or, for records it refuses
for good, replaced by minimal dead letters (what even that cannot replace is logged with its
source position and counted as lost); or, while the destination is unreachable
(``DeliveryFailed``), sent again with back-off until it takes them. Any other error is fatal: it
raises from ``settle`` and the driver stops, so nothing is made durable past those outputs
(a restart scores their events again).

Shared by every stage that produces (the scoring pipeline, the re-keying stage), so an output
is handled one way wherever it comes from; nobody else sends, re-sends or awaits a sink.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import streams.flow.backoff as backoff
from streams.codecs.dead_letters import replacement_for_refused
from streams.errors import DeliveryFailed, OutputRefused
from streams.records import OutputRecord

log = logging.getLogger(__name__)

# What stands in for an output the destination refused for good: (output, reason, now ms) -> dead letter.
Replacement = Callable[[OutputRecord, str, int], OutputRecord]


class Sink(Protocol):
    """Where outputs go: the destination's adapter (Kafka, files, a test's list)."""

    async def send(self, records: Sequence[OutputRecord]) -> Awaitable[None]:
        """Hand over ``records`` (in order) and return an awaitable that completes when every
        one of them is durably acknowledged, or raises if any could not be delivered:
        ``OutputRefused`` for records the destination will never take (all the others are
        then acknowledged), ``DeliveryFailed`` for a failure worth retrying, anything else to stop."""
        ...


@dataclass
class Shipment:
    """One batch's outputs as handed to the sink, until ``Delivery.settle`` settles them."""

    outputs: Sequence[OutputRecord]
    # The sink's acknowledgement, or why the sink could not even take the outputs (retried).
    acknowledged: Awaitable[None] | None
    failed: DeliveryFailed | None


class Delivery:
    """Sends a stage's outputs to ``sink``; refused ones become dead letters on ``dead_letter_topic``."""

    def __init__(
        self,
        sink: Sink,
        *,
        pipeline: str,
        dead_letter_topic: str,
        max_copy_bytes: int,
        clock_ms: Callable[[], int],
        replacement: Replacement | None = None,
        label: str | None = None,
    ) -> None:
        self.sink = sink
        # Who the log lines name: the pipeline, or its re-keying stage.
        self.label = label or pipeline
        self.replacement = replacement or self.minimal_dead_letter
        self.pipeline = pipeline
        self.dead_letter_topic = dead_letter_topic
        self.max_copy_bytes = max_copy_bytes
        self.clock_ms = clock_ms
        # Outputs refused by the destination whose minimal dead letter was refused too:
        # logged with their source position, and counted here for the metrics.
        self.lost_outputs = 0
        # Running estimate of send -> acknowledged, which the batcher adds to a batch's cost.
        self.ack_ms = 5.0

    def minimal_dead_letter(self, refused: OutputRecord, reason: str, now_ms: int) -> OutputRecord:
        """``streams.codecs.dead_letters.replacement_for_refused``: for outputs that name their source."""
        return replacement_for_refused(
            refused,
            reason,
            topic=self.dead_letter_topic,
            pipeline=self.pipeline,
            now_ms=now_ms,
            max_copy_bytes=self.max_copy_bytes,
        )

    async def send(self, outputs: Sequence[OutputRecord]) -> Shipment:
        """Hand ``outputs`` to the sink without waiting for their acknowledgement. A destination
        that cannot take them now is not an error here: ``settle`` sends them again."""
        try:
            return Shipment(outputs, await self.sink.send(outputs), None)
        except DeliveryFailed as exc:
            return Shipment(outputs, None, exc)

    async def settle(self, shipment: Shipment, *, events: int | None = None) -> None:
        """Until ``shipment``'s outputs are acknowledged or replaced: re-sent with back-off while
        the destination is unreachable. ``events``: how many input events they answer (for the log).

        The wait is timed from here, when the caller reaches this batch (batches in flight are
        settled in order), not from the send: with batches in flight, what the batcher must add
        to a batch's cost is how long the acknowledgement keeps it waiting beyond the one before.
        """
        waiting = time.perf_counter()
        attempts = backoff.retry_delays()
        attempt = 0
        while True:
            try:
                if shipment.acknowledged is None:
                    raise shipment.failed or DeliveryFailed("not sent")
                await self._acknowledged_or_replaced(shipment.acknowledged)
            except DeliveryFailed as exc:
                attempt, delay = attempt + 1, next(attempts)
                log.warning(
                    "pipeline %s: outputs of %d events not acknowledged (%r); sending them again in %.1fs (attempt %d)",
                    self.label,
                    len(shipment.outputs) if events is None else events,
                    exc,
                    delay,
                    attempt,
                )
                await asyncio.sleep(delay)
                shipment = await self.send(shipment.outputs)
                continue
            if attempt:
                log.info("pipeline %s: outputs delivered after %d attempt(s)", self.label, attempt)
            else:
                took_ms = (time.perf_counter() - waiting) * 1000
                self.ack_ms += 0.2 * (took_ms - self.ack_ms)
            return

    async def deliver(self, outputs: Sequence[OutputRecord]) -> None:
        """Send ``outputs`` and wait until they are settled: for callers that score one batch at a time."""
        await self.settle(await self.send(outputs))

    async def _acknowledged_or_replaced(self, acknowledged: Awaitable[None]) -> None:
        try:
            await acknowledged
        except OutputRefused as refused:
            await self._replace(refused)

    async def _replace(self, refused: OutputRefused) -> None:
        now = self.clock_ms()
        replacements = [self.replacement(record, reason, now) for record, reason in refused.refused]
        log.warning(
            "pipeline %s: the broker refused %d output(s) for good (%s); sending minimal dead letters instead",
            self.pipeline,
            len(replacements),
            refused.refused[0][1],
        )
        try:
            await (await self.sink.send(replacements))
        except OutputRefused as again:
            for record, reason in again.refused:
                self.lost_outputs += 1
                log.error(
                    "pipeline %s: LOST OUTPUT: the broker refused even the minimal dead letter for %s: %s",
                    self.pipeline,
                    record.value[:300].decode("utf-8", "replace"),
                    reason,
                )
