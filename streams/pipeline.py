"""The one code path: decode -> infer -> encode -> emit, for the live worker and the backfill alike.

The pipeline knows nothing of Kafka consumers or Faust: it is handed a batch of
records and returns once every output for that batch (predictions and dead letters)
has been acknowledged by its sink. Whoever feeds it commits the batch's offsets only
after that, which is what makes delivery at-least-once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from models.protocol import Runner
from streams.codec import EventSchema, decode, encode_predictions
from streams.dead_letters import encode_dead_letters
from streams.records import OutputRecord, SourceRecord

log = logging.getLogger(__name__)


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class Sink(Protocol):
    """Where outputs go. ``send`` returns only when every record is durably acknowledged."""

    async def send(self, records: Sequence[OutputRecord]) -> None: ...


@dataclass(frozen=True)
class BatchOutcome:
    events: int
    scored: int
    dead_lettered: int
    infer_seconds: float


@dataclass(frozen=True)
class PipelineTopics:
    output: str
    dead_letter: str


class Pipeline:
    def __init__(
        self,
        *,
        name: str,
        schema: EventSchema,
        runner: Runner,
        sink: Sink,
        topics: PipelineTopics,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.name = name
        self.schema = schema
        self.runner = runner
        self.sink = sink
        self.topics = topics
        self.clock_ms = clock_ms

    async def process(self, records: Sequence[SourceRecord]) -> BatchOutcome:
        """Score one batch and emit its outputs; raises if they could not all be delivered."""
        decoded = decode(records, self.schema)
        outputs: list[OutputRecord] = []
        infer_seconds = 0.0
        if len(decoded):
            started = time.perf_counter()
            predictions = await self.runner.predict(decoded.inputs)
            infer_seconds = time.perf_counter() - started
            outputs = encode_predictions(
                records,
                decoded,
                predictions,
                topic=self.topics.output,
                model_name=self.runner.name,
                model_version=self.runner.version,
                now_ms=self.clock_ms(),
            )
        if decoded.rejects:
            for reject in decoded.rejects[:3]:
                bad = records[reject.index]
                log.warning(
                    "pipeline %s: dead-lettering %s[%d]@%d: %s",
                    self.name,
                    bad.topic,
                    bad.partition,
                    bad.offset,
                    reject.message,
                )
            outputs += encode_dead_letters(
                records,
                decoded.rejects,
                topic=self.topics.dead_letter,
                pipeline=self.name,
                now_ms=self.clock_ms(),
            )
        await self.sink.send(outputs)
        return BatchOutcome(
            events=len(records),
            scored=len(decoded),
            dead_lettered=len(decoded.rejects),
            infer_seconds=infer_seconds,
        )
