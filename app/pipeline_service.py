"""One pipeline inside the Faust worker: a mode Service that owns its consumer, producer and model.

Faust gives the worker its lifecycle (start-up order, signals, web server, logging);
this service owns the consuming path, so batches flow through aiokafka's batch API
and offsets are committed only after outputs are acknowledged, not per event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from mode import Service

from app.build import (
    FETCH_BYTES_PER_PARTITION,
    build_batcher,
    build_kafka_sink,
    build_partition_transactions,
    build_pipeline,
    build_runner,
    build_transactional_sink,
    input_isolation,
    live_fetch_pacing,
    load_checked_model,
    settle_garbage_collector,
)
from app.cli import PROCESS_STARTED
from app.config import Config, PipelineConfig
from app.crash_hooks import (
    KillInChangelogFlush,
    KillInOpenTransaction,
    kill_in_changelog_flush_after,
    kill_in_transaction_after,
)
from app.driver_task import stop_driver
from app.kafka_clients import Connection, connection, make_consumer
from app.key_serving import KeyServing
from app.rekey_service import RekeyService
from app.state_warmup import warm_from_input
from models.loading import LoadedModel, ModelSpec
from models.runner import TorchRunner
from streams.errors import ModelLoadError, SluiceError, StateError
from streams.flow.driver import Driver
from streams.flow.pipeline import Sink
from streams.kafka.changelog import Changelog
from streams.kafka.group_commits import GroupCommits
from streams.kafka.group_source import KafkaBatchSource
from streams.kafka.sink import KafkaSink
from streams.kafka.transaction_commits import TransactionCommits
from streams.kafka.transactions import PartitionTransactions, TransactionalSink
from streams.metrics import PipelineMetrics
from streams.records import Partition
from streams.source import Progress

log = logging.getLogger(__name__)


class PipelineService(Service):
    """Runs one configured pipeline for as long as the worker runs."""

    def __init__(
        self,
        config: Config,
        pipeline: PipelineConfig,
        model: LoadedModel | None = None,
        metrics: PipelineMetrics | None = None,
        web_address: Callable[[], str] | None = None,
        rekey: RekeyService | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        # Keyed by an event field: the stage that feeds this pipeline's repartition topic.
        self.rekey = rekey
        if rekey is not None:
            self.add_dependency(rekey)
        self.config = config
        self.pipeline_config = pipeline
        self._model = model
        self.metrics = metrics or PipelineMetrics(pipeline.name)
        self._swapping = asyncio.Lock()
        self.driver: Driver | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._sink: KafkaSink | TransactionalSink | None = None
        self._runner: TorchRunner | None = None
        self._crashing: asyncio.Future[None] | None = None
        self._source: KafkaBatchSource | None = None
        self._announce: asyncio.Task[None] | None = None
        # A stateful pipeline's changelog (for serving keys and the metrics).
        self.changelog: Changelog | None = None
        # ``web_address``: where other workers reach this one's web server, named in its consumer's
        # client id, so a worker asked about a key it does not own can say which worker does.
        self.keys = KeyServing(config, pipeline, web_address)

    @property
    def shortlabel(self) -> str:
        return f"Pipeline[{self.pipeline_config.name}]"

    @property
    def ready(self) -> bool:
        """Scoring: the model is warm and the group gave this worker its partitions (and re-keying's)."""
        rekeying = self.rekey is None or self.rekey.ready
        return rekeying and self._source is not None and self._source.joined.is_set()

    def assigned_partitions(self) -> int:
        return len(self._consumer.assignment()) if self._consumer is not None and self.ready else 0

    async def on_start(self) -> None:
        p = self.pipeline_config
        conn = connection(self.config)
        started = time.monotonic()
        # The worker's preflight (app.main) checked the broker and the topics already.
        loaded = self._model if self._model is not None else await asyncio.to_thread(load_checked_model, p, p.model)
        self._model = None  # the runner holds the module now; a swap must be able to free it
        runner, cost = await asyncio.to_thread(build_runner, self.config, p, loaded)
        self._runner = runner
        warm = time.monotonic()
        exactly_once = p.delivery == "exactly_once"
        sink: KafkaSink | TransactionalSink
        transactions: PartitionTransactions | None = None
        if exactly_once:
            transactions, sink = await build_transactional_sink(
                conn,
                group_id=p.group_id,
                input_topic=p.input_topics[0],
                outputs=[p.output_topic, p.dead_letter_topic],
                client_id=f"sluice-{p.name}",
            )
        else:
            sink = await build_kafka_sink(
                conn, [p.output_topic, p.dead_letter_topic], "live", client_id=f"sluice-{p.name}"
            )
            if p.state is not None:
                # At-least-once outputs, but the state and the offsets commit together in a
                # transaction per input partition, so the state never counts an event twice.
                transactions = build_partition_transactions(conn, p.group_id, client_id=f"sluice-{p.name}")
        self._sink = sink
        pacing = live_fetch_pacing(p)
        self._consumer = make_consumer(
            conn,
            group_id=p.group_id,
            client_id=self.keys.client_id(),
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=FETCH_BYTES_PER_PARTITION,
            isolation_level=input_isolation(p),
            **pacing.idle_settings(),
        )
        await sink.start()
        source = KafkaBatchSource(
            self._consumer, p.input_topics, poll_ms=p.poll_ms, gated=transactions is not None, pacing=pacing
        )
        self._source = source
        progress: Progress
        scored_to: Sink = sink
        if transactions is not None:
            on_committed = source.mark_committed
            kill_after = kill_in_transaction_after()
            if kill_after is not None:
                scored_to = hook = KillInOpenTransaction(sink, kill_after, on_committed)
                on_committed = hook.committed
            progress = TransactionCommits(
                transactions,
                interval_ms=p.transaction_interval_ms if exactly_once else p.commit_interval_ms,
                on_committed=on_committed,
            )
        else:
            progress = GroupCommits(source.commit_offsets, interval_ms=p.commit_interval_ms)
        self.driver = driver = Driver(
            source,
            build_pipeline(p, runner, scored_to, "live", emit_features=p.emit_features),
            build_batcher(p, cost, "live"),
            progress,
            late_events=p.late_events,
            stats_interval_s=self.config.app.stats_interval_s,
            metrics=self.metrics,
        )
        self.metrics.probe = driver
        if transactions is None:
            source.subscribe(on_revoke=driver.release_partitions)
        else:
            self._subscribe_with_transactions(conn, source, driver, transactions)
        await self._consumer.start()
        settle_garbage_collector()
        self._run_task = asyncio.create_task(self.driver.run(), name=f"sluice-live-{p.name}")
        self._run_task.add_done_callback(self._on_loop_done)
        self._announce = asyncio.create_task(self._announce_ready(started, warm), name=f"sluice-ready-{p.name}")
        log.info(
            "pipeline %s: scoring %s -> %s with model %s v%s (group %s, budget %.0f ms, batches up to %d, %s)",
            p.name,
            ", ".join(p.input_topics),
            p.output_topic,
            runner.name,
            runner.version,
            p.group_id,
            p.latency_budget_ms,
            p.max_batch_size,
            "exactly once" if exactly_once else "at least once",
        )

    def _subscribe_with_transactions(
        self, conn: Connection, source: KafkaBatchSource, driver: Driver, txns: PartitionTransactions
    ) -> None:
        """Partitions move with their transactional producer and, in a stateful pipeline, their state:
        restored from the changelog after the previous owner is fenced, before any event is scored."""
        p = self.pipeline_config
        stateful = driver.pipeline.stateful
        changelog: Changelog | None = None
        if stateful is not None:
            changelog = self.changelog = Changelog(
                stateful.step,
                p.changelog_topic,
                lambda: make_consumer(
                    conn,
                    client_id=f"sluice-{p.name}-restore",
                    isolation_level="read_committed",
                    auto_offset_reset="earliest",
                    max_partition_fetch_bytes=FETCH_BYTES_PER_PARTITION,
                ),
            )
            kill_after = kill_in_changelog_flush_after()
            txns.before_commit = (
                changelog.flush if kill_after is None else KillInChangelogFlush(changelog.flush, kill_after)
            )
            txns.after_commit = changelog.committed

        async def on_revoke(revoked: set[Partition]) -> None:
            try:
                await driver.release_partitions(revoked)  # commits every open transaction
            finally:
                await txns.release(revoked)
                if stateful is not None:
                    stateful.step.drop_partitions(list(revoked))

        async def on_assign(assigned: set[Partition]) -> None:
            await txns.assign(assigned)  # fences their previous owners first
            if changelog is not None and txns.failed is None:
                try:
                    await changelog.restore(assigned)
                    await self._warm_cold_partitions(conn, assigned - changelog.found, driver)
                except Exception as exc:  # noqa: BLE001 - the driver stops on it (the listener would swallow it)
                    txns.fail(exc if isinstance(exc, SluiceError) else StateError(f"restoring state: {exc!r}"))
                    return
            await source.start_from_committed(assigned)

        source.subscribe(on_revoke=on_revoke, on_assign=on_assign)

    async def _warm_cold_partitions(self, conn: Connection, cold: set[Partition], driver: Driver) -> None:
        """Partitions with no state in the changelog but committed offsets past their beginning (state
        added to a running pipeline, a changelog deleted): their state is rebuilt from the input up
        to the committed offset first, so their next events get the features a backfill gives them."""
        assert self._consumer is not None
        upto = {}
        for partition in cold:
            committed = await self._consumer.committed(TopicPartition(*partition))
            if committed:
                upto[partition] = committed
        await warm_from_input(conn, driver.pipeline, upto)

    async def _announce_ready(self, started: float, warm: float) -> None:
        """Say what the first seconds cost, apart from serving: events that arrive before this line
        wait for the model's warm-up and the group join, not for the batcher."""
        assert self._source is not None
        await self._source.joined.wait()
        if self.rekey is not None:  # its consumer joins a group of its own
            await self.rekey.joined()
        now = time.monotonic()
        log.info(
            "pipeline %s: ready: %d partition(s) assigned, %.1fs after the worker started (imports, model "
            "loading and start-up checks %.1fs, model warm-up %.1fs, producer and group join %.1fs)",
            self.pipeline_config.name,
            self.assigned_partitions(),
            now - PROCESS_STARTED,
            started - PROCESS_STARTED,
            warm - started,
            now - warm,
        )

    async def key_state(self, key: bytes) -> tuple[int, dict[str, Any]]:
        """``GET /pipelines/NAME/keys/KEY``: (HTTP status, body); see ``app.key_serving``."""
        stateful = self.driver.pipeline.stateful if self.driver is not None else None
        if stateful is None or self._consumer is None or self._source is None:
            return 404, {
                "error": f"pipeline {self.pipeline_config.name} has no per-key features, or is not running yet"
            }
        return await self.keys.answer(key, stateful.step, self._consumer, self._source.ready)

    async def swap_model(self, spec: ModelSpec) -> tuple[str, str]:
        """Load and warm up ``spec`` beside the serving model, then swap it in between two batches.

        Raises ``ModelLoadError`` (the old model keeps serving) if it cannot be loaded or does
        not take the pipeline's inputs. Returns the new model's name and version.
        """
        p = self.pipeline_config
        if self.driver is None or self._runner is None:
            raise ModelLoadError(f"pipeline {p.name} is not running yet")
        async with self._swapping:
            loaded = await asyncio.to_thread(load_checked_model, p, spec)
            try:
                runner, cost = await asyncio.to_thread(build_runner, self.config, p, loaded)
            except Exception as exc:
                raise ModelLoadError(
                    f"{spec.describe()} does not score the inputs of pipeline {p.name} "
                    f"({', '.join(f'{i.name} {list(i.shape)}' for i in p.inputs)}): {exc}"
                ) from exc
            old = await self.driver.swap_runner(runner, cost)
            self._runner = runner
            await old.aclose()
        log.warning(
            "pipeline %s: now serving model %s v%s (was %s v%s)",
            p.name,
            runner.name,
            runner.version,
            old.name,
            old.version,
        )
        return runner.name, runner.version

    def _on_loop_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("pipeline %s stopped on an error: %r", self.pipeline_config.name, task.exception())
            # Crash the worker: its uncommitted batches will be scored again after a restart.
            self._crashing = asyncio.ensure_future(self.crash(task.exception()))  # type: ignore[arg-type]

    async def on_stop(self) -> None:
        if self._announce is not None:
            self._announce.cancel()
        await stop_driver(self.driver, self._run_task, f"pipeline {self.pipeline_config.name}")
        if self._consumer is not None:
            await self._consumer.stop()
        if self._sink is not None:
            await self._sink.stop()
        if self._runner is not None:
            await self._runner.aclose()
        if self.driver is not None and self.driver.pipeline.stateful is not None:
            self.driver.pipeline.stateful.step.store.close()  # a RocksDB store's databases and locks
        log.info("pipeline %s stopped", self.pipeline_config.name)
