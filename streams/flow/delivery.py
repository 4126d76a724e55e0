"""Handing outputs to the sink so that none is lost: what the destination refuses for good is
replaced by a minimal dead letter, and what even that cannot replace is logged and counted.

Shared by every stage that produces (the scoring pipeline, the re-keying stage), so a refused
output is handled one way wherever it comes from.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from streams.codecs.dead_letters import replacement_for_refused
from streams.errors import OutputRefused
from streams.records import OutputRecord

log = logging.getLogger(__name__)

# What stands in for an output the destination refused for good: (output, reason, now ms) -> dead letter.
Replacement = Callable[[OutputRecord, str, int], OutputRecord]


class Sink(Protocol):
    """Where outputs go."""

    async def send(self, records: Sequence[OutputRecord]) -> Awaitable[None]:
        """Hand over ``records`` (in order) and return an awaitable that completes when every
        one of them is durably acknowledged, or raises if any could not be delivered:
        ``OutputRefused`` for records the destination will never take (all the others are
        then acknowledged), ``DeliveryFailed`` for a failure worth retrying (the driver sends
        them again), anything else to stop."""
        ...


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
    ) -> None:
        self.sink = sink
        self.replacement = replacement or self.minimal_dead_letter
        self.pipeline = pipeline
        self.dead_letter_topic = dead_letter_topic
        self.max_copy_bytes = max_copy_bytes
        self.clock_ms = clock_ms
        # Outputs refused by the destination whose minimal dead letter was refused too:
        # logged with their source position, and counted here for the metrics.
        self.lost_outputs = 0

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

    async def deliver(self, outputs: Sequence[OutputRecord]) -> Awaitable[None]:
        """Send ``outputs``; the result completes once each is acknowledged or, if the destination
        refused it for good, replaced by a minimal dead letter (or, if even that is refused,
        logged with its source position and counted). Other failures raise, for a retry."""
        return self._settled(await self.sink.send(outputs))

    async def _settled(self, acknowledged: Awaitable[None]) -> None:
        try:
            await acknowledged
        except OutputRefused as refused:
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
