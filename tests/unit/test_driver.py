"""The one driver, in both modes, with fakes of its protocols (the real broker is in tests/integration)."""

from __future__ import annotations

import asyncio

import orjson
import pytest

import streams.flow.backoff
from streams.codecs.codec import EventSchema, TensorField
from streams.errors import DeliveryFailed, ModelUnavailableError, PartitionOutOfOrder
from streams.flow.batcher import Batcher, BatchPolicy
from streams.flow.cost_model import CostModel
from streams.flow.driver import Driver
from streams.flow.pipeline import Pipeline, PipelineTopics
from streams.records import InputRecord, Partition
from tests.fakes import GatedRunner, ListSink, ListSource, RecordingProgress, SumRunner, until

SCHEMA = EventSchema(id_field="id", inputs=(TensorField("x", (2,)),))


def events(n: int, partitions: int = 2) -> list[InputRecord]:
    """``n`` events spread over partitions; event i predicts 2i, and one in ten is not JSON."""
    return [
        InputRecord(
            "in",
            i % partitions,
            i // partitions,
            1_000,
            None,
            b"{" if i % 10 == 7 else orjson.dumps({"id": i, "x": [i, i]}),
        )
        for i in range(n)
    ]


def make_driver(
    records: list[InputRecord],
    *,
    live: bool,
    runner: SumRunner | None = None,
    max_batch_size: int = 16,
    progress: RecordingProgress | None = None,
    per_fetch: int = 1_000,
    on_model_down: str = "retry",
) -> tuple[Driver, ListSink, RecordingProgress, ListSource]:
    sink = ListSink()
    pipeline = Pipeline(
        name="p",
        schema=SCHEMA,
        runner=runner or SumRunner(),
        sink=sink,
        topics=PipelineTopics(output="out", dead_letter="dlq"),
        clock_ms=lambda: 2_000,
    )
    cost = CostModel()
    cost.seed({1: 1e-4, max_batch_size: 1e-3})
    budget = 1e9 if live else None  # a budget nothing misses: batches as the policy plans them
    batcher = Batcher(BatchPolicy(max_batch_size=max_batch_size, latency_budget_ms=budget), cost)
    source = ListSource(records, per_fetch=per_fetch, bounded=not live)
    progress = progress or RecordingProgress()
    driver = Driver(source, pipeline, batcher, progress, on_model_down=on_model_down, clock_ms=lambda: 2_000)  # type: ignore[arg-type]
    return driver, sink, progress, source


