"""The parts of one live pipeline, built from its config: what ``PipelineService`` starts and stops.

Built in the order their dependencies run: the per-key state first, so its changelog commits in
the partitions' transactions; the sink (transactional for exactly-once); the consumer-group source
and its progress (group commits, or one transaction per partition); the pipeline and its driver;
and the partitions' life, whose steps are those parts. Nothing here starts a client: the service
does, in ``on_start``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from app.avro_outputs import register_outputs
from app.build import (
    FETCH_BYTES_PER_PARTITION,
    build_batcher,
    build_kafka_sink,
    build_live_consumer,
    build_partition_transactions,
    build_pipeline,
    build_stateful_inputs,
    build_transactional_sink,
)
from app.config import Config, PipelineConfig
from app.crash_hooks import (
    KillInChangelogFlush,
    KillInOpenTransaction,
    kill_in_changelog_flush_after,
    kill_in_transaction_after,
)
from app.kafka_clients import Connection, connection, make_consumer
from app.model_roles import RoleRunners, build_roles, build_shadows
from app.schema_registry import transcoding
from app.state_warmup import warm_from_input
from models.runner import TorchRunner
from streams.errors import SluiceError, StateError
from streams.flow.cost_model import CostModel
from streams.flow.driver import Driver
from streams.flow.model_stats import ModelBook
from streams.flow.partitions import PartitionLife, PartitionSteps
from streams.flow.pipeline import Pipeline, Sink
from streams.flow.stateful_inputs import StatefulInputs
from streams.kafka.changelog import Changelog
from streams.kafka.group_commits import GroupCommits
from streams.kafka.group_source import KafkaBatchSource
from streams.kafka.sink import KafkaSink
from streams.kafka.transaction_commits import TransactionCommits
from streams.kafka.transactions import PartitionTransactions, StateInTransactions, TransactionalSink
from streams.metrics import PipelineMetrics
from streams.records import Partition
from streams.source import Progress, Source


@dataclass
class LiveParts:
    source: KafkaBatchSource
    sink: KafkaSink | TransactionalSink
    driver: Driver[Pipeline]
    life: PartitionLife
    # A stateful pipeline's per-key state and its changelog (both None otherwise).
    state: StatefulInputs | None
    changelog: Changelog | None
    # The shadows' own producer (their records are outside the pipeline's commits and transactions).
    shadow_sink: KafkaSink | None = None


async def build_live(
    config: Config,
    p: PipelineConfig,
    runner: TorchRunner,
    cost: CostModel,
    *,
    client_id: str,
    metrics: PipelineMetrics,
    role_runners: RoleRunners | None = None,
    on_rollback: Callable[[str], None] | None = None,
) -> LiveParts:
    """Every part of pipeline ``p`` on a live worker, wired, none started; ``client_id``: its consumer's;
    ``on_rollback``: told why when the canary rolls itself back."""
    conn = connection(config)
    state = build_stateful_inputs(p, "live")
    changelog = _changelog(conn, p, state) if state is not None else None
    in_transactions: StateInTransactions | None = changelog
    kill_after = kill_in_changelog_flush_after()
    if changelog is not None and kill_after is not None:
        in_transactions = KillInChangelogFlush(changelog, kill_after)
    exactly_once = p.delivery == "exactly_once"
    sink: KafkaSink | TransactionalSink
    transactions: PartitionTransactions | None = None
    settings = {"client_id": f"sluice-{p.name}"}
    if exactly_once:
        transactions, sink = await build_transactional_sink(
            conn,
            group_id=p.group_id,
            input_topic=p.input_topics[0],
            outputs=[p.output_topic, p.dead_letter_topic],
            state=in_transactions,
            **settings,
        )
    else:
        sink = await build_kafka_sink(conn, [p.output_topic, p.dead_letter_topic], "live", **settings)
        if state is not None:
            # At-least-once outputs, but the state and the offsets commit together in a
            # transaction per input partition, so the state never counts an event twice.
            transactions = build_partition_transactions(conn, p.group_id, state=in_transactions, **settings)
    consumer, pacing = build_live_consumer(conn, p, group_id=p.group_id, client_id=client_id)
    source = KafkaBatchSource(
        consumer, p.input_topics, poll_ms=p.poll_ms, gated=transactions is not None, pacing=pacing
    )
    progress, scored_to = _progress(p, source, sink, transactions)
    role_runners = role_runners or RoleRunners()
    book = ModelBook()  # every model's evidence, the shadows' too (streams.flow.model_stats)
    roles = build_roles(p, runner, role_runners, "live", book, on_rollback)
    shadow_sink = None
    if role_runners.shadows:
        shadow_sink = await build_kafka_sink(
            conn, [p.roles.shadow_topic, p.dead_letter_topic], "live", client_id=f"sluice-{p.name}-shadows"
        )
    shadows = build_shadows(p, role_runners, shadow_sink, book) if shadow_sink else ()
    avro = await register_outputs(config, p, p.output_topic, emit_features=p.emit_features)
    pipeline = build_pipeline(
        p, roles, scored_to, "live", emit_features=p.emit_features, state=state, shadows=shadows, avro=avro
    )
    driver = Driver(
        transcoding(config, p, source),
        pipeline,
        build_batcher(p, cost, "live"),
        progress,
        late_events=p.late_events,
        stats_interval_s=config.app.stats_interval_s,
        metrics=metrics,
    )
    for shadow in shadows:
        # Queued past the next full batch: the champion is busy, and the shadow skips.
        shadow.champion_busy = lambda: len(driver.batcher) > p.max_batch_size
    if shadows:
        driver.dispatcher.while_scoring = role_runners.shadows_paused
    life = _partition_life(conn, source, driver, transactions, state, changelog, lambda s: transcoding(config, p, s))
    source.subscribe(on_revoke=life.revoke, on_assign=life.assign)
    return LiveParts(source, sink, driver, life, state, changelog, shadow_sink)


def _changelog(conn: Connection, p: PipelineConfig, state: StatefulInputs) -> Changelog:
    return Changelog(
        state.step,
        p.changelog_topic,
        lambda: make_consumer(
            conn,
            client_id=f"sluice-{p.name}-restore",
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=FETCH_BYTES_PER_PARTITION,
        ),
    )


def _progress(
    p: PipelineConfig,
    source: KafkaBatchSource,
    sink: KafkaSink | TransactionalSink,
    transactions: PartitionTransactions | None,
) -> tuple[Progress, Sink]:
    """What commits the pipeline's progress, and the sink its outputs go to (a crash hook may wrap it)."""
    if transactions is None:
        return GroupCommits(source.commit_offsets, interval_ms=p.commit_interval_ms), sink
    scored_to: Sink = sink
    on_committed = source.mark_committed
    kill_after = kill_in_transaction_after()
    if kill_after is not None:
        scored_to = hook = KillInOpenTransaction(sink, kill_after, on_committed)
        on_committed = hook.committed
    interval = p.transaction_interval_ms if p.delivery == "exactly_once" else p.commit_interval_ms
    return TransactionCommits(transactions, interval_ms=interval, on_committed=on_committed), scored_to


