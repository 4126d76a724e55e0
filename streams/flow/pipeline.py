"""The one code path: decode -> infer -> encode -> emit, for the live worker and the backfill alike.

The pipeline knows nothing of Kafka consumers or Faust. ``score`` turns a batch of
records into output records (predictions and dead letters); its ``delivery`` sends them and
settles their acknowledgement. Whoever feeds the pipeline commits a batch's offsets only
after that, which is what makes delivery at-least-once; splitting the two lets the next batch
be scored while this one's outputs are still in flight.

An event past its latency budget, where the configuration dead-letters those, leaves the flow
in one place, ``expire``: after its key's state counted it (it happened all the same) and
before the model. A pipeline without per-key state does not even decode it (``decode``'s
``skip``): under a backlog, the very case the option is for, that work is saved.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from models.protocol import Runner
from streams.codecs.avro_outputs import AvroOutputs
from streams.codecs.codec import Decoded, EventSchema, Reject, decode, encode_predictions
from streams.codecs.dead_letters import DEFAULT_MAX_COPY_BYTES, encode_dead_letters
from streams.flow.delivery import Delivery, Sink
from streams.flow.isolation import Failure, non_finite_rows, without_failed_rows
from streams.flow.roles import Roles, Scoring
from streams.flow.scored_groups import ScoredGroup, ScoredGroupWatcher
from streams.flow.shadow import Shadow
from streams.flow.stateful_inputs import StatefulInputs
from streams.records import HeaderPolicy, OutputRecord, SourceRecord, header_picker

log = logging.getLogger(__name__)


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class BatchOutcome:
    events: int
    scored: int
    dead_lettered: int
    infer_seconds: float
    errors: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Scored:
    outputs: list[OutputRecord]
    outcome: BatchOutcome


class Stage(Protocol):
    """What the driver runs over a source: the scoring ``Pipeline``, or the ``Rekeying`` that
    feeds a pipeline keyed by an event field. ``decode`` and ``featurize`` run on the event loop
    in batch order, ``finish`` may run beside the next batch's ``decode``."""

    name: str
    # Where the stage's outputs go: the driver hands them over and settles them through it.
    delivery: Delivery

    def decode(self, records: Sequence[SourceRecord], skip: Sequence[int] = ()) -> Decoded:
        """What the stage needs of each record, and a reason for each it cannot take; the records
        at batch indices ``skip`` (events to expire) may be left out, neither decoded nor rejected."""
        ...

    def featurize(self, records: Sequence[SourceRecord], decoded: Decoded) -> Decoded: ...

    async def finish(self, records: Sequence[SourceRecord], decoded: Decoded) -> Scored: ...


EXPIRED = "the event missed its latency budget before it was scored"


def expire(decoded: Decoded, expired: Sequence[int]) -> Decoded:
    """``decoded`` without the events at batch indices ``expired``, each dead-lettered as
    ``Expired``: where a late event leaves the flow, once its key's state has counted it. An
    expired event already rejected (a stateful pipeline decodes late events too) keeps its reason;
    one that was skipped, neither decoded nor rejected, is rejected here."""
    if not len(expired):
        return decoded
    late = np.isin(decoded.rows, np.asarray(expired))
    accounted = set(decoded.rows.tolist()) | {r.index for r in decoded.rejects}
    rejects = [Reject(int(row), "Expired", EXPIRED) for row in decoded.rows[late].tolist()]
    rejects += [Reject(i, "Expired", EXPIRED) for i in expired if i not in accounted]
    return decoded.narrowed(~late, rejects) if rejects else decoded


@dataclass(frozen=True)
class PipelineTopics:
    output: str
    dead_letter: str
    avro: AvroOutputs | None = None  # outputs in Avro, by the schema registered for ``output`` (else JSON)