def outputs_by_position(sink: ListSink) -> dict[tuple[int, int], tuple[str, object]]:
    by_position = {}
    for record in sink.records:
        body = orjson.loads(record.value)
        if record.topic == "out":
            by_position[(record.partition, body["id"] // 2)] = ("out", body["prediction"])
        else:
            source = body["source"]
            by_position[(source["partition"], source["offset"])] = ("dlq", body["error"])
    return by_position


async def test_a_bounded_source_is_scored_to_its_end_and_the_last_commit_is_final():
    records = events(100)
    driver, sink, progress, _ = make_driver(records, live=False, per_fetch=7)
    await asyncio.wait_for(driver.run(), 10)
    assert len(sink.records) == 100, "one output per event"
    assert sorted(progress.acknowledged_offsets) == sorted((r.topic, r.partition, r.offset) for r in records)
    assert progress.commits[-1] == (100, True)
    for partition in (0, 1):
        offsets = [o for _, p, o in progress.acknowledged_offsets if p == partition]
        assert offsets == sorted(offsets), "each partition acknowledged in offset order"


async def test_live_and_backfill_give_every_source_position_the_same_output():
    records = events(200)
    backfill, backfill_sink, _, _ = make_driver(records, live=False, per_fetch=13)
    await asyncio.wait_for(backfill.run(), 10)
    live, live_sink, progress, _ = make_driver(records, live=True, per_fetch=5)
    running = asyncio.create_task(live.run())
    await until(lambda: len(progress.acknowledged_offsets) == 200, "every live event acknowledged")
    live.stop()
    await asyncio.wait_for(running, 10)
    assert outputs_by_position(live_sink) == outputs_by_position(backfill_sink)
    assert len(outputs_by_position(live_sink)) == 200
    assert progress.commits[-1] == (200, True), "stopping commits what was acknowledged"


async def test_the_next_batch_is_decoded_while_the_model_scores_this_one():
    decoded: list[int] = []
    decodes_when_the_model_got_its_batch: list[int] = []

    class WatchedRunner(GatedRunner):
        async def predict(self, inputs):  # type: ignore[no-untyped-def]
            decodes_when_the_model_got_its_batch.append(len(decoded))
            return await super().predict(inputs)

    runner = WatchedRunner()
    driver, _, progress, _ = make_driver(events(64), live=False, runner=runner, max_batch_size=16)
    decode = driver.pipeline.decode
    driver.pipeline.decode = lambda records, skip=(): decoded.append(len(records)) or decode(records, skip)  # type: ignore[method-assign]
    running = asyncio.create_task(driver.run())
    await asyncio.wait_for(runner.entered.wait(), 10)
    assert decodes_when_the_model_got_its_batch == [1], "the model got its batch before the next one was decoded"
    await until(lambda: len(decoded) == 2, "the next batch decoded")
    assert runner.batches == [], "... while the model still held the first one"
    runner.gate.set()
    await asyncio.wait_for(running, 10)
    # Later sizes follow the cost model, which measured the first batch with the gate shut.
    assert sum(decoded) == 64 and sum(runner.batches) == 64 - 6, "every event decoded once, each valid one scored"
    assert len(progress.acknowledged_offsets) == 64


async def test_a_model_that_is_down_is_retried_and_nothing_is_committed_past_it(monkeypatch):
    monkeypatch.setattr(streams.flow.backoff, "FIRST_RETRY_S", 0.001)

    class FlakyRunner(SumRunner):
        failures = 3

        async def predict(self, inputs):  # type: ignore[no-untyped-def]
            if self.failures:
                self.failures -= 1
                raise ModelUnavailableError("device lost")
            return await super().predict(inputs)

    driver, sink, _, _ = make_driver(events(40), live=False, runner=FlakyRunner())
    await asyncio.wait_for(driver.run(), 10)
    assert len(outputs_by_position(sink)) == 40 == len(sink.records), "each event scored once, after recovery"
    assert driver.dispatcher.model_error is None


async def test_a_backfill_stops_on_a_model_that_is_down_with_nothing_acknowledged():
    class DownRunner(SumRunner):
        async def predict(self, inputs):  # type: ignore[no-untyped-def]
            raise ModelUnavailableError("device lost")

    driver, sink, progress, _ = make_driver(events(40), live=False, runner=DownRunner(), on_model_down="raise")
    with pytest.raises(ModelUnavailableError):
        await asyncio.wait_for(driver.run(), 10)
    assert sink.records == [] and progress.acknowledged_offsets == []
    assert all(not final for _, final in progress.commits)


async def test_revoked_partitions_are_committed_up_to_what_was_scored_and_their_queued_events_dropped():
    runner = GatedRunner()
    records = events(64)
    driver, sink, progress, _ = make_driver(records, live=True, runner=runner, max_batch_size=16)
    running = asyncio.create_task(driver.run())
    await asyncio.wait_for(runner.entered.wait(), 10)  # batch 1 in the model, batch 2 decoded
    revoking = asyncio.create_task(driver.release_partitions({Partition("in", 1)}))
    await asyncio.sleep(0)
    assert not revoking.done(), "the revocation waits for the batch being scored"
    runner.gate.set()
    await asyncio.wait_for(revoking, 10)
    first_batch = {(r.partition, r.offset) for r in records[:16]}
    assert progress.commits == [(16, False)], "committed right after the batch in flight, before the partition goes"
    await until(lambda: len(progress.acknowledged_offsets) == 16 + 24, "partition 0's remaining events scored")
    driver.stop()
    await asyncio.wait_for(running, 10)
    later = set(outputs_by_position(sink)) - first_batch
    assert later == {(r.partition, r.offset) for r in records[16:] if r.partition == 0}


async def test_a_quiet_progress_commits_with_nothing_in_flight():
    progress = RecordingProgress(needs_quiet=True)
    driver, sink, _, _ = make_driver(events(300), live=False, progress=progress, per_fetch=10, max_batch_size=8)
    sent_but_not_acknowledged: list[int] = []
    commit = progress.commit

    async def checked_commit(*, final: bool = False) -> None:
        # One output per event: every output sent so far must be acknowledged at a quiet commit.
        sent_but_not_acknowledged.append(len(sink.records) - len(progress.acknowledged_offsets))
        await commit(final=final)

    progress.commit = checked_commit  # type: ignore[method-assign]
    running = asyncio.create_task(driver.run())
    for _ in range(5):
        await until(lambda: len(progress.acknowledged_offsets) > 0, "something acknowledged")
        progress.due.set()
        await asyncio.sleep(0)
    await asyncio.wait_for(running, 10)
    assert len(sent_but_not_acknowledged) >= 2
    assert set(sent_but_not_acknowledged) == {0}


async def test_a_swapped_runner_scores_whole_batches_from_the_next_one_on():
    first = GatedRunner()
    driver, sink, progress, _ = make_driver(events(48), live=True, runner=first, max_batch_size=16)
    running = asyncio.create_task(driver.run())
    await asyncio.wait_for(first.entered.wait(), 10)

    class Second(SumRunner):
        name = "second"

    swapping = asyncio.create_task(driver.swap_runner(Second(), driver.batcher.cost))
    await asyncio.sleep(0)
    assert not swapping.done()
    first.gate.set()
    assert await asyncio.wait_for(swapping, 10) is first
    await until(lambda: len(progress.acknowledged_offsets) == 48, "every event acknowledged")
    driver.stop()
    await asyncio.wait_for(running, 10)
    model_of = {orjson.loads(r.value)["id"]: orjson.loads(r.value)["model"] for r in sink.records if r.topic == "out"}
    assert {model_of[i] for i in range(16) if i in model_of} == {"sum"}, "the batch being scored kept its model"
    assert {model_of[i] for i in range(16, 48) if i in model_of} == {"second"}
    assert driver.metrics.model_swaps == 1


async def test_outputs_the_broker_did_not_take_are_sent_again_before_their_batch_counts(monkeypatch):
    """Delivery re-sends (at the send and at the acknowledgement); the acknowledger reports each
    batch only once its outputs are in, in order, so no commit passes an undelivered output."""
    monkeypatch.setattr(streams.flow.backoff, "FIRST_RETRY_S", 0.001)

    class Away(ListSink):
        def __init__(self) -> None:
            super().__init__()
            self.sends = 0

        async def send(self, records):  # type: ignore[no-untyped-def]
            self.sends += 1
            if self.sends in (2, 3):
                raise DeliveryFailed("KafkaConnectionError: broker away")
            if self.sends == 5:
                return _fails(DeliveryFailed("RequestTimedOutError"))
            return await super().send(records)

    records = events(64)
    driver, _, progress, _ = make_driver(records, live=False, max_batch_size=8)
    away = Away()
    driver.pipeline.delivery.sink = away
    await asyncio.wait_for(driver.run(), 10)
    assert away.sends > 5
    assert len(away.records) == 64 and len(outputs_by_position(away)) == 64, "each output delivered once"
    for partition in (0, 1):
        offsets = [o for _, p, o in progress.acknowledged_offsets if p == partition]
        assert offsets == list(range(32)), "every batch reported, in order, after its outputs were in"
    assert progress.commits[-1] == (64, True)


async def _fails(error: BaseException) -> None:
    raise error


async def test_a_failure_handed_to_the_driver_stops_it_with_that_error():
    driver, _, progress, _ = make_driver(events(10), live=True)
    running = asyncio.create_task(driver.run())
    await until(lambda: len(progress.acknowledged_offsets) == 10, "the events scored")
    driver.fail(PartitionOutOfOrder("cannot move in[0] (running) to assigned"))
    with pytest.raises(PartitionOutOfOrder):
        await asyncio.wait_for(running, 10)


async def test_each_batch_is_scored_and_handed_over_inside_while_scoring():
    records = events(60)
    driver, sink, _, _ = make_driver(records, live=False, per_fetch=9, max_batch_size=8)
    entered: list[int] = []  # outputs already sent when each scoring began, then when it ended
    inside = False

    class Scoring:
        def __enter__(self) -> None:
            nonlocal inside
            assert not inside, "never nested"
            inside = True
            entered.append(len(sink.records))

        def __exit__(self, *exc: object) -> None:
            nonlocal inside
            inside = False
            entered.append(len(sink.records))

    driver.dispatcher.while_scoring = Scoring
    await asyncio.wait_for(driver.run(), 10)
    assert not inside and len(sink.records) == 60
    starts, ends = entered[::2], entered[1::2]
    assert len(starts) >= 60 // 8, "entered once per batch"
    assert all(end > start for start, end in zip(starts, ends, strict=True)), "each batch's outputs sent inside"
    assert starts[1:] == ends[:-1], "no output sent outside it"


async def test_the_wait_for_acknowledgements_is_outside_while_scoring():
    driver, sink, _, _ = make_driver(events(40), live=False, per_fetch=9, max_batch_size=8)
    inside = False
    put_inside: list[bool] = []

    class Scoring:
        def __enter__(self) -> None:
            nonlocal inside
            inside = True

        def __exit__(self, *exc: object) -> None:
            nonlocal inside
            inside = False

    put = driver.dispatcher.acknowledger.put

    async def watched_put(in_flight):  # type: ignore[no-untyped-def]
        put_inside.append(inside)
        await put(in_flight)

    driver.dispatcher.while_scoring = Scoring
    driver.dispatcher.acknowledger.put = watched_put  # type: ignore[method-assign]
    await asyncio.wait_for(driver.run(), 10)
    assert len(sink.records) == 40 and put_inside and not any(put_inside), "a shadow is not paused for the broker"