def _partition_life(
    conn: Connection,
    source: KafkaBatchSource,
    driver: Driver[Pipeline],
    transactions: PartitionTransactions | None,
    state: StatefulInputs | None,
    changelog: Changelog | None,
    wrap: Callable[[Source], Source],
) -> PartitionLife:
    """The steps of a partition's life on this pipeline. With transactions, partitions move with
    their transactional producer and, in a stateful pipeline, their state: restored from the
    changelog after the previous owner is fenced, before any event is scored."""
    if transactions is None:
        return PartitionLife(PartitionSteps(drain=driver.release_partitions), fail=driver.fail)
    txns = transactions

    async def restore(assigned: set[Partition]) -> None:
        if changelog is None or txns.failed is not None:
            return
        await changelog.restore(assigned)
        # Partitions with no state in the changelog but committed offsets past their beginning
        # (state added to a running pipeline, a changelog deleted): their state is rebuilt from
        # the input up to the committed offset first, so their next events get a backfill's features.
        upto = {
            p: offset for p, offset in (await source.committed_offsets(assigned - changelog.found)).items() if offset
        }
        await warm_from_input(conn, driver.pipeline, upto, wrap=wrap)

    async def release_state(revoked: set[Partition]) -> None:
        if state is not None:
            state.release(revoked)

    def fail(exc: BaseException) -> None:
        txns.fail(exc if isinstance(exc, SluiceError) else StateError(f"restoring state: {exc!r}"))

    steps = PartitionSteps(
        fence=txns.assign,  # fences the partitions' previous owners first
        restore=restore,
        start=source.start_from_committed,
        drain=driver.release_partitions,  # commits every open transaction
        release=(txns.release, release_state),
    )
    return PartitionLife(steps, fail=fail)
