"""One backfill run, from its checked ``Run`` (``app.backfill_args``) to its summary: its parts
(``app.backfill_parts``) opened in the order their dependencies run, the replay scored through
``streams.backfill.run.run_backfill``, and every part closed in reverse order, however the run ends.
"""

from __future__ import annotations

from contextlib import AsyncExitStack

from app.backfill_args import Run
from app.backfill_parts import (
    announce,
    checkpoint_every_s,
    crash_hook,
    events_done,
    opened_pipeline,
    opened_replay,
    opened_runner,
    opened_sink,
    progress_bar,
    start_checkpoint,
    warm_up,
)
from app.build import build_batcher
from app.config import Config
from app.kafka_clients import connection
from app.topics import check_broker
from models.spec import ModelSpec
from streams.backfill.run import BackfillSummary, run_backfill


async def backfill_run(config: Config, run: Run, spec: ModelSpec) -> BackfillSummary:
    """Replay ``run``'s plan through its pipeline, scored by the model of ``spec``, into its
    sink; returns once every event is acknowledged and the final checkpoint saved."""
    conn = connection(config)
    await check_broker(conn)
    async with AsyncExitStack() as opened:
        replay = await opened.enter_async_context(opened_replay(config, conn, run))
        runner, cost = await opened.enter_async_context(opened_runner(config, run, spec))
        sink = await opened.enter_async_context(opened_sink(config, conn, run))
        checkpoint = start_checkpoint(run, replay.plan, sink)
        announce(run, checkpoint)
        hook = crash_hook(run, sink)
        pipeline = opened.enter_context(opened_pipeline(run, runner, hook or sink.sink, sink.topics))
        await warm_up(conn, pipeline, checkpoint)
        batcher = build_batcher(run.pipeline, cost, "backfill")
        bar = progress_bar(run, checkpoint)
        summary = await run_backfill(
            replay.source(checkpoint),
            pipeline,
            batcher,
            checkpoint,
            on_advance=lambda done, _total: bar.update(done),
            checkpoint_every_s=checkpoint_every_s(run),
            commit_sink=sink.state,
            on_checkpoint=hook.checkpointed if hook else lambda _checkpoint: None,
        )
        bar.finish(events_done(checkpoint))
        return summary
