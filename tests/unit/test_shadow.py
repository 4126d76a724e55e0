"""Shadows (streams.flow.shadow) beside a real Pipeline: they never delay or change the served
outputs, skip whole batches (counted) when behind, and their failures stay theirs. A slow
shadow is one that waits for a gate the test opens, so "behind" is a known point, not a race."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence

import numpy as np
import pytest

from streams.codecs.encode import position_key
from streams.errors import OutputRefused
from streams.flow.canary import Canary
from streams.flow.model_stats import Agreement, ModelStats
from streams.flow.pipeline import Pipeline
from streams.flow.roles import Roles
from streams.flow.shadow import Shadow
from streams.flow.shadow_records import as_positions
from streams.records import OutputRecord
from streams.testing import CollectingSink
from tests.fakes import SumRunner, until
from tests.unit.test_roles import TINY_S, Champion, events, make_pipeline

SHADOW_TOPIC = "out-shadow"


class Slow(SumRunner):
    """The shadow model: the sum plus ``offset``; waits at ``gate`` (open unless ``gated``)."""

    name = "slow"
    version = "9"

    def __init__(self, *, gated: bool = False, offset: float = 0.5) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()
        self.entered = asyncio.Event()
        self.offset = offset

    async def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        self.entered.set()
        await self.gate.wait()
        return (await super().predict(inputs)) + self.offset


def shadow_of(runner: SumRunner, sink: CollectingSink, **options: object) -> Shadow:
    stats = ModelStats("shadow", runner.name, runner.version)
    return Shadow(runner, sink=sink, topic=SHADOW_TOPIC, pipeline="p", stats=stats, **options)  # type: ignore[arg-type]


def shadowed_pipeline(runner: SumRunner, **options: object) -> tuple[Shadow, CollectingSink, Pipeline]:
    sink = CollectingSink()
    shadow = shadow_of(runner, sink, **options)
    pipeline, _ = make_pipeline(Champion(), shadows=[shadow], sink=sink)
    return shadow, sink, pipeline


async def test_a_slow_shadow_never_delays_the_served_outputs_and_skips_whole_batches_when_behind():
    slow = Slow(gated=True)
    shadow, sink, pipeline = shadowed_pipeline(slow, queue_batches=2)
    await pipeline.process(events(4, start=0))
    await asyncio.wait_for(slow.entered.wait(), 10)  # the shadow holds batch 1 on its model
    for b in range(1, 5):
        await pipeline.process(events(4, start=4 * b))
    # Every process returned while the shadow was stuck on its first batch.
    assert slow.batches == [] and not slow.gate.is_set()
    served = sink.decoded("out")
    assert [o["id"] for o in served] == list(range(20)), "the served outputs are all out already"
    assert (shadow.stats.skipped_batches, shadow.stats.skipped_events) == (2, 8), "batches 4 and 5 skipped"
    assert sink.on(SHADOW_TOPIC) == []

    slow.gate.set()
    await asyncio.wait_for(shadow.drain(), 10)
    shadowed = sink.decoded(SHADOW_TOPIC)
    assert [s["id"] for s in shadowed] == list(range(12)), "every event of every batch not skipped"
    served_by_id = {o["id"]: o for o in served}
    keys_by_id = {o["id"]: r.key for o, r in zip(served, sink.on("out"), strict=True)}
    for s, record in zip(shadowed, sink.on(SHADOW_TOPIC), strict=True):
        i = s["id"]
        assert s["prediction"] == i + 1.5 and (s["model"], s["model_version"], s["shadow"]) == ("slow", "9", True)
        assert s["served"] == {"model": "champ", "model_version": "1", "prediction": served_by_id[i]["prediction"]}
        assert s["source"] == served_by_id[i]["source"] and s["event_ts"] == served_by_id[i]["event_ts"]
        assert record.key == keys_by_id[i], "keyed like the served output"
    assert (shadow.stats.batches, shadow.stats.events) == (3, 12)
    assert shadow.stats.agreement is not None and shadow.stats.agreement.mean_abs_diff == pytest.approx(0.5)


async def test_the_served_outputs_are_the_same_with_and_without_a_shadow():
    plain, plain_sink = make_pipeline(Champion())
    slow = Slow(gated=True)
    shadow, sink, pipeline = shadowed_pipeline(slow, queue_batches=1)
    for b in range(4):
        await plain.process(events(5, start=5 * b))
        await pipeline.process(events(5, start=5 * b))
    assert sink.on("out") == plain_sink.on("out")
    slow.gate.set()
    await shadow.drain()


async def test_a_backfill_shadow_waits_for_room_and_never_skips():
    slow = Slow(gated=True)
    shadow, sink, pipeline = shadowed_pipeline(slow, queue_batches=1, wait=True)
    await pipeline.process(events(3, start=0))
    await asyncio.wait_for(slow.entered.wait(), 10)
    await pipeline.process(events(3, start=3))  # queued
    assert shadow._queue.full()
    putting = asyncio.Event()
    put = shadow._queue.put

    async def watched_put(job: object) -> None:
        putting.set()
        await put(job)  # type: ignore[arg-type]

    shadow._queue.put = watched_put  # type: ignore[method-assign]
    third = asyncio.create_task(pipeline.process(events(3, start=6)))
    await asyncio.wait_for(putting.wait(), 10)
    # The queue is full and the shadow's model shut: the offer cannot but wait, and the batch with it.
    assert shadow._queue.full() and not slow.gate.is_set() and not third.done()
    slow.gate.set()
    await asyncio.wait_for(third, 10)
    await asyncio.wait_for(shadow.drain(), 10)
    assert shadow.stats.skipped_batches == 0
    assert [s["id"] for s in sink.decoded(SHADOW_TOPIC)] == list(range(9))


async def test_a_shadow_that_raises_is_counted_and_the_pipeline_goes_on():
    class Flaky(Slow):
        fail = True

        async def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
            if self.fail:
                self.fail = False
                raise RuntimeError("shadow bug")
            return await super().predict(inputs)

    shadow, sink, pipeline = shadowed_pipeline(Flaky())
    await pipeline.process(events(3, start=0))
    await until(lambda: shadow.stats.errors == 1, "the shadow's failure counted")
    await pipeline.process(events(3, start=3))
    await asyncio.wait_for(shadow.drain(), 10)
    assert [o["id"] for o in sink.decoded("out")] == list(range(6))
    assert [s["id"] for s in sink.decoded(SHADOW_TOPIC)] == [3, 4, 5], "not retried; the next batch is scored"
    assert (shadow.stats.errors, shadow.stats.timeouts, shadow.stats.batches) == (1, 0, 1)


@pytest.mark.parametrize(
    "answer",
    [
        lambda n: np.zeros(n + 1),  # a prediction too many
        lambda n: np.array(["not", "a", "number"][:n]),  # not numbers at all
        lambda n: np.zeros((n, 0)),  # no column
    ],
    ids=["count", "strings", "no-column"],
)
async def test_a_shadow_answering_nonsense_is_counted_as_failed_and_never_stops_its_task(answer):
    class Nonsense(Slow):
        async def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
            return answer(int(inputs[0].shape[0]))

    shadow, sink, pipeline = shadowed_pipeline(Nonsense(), queue_batches=1, wait=True)
    for b in range(4):  # with wait=True, a dead task would leave the fourth offer waiting forever
        await asyncio.wait_for(pipeline.process(events(3, start=3 * b)), 10)
    await asyncio.wait_for(shadow.drain(), 10)
    assert shadow.stats.errors == 4
    assert sink.on(SHADOW_TOPIC) == [] and len(sink.on("out")) == 12


async def test_a_hung_shadow_with_a_timeout_counts_timeouts():
    slow = Slow(gated=True)
    shadow, _, pipeline = shadowed_pipeline(slow, timeout_s=TINY_S)
    await pipeline.process(events(2))
    await until(lambda: shadow.stats.timeouts == 1, "the shadow timed out")
    await asyncio.wait_for(shadow.drain(), 10)
    assert shadow.stats.errors == 0


class RefusingShadowSink(CollectingSink):
    """Refuses for good every record for the shadow topic; takes the rest."""

    async def send(self, records: Sequence[OutputRecord]) -> Awaitable[None]:
        refused = [(r, "RecordTooLarge") for r in records if r.topic == SHADOW_TOPIC]
        await (await super().send([r for r in records if r.topic != SHADOW_TOPIC]))
        return _refuse(refused)


async def _refuse(refused: list[tuple[OutputRecord, str]]) -> None:
    if refused:
        raise OutputRefused(refused)


class BrokenShadowSink(CollectingSink):
    async def send(self, records: Sequence[OutputRecord]) -> Awaitable[None]:
        if any(r.topic == SHADOW_TOPIC for r in records):
            raise RuntimeError("producer closed")
        return await super().send(records)


@pytest.mark.parametrize("sink_class", [RefusingShadowSink, BrokenShadowSink])
async def test_shadow_outputs_the_sink_refuses_are_lost_counted_never_dead_letters_nor_raised(sink_class):
    sink = sink_class()
    shadow = shadow_of(Slow(), sink)
    pipeline, _ = make_pipeline(Champion(), shadows=[shadow], sink=sink)
    await pipeline.process(events(3))
    await pipeline.process(events(2, start=3))
    await asyncio.wait_for(shadow.drain(), 10)
    assert shadow.lost_outputs == 5
    assert [o["id"] for o in sink.decoded("out")] == list(range(5))
    assert sink.on("dlq") == [], "the events were served: a shadow's lost output is no dead letter"
    assert shadow.stats.batches == 2


async def test_shadows_see_the_canarys_events_with_the_canarys_score_beside_them():
    class Candidate(SumRunner):
        name, version = "cand", "2"

        async def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
            return (await super().predict(inputs)) + 1000

    sink = CollectingSink()
    shadow = shadow_of(Slow(), sink)
    pipeline, _ = make_pipeline(Roles(Champion(), canary=Canary(Candidate(), 0.5)), shadows=[shadow], sink=sink)
    await pipeline.process(events(20))
    await asyncio.wait_for(shadow.drain(), 10)
    served = {o["id"]: o for o in sink.decoded("out")}
    shadowed = sink.decoded(SHADOW_TOPIC)
    assert sorted(s["id"] for s in shadowed) == list(range(20))
    for s in shadowed:
        o = served[s["id"]]
        assert s["served"] == {"model": o["model"], "model_version": o["model_version"], "prediction": o["prediction"]}
    assert {s["served"]["model"] for s in shadowed} == {"cand", "champ"}


async def test_dead_lettered_events_are_not_shadowed():
    class NaNOnTwo(SumRunner):
        name, version = "champ", "1"

        async def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
            sums = await super().predict(inputs)
            return np.where(inputs[0][:, 0] == 2, np.nan, sums)

    sink = CollectingSink()
    shadow = shadow_of(Slow(), sink)
    pipeline, _ = make_pipeline(NaNOnTwo(), shadows=[shadow], sink=sink)
    await pipeline.process(events(5))
    await asyncio.wait_for(shadow.drain(), 10)
    assert [s["id"] for s in sink.decoded(SHADOW_TOPIC)] == [0, 1, 3, 4]
    assert [s["served"]["prediction"] for s in sink.decoded(SHADOW_TOPIC)] == [1, 2, 4, 5]


async def test_a_backfill_shadow_is_keyed_by_position_like_its_served_outputs():
    sink = CollectingSink()
    shadow = shadow_of(Slow(), sink, key_by_position=True)
    pipeline, _ = make_pipeline(Champion(), shadows=[shadow], sink=sink, key_by_position=True)
    batch = events(3)
    await pipeline.process(batch)
    await asyncio.wait_for(shadow.drain(), 10)
    assert [r.key for r in sink.on(SHADOW_TOPIC)] == [position_key(r) for r in batch]
    assert [r.key for r in sink.on(SHADOW_TOPIC)] == [r.key for r in sink.on("out")]


async def test_draining_twice_or_before_any_batch_is_harmless_and_a_drained_shadow_starts_again():
    sink = CollectingSink()
    shadow = shadow_of(Slow(), sink)
    await shadow.drain()
    pipeline, _ = make_pipeline(Champion(), shadows=[shadow], sink=sink)
    await pipeline.process(events(2))
    await shadow.drain()
    await shadow.drain()
    await pipeline.process(events(2, start=2))
    await asyncio.wait_for(shadow.aclose(), 10)
    assert [s["id"] for s in sink.decoded(SHADOW_TOPIC)] == [0, 1, 2, 3]


async def test_cancelling_whoever_waits_for_a_drain_cancels_it():
    """Stopping a worker with a deadline must not have its cancellation swallowed by a stuck shadow."""
    slow = Slow(gated=True)
    shadow, _, pipeline = shadowed_pipeline(slow)
    await pipeline.process(events(2))
    await asyncio.wait_for(slow.entered.wait(), 10)
    draining = asyncio.create_task(shadow.drain())
    await until(lambda: shadow._queue.qsize() == 1, "the drain's end marker queued")
    draining.cancel()
    with pytest.raises(asyncio.CancelledError):
        await draining
    slow.gate.set()
    await asyncio.wait_for(shadow.drain(), 10)


def test_agreement_on_hand_made_predictions():
    agreement = Agreement(threshold=0.5)
    assert agreement.mean_abs_diff is None and agreement.flip_share is None
    agreement.observe(np.array([0.1, 0.6, 0.4, 0.9]), np.array([0.2, 0.4, 0.4, 0.95]))
    # |diffs| 0.1, 0.2, 0, 0.05; decisions at 0.5: only the second flips
    assert agreement.mean_abs_diff == pytest.approx(0.0875)
    assert agreement.flip_share == pytest.approx(0.25)
    agreement.observe(np.array([[0.5, 7.0], [0.49, 7.0]]), np.array([[0.49], [0.49]]))  # first column; 0.5 is "yes"
    assert agreement.events == 6 and agreement.flips == 2
    assert agreement.mean_abs_diff == pytest.approx((0.35 + 0.01) / 6)
    assert agreement.flip_share == pytest.approx(2 / 6)


def test_agreement_leaves_out_events_without_a_real_number_instead_of_becoming_nan():
    agreement = Agreement(threshold=0.5)
    agreement.observe(np.array([0.9, np.nan, 0.2, np.inf]), np.array([0.8, 0.3, 0.2, 0.1]))
    assert agreement.events == 2
    assert agreement.mean_abs_diff == pytest.approx(0.05)
    assert agreement.flip_share == 0.0


def test_model_stats_histograms_leave_out_scores_that_are_not_real_numbers():
    stats = ModelStats("champion", "champ", "1")
    stats.scored(np.array([0.1, np.nan, 0.9], dtype=np.float32), 0.001)
    assert stats.events == 3 and stats.batches == 1
    assert stats.scores.count == 2 and stats.scores.sum == pytest.approx(1.0)


async def test_a_live_shadow_scores_the_champions_small_batches_gathered_into_one():
    slow = Slow()
    shadow, sink, pipeline = shadowed_pipeline(slow, gather_s=3600, gather_rows=6)
    for b in range(3):
        await pipeline.process(events(2, start=2 * b))  # three batches of two: six rows, handed over
    await asyncio.wait_for(shadow.drain(), 10)
    assert slow.batches == [6], "one call of the shadow's model for the three batches"
    assert [s["id"] for s in sink.decoded(SHADOW_TOPIC)] == list(range(6))
    assert [s["source"]["offset"] for s in sink.decoded(SHADOW_TOPIC)] == list(range(6))


async def test_a_stopping_shadow_scores_what_it_had_gathered():
    slow = Slow()
    shadow, sink, pipeline = shadowed_pipeline(slow, gather_s=3600, gather_rows=1000)
    await pipeline.process(events(3))
    assert slow.batches == [], "still gathering"
    await asyncio.wait_for(shadow.drain(), 10)
    assert [s["id"] for s in sink.decoded(SHADOW_TOPIC)] == [0, 1, 2]


class WritesItsOwn(Slow):
    """A runner that writes the shadow's records itself (a shadow's process): it keeps what it is
    handed and says it lost ``lost`` records each time."""

    def __init__(self, lost: int) -> None:
        super().__init__(offset=0.25)
        self.lost = lost
        self.extras: list[object] = []

    async def predict_with(self, inputs: Sequence[np.ndarray], extra: object) -> tuple[np.ndarray, object]:
        self.extras.append(extra)
        return await self.predict(inputs), self.lost


async def test_a_runner_that_writes_the_records_gets_what_they_carry_and_its_losses_are_counted():
    runner = WritesItsOwn(lost=2)
    shadow, sink, pipeline = shadowed_pipeline(runner, aside=runner)
    await pipeline.process(events(3))
    await pipeline.process(events(2, start=3))
    await asyncio.wait_for(shadow.drain(), 10)
    assert sink.on(SHADOW_TOPIC) == [], "written where the model runs, not here"
    assert shadow.lost_outputs == 4 and (shadow.stats.batches, shadow.stats.events) == (2, 5)
    positions, ids, served, served_name, served_version = runner.extras[1]  # type: ignore[misc]
    # Plain tuples cross the pipe (cheap to pickle); the process makes them records again.
    assert positions == [(r.topic, r.partition, r.offset, r.timestamp, r.key) for r in events(2, start=3)]
    assert [(p.topic, p.offset, p.value) for p in as_positions(positions)] == [("in", 3, None), ("in", 4, None)]
    assert ids == [3, 4] and served.tolist() == [4.0, 5.0] and (served_name, served_version) == ("champ", "1")
    assert shadow.stats.agreement is not None and shadow.stats.agreement.mean_abs_diff == pytest.approx(0.25)
