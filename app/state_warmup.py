"""Rebuild per-key state from a pipeline's input, emitting nothing: what a stateful pipeline does
before scoring from a point past the beginning of its partitions without the state of the
events before it (a backfill from a timestamp or resumed; a live worker whose changelog holds
nothing for a partition it resumes mid-stream, because state was added to a running pipeline
or the changelog was deleted). Its first events then get the features a run from offset zero
gives them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from app.build import FETCH_BYTES_PER_PARTITION
from app.kafka_clients import Connection, make_consumer
from streams.backfill.replay_plan import ReplayPlan
from streams.backfill.run import warm_state
from streams.flow.pipeline import Pipeline
from streams.kafka.offsets import beginning_offsets
from streams.kafka.replay import ReplaySource, start_consumer, stop_consumer
from streams.records import Partition
from streams.source import Source

log = logging.getLogger(__name__)


async def warm_from_input(
    conn: Connection,
    pipeline: Pipeline,
    upto: Mapping[Partition, int],
    say: Callable[[str], None] = log.info,
    wrap: Callable[[Source], Source] = lambda source: source,
) -> int:
    """Feed each partition's records from its beginning up to ``upto`` (exclusive) through the
    features step (``wrap``: decoded by schema, when the pipeline's events are); returns how many
    were read. ``say`` tells what it does (the backfill shows it whatever the log level: a later
    start that reads history first must not look stuck)."""
    if pipeline.stateful is None or not upto:
        return 0
    consumer = make_consumer(
        conn, group_id=None, max_partition_fetch_bytes=FETCH_BYTES_PER_PARTITION, isolation_level="read_committed"
    )
    await start_consumer(consumer)
    try:
        start = await beginning_offsets(consumer, upto)
        plan = ReplayPlan(start, {p: max(upto[p], start[p]) for p in upto})
        if not plan.total:
            return 0
        where = ", ".join(f"{p.topic}[{p.partition}]" for p in sorted(upto))
        say(
            f"pipeline {pipeline.name}: rebuilding per-key state from {plan.total} earlier events "
            f"of {where} first (nothing emitted)"
        )
        read = await warm_state(wrap(ReplaySource(consumer, plan, start)), pipeline)
        say(f"pipeline {pipeline.name}: per-key state rebuilt from {read} events")
        return read
    finally:
        await stop_consumer(consumer)