class Pipeline:
    def __init__(
        self,
        *,
        name: str,
        schema: EventSchema,
        runner: Runner | Roles,
        sink: Sink,
        topics: PipelineTopics,
        clock_ms: Callable[[], int] = wall_clock_ms,
        key_by_position: bool = False,
        dead_letter_copy_bytes: int = DEFAULT_MAX_COPY_BYTES,
        headers: HeaderPolicy = "all",
        stateful: StatefulInputs | None = None,
        emit_features: bool = False,
        shadows: Sequence[Shadow] = (),
        watchers: Sequence[ScoredGroupWatcher] = (),  # offered each scored group after the shadows
    ) -> None:
        self.name = name
        self.schema = schema
        # The models that serve (champion, canary, fallback); a bare runner is a champion alone.
        self.roles = runner if isinstance(runner, Roles) else Roles(runner, pipeline=name)
        self.shadows = list(shadows)
        self.watchers = list(watchers)
        self.delivery = Delivery(
            sink,
            pipeline=name,
            dead_letter_topic=topics.dead_letter,
            max_copy_bytes=dead_letter_copy_bytes,
            clock_ms=clock_ms,
        )
        self.topics = topics
        self.clock_ms = clock_ms
        self.key_by_position = key_by_position
        self.dead_letter_copy_bytes = dead_letter_copy_bytes
        self.headers_of = header_picker(headers)
        self.stateful = stateful
        self.emit_features = emit_features and stateful is not None

    @property
    def runner(self) -> Runner:
        """The champion: the model that serves every event the canary and the fallback do not."""
        return self.roles.champion

    def use_runner(self, runner: Runner) -> None:
        """Score with ``runner`` from the next batch on (the caller makes sure no batch is being scored)."""
        self.roles.use_champion(runner)

    def decode(self, records: Sequence[SourceRecord], skip: Sequence[int] = ()) -> Decoded:
        """The model's inputs for the valid records, and a reason for each of the others. Records
        at ``skip`` (to expire) are not decoded, unless per-key state must count them first."""
        return decode(records, self.schema, skip if self.stateful is None else ())

    def featurize(self, records: Sequence[SourceRecord], decoded: Decoded) -> Decoded:
        """The model's inputs with the per-key features of a stateful pipeline (``decoded`` as it is
        otherwise). ``finish`` writes the keys' new state once the batch is scored: featurize the
        next batch only after that (a batch the model could not score leaves the state as it was)."""
        if self.stateful is None:
            return decoded
        return self.stateful.apply(records, decoded)

    async def score(self, records: Sequence[SourceRecord], expired: Sequence[int] = ()) -> Scored:
        """Predictions for the valid records, dead letters for the rest (and for ``expired``)."""
        decoded = self.decode(records, skip=expired)
        return await self.finish(records, expire(self.featurize(records, decoded), expired))

    async def finish(self, records: Sequence[SourceRecord], decoded: Decoded) -> Scored:
        """Run the models on decoded inputs and encode the outputs.

        Split from ``decode`` so a caller can decode the next batch while this one is scored.
        Each event is scored by one primary model (``streams.flow.roles``: champion, canary or
        fallback) and offered to the shadows. Events a model raises on are dead-lettered
        (``ModelError``) and the rest scored; a champion that fails on everything, with no
        fallback, raises ``ModelUnavailableError`` (or ``ModelTimeout``) and nothing is emitted.
        """
        outputs: list[OutputRecord] = []
        rejects = list(decoded.rejects)
        scored, infer_seconds = 0, 0.0
        if len(decoded):
            started = time.perf_counter()
            groups = await self.roles.score(records, decoded)
            infer_seconds = time.perf_counter() - started
            if self.stateful is not None:
                self.stateful.commit(decoded)  # scored: the batch's events are in their keys' state now
            for group in groups:
                part, predictions = await self._checked(records, group, rejects)
                scored += len(part)
                outputs += encode_predictions(
                    records,
                    part,
                    predictions,
                    topic=self.topics.output,
                    model_name=group.name,
                    model_version=group.version,
                    now_ms=self.clock_ms(),
                    key_by_position=self.key_by_position,
                    headers_of=self.headers_of,
                    features=part.features if self.emit_features else None,
                    extra=group.output_fields(),
                    avro=self.topics.avro,
                )
        errors: dict[str, int] = {}
        if rejects:
            rejects.sort(key=lambda r: r.index)
            for reject in rejects:
                errors[reject.error] = errors.get(reject.error, 0) + 1
            first = rejects[0]
            bad = records[first.index]
            log.warning(
                "pipeline %s: %d event(s) to the dead-letter topic %s, e.g. %s[%d]@%d: %s",
                self.name,
                len(rejects),
                self.topics.dead_letter,
                bad.topic,
                bad.partition,
                bad.offset,
                first.message,
            )
            outputs += encode_dead_letters(
                records,
                rejects,
                topic=self.topics.dead_letter,
                pipeline=self.name,
                now_ms=self.clock_ms(),
                max_copy_bytes=self.dead_letter_copy_bytes,
                headers_of=self.headers_of,
            )
        return Scored(outputs, BatchOutcome(len(records), scored, len(rejects), infer_seconds, errors))

    async def _checked(
        self, records: Sequence[SourceRecord], group: Scoring, rejects: list[Reject]
    ) -> tuple[Decoded, np.ndarray]:
        """``group``'s events with a finite prediction, and those; the others join ``rejects``. The
        keys remember their predictions, and the shadows are offered the batch."""
        part, isolated = group.decoded, group.isolated
        predictions, failures, kept = isolated.predictions, list(isolated.failures), isolated.kept
        non_finite = non_finite_rows(predictions)
        if non_finite.size:
            # A null score downstream is a silent failure: say which events and why instead.
            failures += [
                Failure(int(kept[row]), "the model returned NaN or infinity for this event")
                for row in non_finite.tolist()
            ]
            predictions, kept = np.delete(predictions, non_finite, axis=0), np.delete(kept, non_finite)
        if self.stateful is not None:
            self.stateful.remember(part, kept, predictions, group.version)
        if failures:
            part = without_failed_rows(part, kept, failures)
            rejects += part.rejects
        scored = ScoredGroup(records, part.rows, part.ids, part.inputs, predictions, group.name, group.version)
        for watcher in (*self.shadows, *self.watchers):
            await watcher.offer(scored)
        return part, predictions

    async def process(self, records: Sequence[SourceRecord]) -> BatchOutcome:
        """Score one batch, send it, and wait until every output is settled."""
        scored = await self.score(records)
        await self.delivery.deliver(scored.outputs)
        return scored.outcome
