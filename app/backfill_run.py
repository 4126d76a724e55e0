"""One backfill run, from its checked ``Run`` (``app.backfill_args``) to its summary: its parts
(``app.backfill_parts``, ``app.backfill_models``, ``app.backfill_report``) opened in the order their
dependencies run, the replay scored through ``streams.backfill.run.run_backfill``, and every part
closed in reverse order, however the run ends. With ``--models``, the lines on what each candidate
did; with ``--labels``, the evaluation report and its headline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import AsyncExitStack

from app.backfill_args import Run
from app.backfill_models import build_shadows, model_label, models_summary, opened_models, say, settle_shadows
from app.backfill_parts import (
    announce,
    checkpoint_every_s,
    crash_hook,
    events_done,
    opened_pipeline,
    opened_replay,
    opened_sink,
    progress_bar,
    start_checkpoint,
    warm_up,
)
from app.backfill_report import check_labels_source, headline, opened_evidence, write_evaluation
from app.build import build_batcher
from app.config import Config
from app.kafka_clients import connection
from app.schema_registry import transcoding
from app.topics import check_broker
from models.spec import ModelSpec
from streams.backfill.run import BackfillSummary, run_backfill
from streams.flow.shadow import Shadow


async def backfill_run(config: Config, run: Run, specs: Sequence[ModelSpec]) -> BackfillSummary:
    """Replay ``run``'s plan through its pipeline, served by the model of ``specs[0]`` (the others
    scored beside it), into its sink; returns once every event is acknowledged, scored by every
    model, and the final checkpoint saved (and the report written, with ``--labels``)."""
    conn = connection(config)
    await check_broker(conn)
    await check_labels_source(conn, run)
    async with AsyncExitStack() as opened:
        replay = await opened.enter_async_context(opened_replay(config, conn, run))
        models = await opened.enter_async_context(opened_models(config, run, specs))
        sink = await opened.enter_async_context(opened_sink(config, conn, run))
        checkpoint = start_checkpoint(run, replay.plan, sink)
        announce(run, checkpoint)
        evidence = opened.enter_context(opened_evidence(run, checkpoint, len(models.all)))
        shadows: list[Shadow] = []
        if sink.shadow is not None:
            recorders = [evidence.candidate(i) if evidence else None for i in range(1, len(models.all))]
            shadows = build_shadows(run, models, sink.shadow.sink, sink.shadow.topics, recorders)
            opened.push_async_callback(settle_shadows, shadows)  # however the run ends: before the sinks close

        # The last checkpoint may begin while a periodic one still waits for the shadows: one at a time.
        settling = asyncio.Lock()

        async def before_checkpoint() -> None:
            """A checkpoint counts an event only once every model scored it (and its score is kept)."""
            async with settling:
                await settle_shadows(shadows)
                if sink.shadow is not None:
                    checkpoint.shadow_sink = sink.shadow.state()
                if evidence is not None:
                    evidence.table.flush()

        hook = crash_hook(run, sink)
        watchers = [evidence.recorder()] if evidence is not None else []
        roles = models.roles(run.pipeline.name)
        pipeline = opened.enter_context(
            opened_pipeline(run, roles, hook or sink.sink, sink.topics, shadows=shadows, watchers=watchers)
        )
        await warm_up(conn, pipeline, checkpoint, lambda s: transcoding(config, run.pipeline, s))
        batcher = build_batcher(run.pipeline, models.cost, "backfill")
        bar = progress_bar(run, checkpoint)
        summary = await run_backfill(
            transcoding(config, run.pipeline, replay.source(checkpoint)),
            pipeline,
            batcher,
            checkpoint,
            on_advance=lambda done, _total: bar.update(done),
            checkpoint_every_s=checkpoint_every_s(run),
            commit_sink=sink.state,
            on_checkpoint=hook.checkpointed if hook else lambda _checkpoint: None,
            before_checkpoint=before_checkpoint if shadows or evidence is not None else None,
        )
        bar.finish(events_done(checkpoint))
        say(models_summary(models, shadows))
        if evidence is not None:
            evaluation, written = await write_evaluation(evidence, conn, run, [model_label(m) for m in models.all])
            say(headline(evaluation, written))
        return summary
