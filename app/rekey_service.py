"""The re-keying stage of a pipeline keyed by an event field, inside the Faust worker.

It runs the same driver as a pipeline (``streams.kafka.rekey.Rekeying`` in place of the model), with
a consumer group of its own on the configured input topic: whatever the pipeline's delivery,
its offsets commit with the re-keyed records in one transaction per input partition, every
``transaction_interval_ms``: no event is ever re-keyed twice, so per-key state never counts one
twice (the pipeline reads the repartition topic ``read_committed``). The pipeline's service
starts it and is ready only once it is.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from mode import Service

from app.build import (
    build_batcher,
    build_live_consumer,
    build_transactional_sink,
)
from app.config import Config, PipelineConfig, RekeyConfig
from app.crash_hooks import KillInOpenTransaction, kill_in_rekey_transaction_after
from app.driver_task import stop_driver
from app.kafka_clients import Consumer, connection
from app.schema_registry import transcoding
from app.topics import partitions_of, timestamp_window_ms
from streams.errors import TopicMissingError
from streams.flow.cost_model import CostModel
from streams.flow.delivery import Sink
from streams.flow.driver import Driver
from streams.flow.partitions import PartitionLife, PartitionSteps
from streams.kafka.group_source import KafkaBatchSource
from streams.kafka.rekey import Rekeying
from streams.kafka.transaction_commits import TransactionCommits
from streams.kafka.transactions import PartitionTransactions, TransactionalSink
from streams.metrics import PipelineMetrics

log = logging.getLogger(__name__)

# Reading a key field and handing the event on, per event (measured: a few microseconds); only
# a starting point for the batcher, which measures the stage within seconds.
REKEY_SECONDS_PER_EVENT = 5e-6


class RekeyService(Service):
    def __init__(self, config: Config, pipeline: PipelineConfig, metrics: PipelineMetrics, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        assert pipeline.rekey is not None
        self.config = config
        self.pipeline_config = pipeline
        self.rekey: RekeyConfig = pipeline.rekey
        self.metrics = metrics
        self.driver: Driver[Rekeying] | None = None
        self._consumer: Consumer | None = None
        self._sink: TransactionalSink | None = None
        self._source: KafkaBatchSource | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._crashing: asyncio.Future[None] | None = None
        self.life: PartitionLife | None = None
        self._stage_running = asyncio.Event()

    @property
    def shortlabel(self) -> str:
        return f"Rekey[{self.pipeline_config.name}]"

    @property
    def ready(self) -> bool:
        return self._source is not None and self._source.joined.is_set()

    async def joined(self) -> None:
        """Once the group gave this worker its share of the input's partitions."""
        await self._stage_running.wait()
        assert self._source is not None
        await self._source.joined.wait()

    async def on_start(self) -> None:
        p, r = self.pipeline_config, self.rekey
        conn = connection(self.config)
        client_id = f"sluice-{p.name}-rekey"
        # Always transactional: an event re-keyed twice would be counted twice in its key's state.
        transactions, sink = await build_transactional_sink(
            conn,
            group_id=r.group_id,
            input_topic=r.source_topic,
            outputs=[r.topic, p.dead_letter_topic],
            client_id=client_id,
        )
        self._sink = sink
        self._consumer, pacing = build_live_consumer(conn, p, group_id=r.group_id, client_id=client_id)
        await sink.start()
        source = KafkaBatchSource(self._consumer, (r.source_topic,), poll_ms=p.poll_ms, gated=True, pacing=pacing)
        self._source = source
        routed_to: Sink = sink
        on_committed = source.mark_committed
        kill_after = kill_in_rekey_transaction_after()
        if kill_after is not None:
            routed_to = hook = KillInOpenTransaction(sink, kill_after, on_committed)
            on_committed = hook.committed
        partitions = len(await partitions_of(conn, r.topic))
        if not partitions:
            raise TopicMissingError(f"the repartition topic {r.topic} of pipeline {p.name} is gone; restart the worker")
        stage = Rekeying(
            name=p.name,
            field=r.field,
            topic=r.topic,
            partitions=partitions,
            timestamp_window_ms=await timestamp_window_ms(conn, r.topic),
            sink=routed_to,
            dead_letter_topic=p.dead_letter_topic,
            max_payload_bytes=p.schema.max_payload_bytes,
            dead_letter_copy_bytes=p.dead_letter_copy_bytes,
        )
        progress = TransactionCommits(transactions, interval_ms=p.transaction_interval_ms, on_committed=on_committed)
        cost = CostModel(fallback_seconds_per_event=REKEY_SECONDS_PER_EVENT)
        # Events read by their schema are keyed by a field of the JSON they encode, and routed as they were written.
        read = transcoding(self.config, p, source, picks=False)
        self.driver = driver = Driver(read, stage, build_batcher(p, cost, "live"), progress, metrics=self.metrics)
        self.metrics.probe = driver  # the input topic's lag, the queue, lost outputs
        self.life = self._partition_life(source, driver, transactions)
        source.subscribe(on_revoke=self.life.revoke, on_assign=self.life.assign)
        await self._consumer.start()
        self._run_task = asyncio.create_task(driver.run(), name=f"sluice-rekey-{p.name}")
        self._run_task.add_done_callback(self._on_loop_done)
        self._stage_running.set()
        log.info(
            "pipeline %s: re-keying %s by field %r -> %s (group %s, transactions every %.0f ms)",
            p.name,
            r.source_topic,
            r.field,
            r.topic,
            r.group_id,
            p.transaction_interval_ms,
        )

    @staticmethod
    def _partition_life(
        source: KafkaBatchSource, driver: Driver[Rekeying], txns: PartitionTransactions
    ) -> PartitionLife:
        """Partitions move with their transactional producer: the previous owner is fenced before
        this worker reads from the committed offsets."""
        steps = PartitionSteps(
            fence=txns.assign,
            start=source.start_from_committed,
            drain=driver.release_partitions,  # commits every open transaction
            release=(txns.release,),
        )
        return PartitionLife(steps, fail=driver.fail)

    def _on_loop_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("pipeline %s: re-keying stopped on an error: %r", self.pipeline_config.name, task.exception())
            # Crash the worker: what was not committed is re-keyed after a restart.
            self._crashing = asyncio.ensure_future(self.crash(task.exception()))  # type: ignore[arg-type]

    async def on_stop(self) -> None:
        await stop_driver(self.driver, self._run_task, f"pipeline {self.pipeline_config.name} (re-keying)")
        if self._consumer is not None:
            await self._consumer.stop()
        if self.life is not None:
            await self.life.close()  # the driver committed what it finished: let go of every partition
        if self._sink is not None:
            await self._sink.stop()
