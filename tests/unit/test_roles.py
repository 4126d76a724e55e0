"""Model roles (streams.flow.roles) through a real Pipeline: a champion behind a circuit breaker,
a fallback that scores while it is open, the inference timeout, and per-record isolation kept.
Models that fail do so on purpose; models that hang wait on an event the test controls."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence

import numpy as np
import orjson
import pytest

import streams.flow.backoff
from models.protocol import Runner
from streams.codecs.codec import EventSchema, TensorField
from streams.errors import ModelTimeout, ModelUnavailableError
from streams.features.serving import key_view
from streams.features.spec import StateSpec, Window
from streams.features.step import FeatureStep
from streams.flow.batcher import Batcher, BatchPolicy
from streams.flow.breaker import BreakerPolicy, Circuit
from streams.flow.canary import Canary, key_share
from streams.flow.cost_model import CostModel
from streams.flow.driver import Driver
from streams.flow.pipeline import Pipeline, PipelineTopics
from streams.flow.roles import ConstantRunner, Roles
from streams.flow.shadow import Shadow
from streams.flow.stateful_inputs import ModelInput, StatefulInputs, decoded_fields
from streams.records import InputRecord, Partition
from streams.testing import CollectingSink
from tests.fakes import ListSource, RecordingProgress, SumRunner

SCHEMA = EventSchema(id_field="id", inputs=(TensorField("x", (2,)),))
TOPICS = PipelineTopics(output="out", dead_letter="dlq")
# A timeout for models that provably never answer until released: its size cannot make a race.
TINY_S = 0.01
# The fields of a champion's output, exactly as before roles existed.
PLAIN_FIELDS = {"id", "prediction", "model", "model_version", "source", "event_ts", "latency_ms"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def make_pipeline(
    runner: Runner | Roles,
    *,
    shadows: Sequence[Shadow] = (),
    stateful: StatefulInputs | None = None,
    schema: EventSchema = SCHEMA,
    key_by_position: bool = False,
    sink: CollectingSink | None = None,
) -> tuple[Pipeline, CollectingSink]:
    sink = sink or CollectingSink()
    pipeline = Pipeline(
        name="p",
        schema=schema,
        runner=runner,
        sink=sink,
        topics=TOPICS,
        clock_ms=lambda: 5_000,
        shadows=shadows,
        stateful=stateful,
        key_by_position=key_by_position,
    )
    return pipeline, sink


def key_of(i: int) -> bytes:
    return f"key-{i}".encode()


def events(n: int, start: int = 0, *, key=key_of, partition: int = 0) -> list[InputRecord]:
    """Event i has id i, x = [i, 1] (a sum of i + 1), key ``key(i)``, at offset i."""
    return [
        InputRecord("in", partition, i, 4_000, key(i), orjson.dumps({"id": i, "x": [i, 1]}))
        for i in range(start, start + n)
    ]


class Champion(SumRunner):
    """Sums rows; while ``failing``, raises ``error`` on every call, as a model whose device is lost."""

    name = "champ"
    version = "1"

    def __init__(self, *, failing: bool = False, error: Exception | None = None) -> None:
        super().__init__()
        self.failing = failing
        self.error = error or RuntimeError("CUDA error: device lost")
        self.calls = 0

    async def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        self.calls += 1
        if self.failing:
            raise self.error
        return await super().predict(inputs)


class Halves(SumRunner):
    """A cheap model as a fallback: half the sum."""

    name = "halves"
    version = "7"

    async def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        return (await super().predict(inputs)) / 2


class Hangs(SumRunner):
    """Waits for ``release``, which the test sets only when it wants answers: a stuck device."""

    name = "champ"
    version = "1"

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.entered = 0

    async def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        self.entered += 1
        await self.release.wait()
        return await super().predict(inputs)


class Poisoned(SumRunner):
    """Raises on any batch holding a row whose first value is 13; fine on everything else."""

    name = "champ"
    version = "1"

    async def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        if (inputs[0][:, 0] == 13).any():
            raise ValueError("cannot handle 13")
        return await super().predict(inputs)


def fallback_of(kind: str) -> tuple[Runner, str, str, float]:
    """A fallback, its name and version, and what it predicts for event i (as a multiple of i + 1, or a constant)."""
    if kind == "constant":
        return ConstantRunner(0.25), "constant", "0.25", 0.0
    return Halves(), "halves", "7", 0.5


def expected(kind_scale: float, i: int) -> float:
    return 0.25 if kind_scale == 0.0 else (i + 1) * kind_scale


@pytest.mark.parametrize("kind", ["constant", "runner"])
@pytest.mark.parametrize("error", [RuntimeError("CUDA error: device lost"), ModelUnavailableError("device lost")])
async def test_a_champion_failing_every_batch_is_replaced_by_the_fallback_one_output_per_event(kind, error):
    fallback, name, version, scale = fallback_of(kind)
    champion, clock = Champion(failing=True, error=error), FakeClock()
    policy = BreakerPolicy(failures=3, cooldown_s=10.0)
    roles = Roles(champion, fallback=fallback, policy=policy, clock=clock)
    pipeline, sink = make_pipeline(roles)
    calls_after = []
    for b in range(6):
        outcome = await pipeline.process(events(4, start=4 * b))
        assert (outcome.scored, outcome.dead_lettered) == (4, 0)
        calls_after.append(champion.calls)
    assert calls_after[0] < calls_after[1] < calls_after[2], "the champion is tried until the breaker opens"
    assert calls_after[2] == calls_after[5], "open: the champion is not called at all"
    assert roles.breaker.state is Circuit.OPEN

    out = sink.decoded("out")
    assert [o["id"] for o in out] == list(range(24)), "exactly one primary output per event, in order"
    assert sink.on("dlq") == [], "a failing champion costs no event a dead letter"
    for o in out:
        assert (o["role"], o["fallback"], o["model"], o["model_version"]) == ("fallback", True, name, version)
        assert o["prediction"] == pytest.approx(expected(scale, o["id"]))
    reasons = [o["fallback_reason"] for o in out]
    assert all("device lost" in r for r in reasons[:12]), "the champion's own error, while it was tried"
    assert all(r.startswith("the champion's circuit is open (") and "device lost" in r for r in reasons[12:])

    stats = roles.book.of("champion", "champ", "1")
    assert (stats.errors, stats.batches) == (3, 0)
    used = roles.book.of("fallback", name, version)
    assert (used.batches, used.events) == (6, 24)

    # After the cool-down the champion is probed; recovered, it serves again, its outputs as before.
    clock.now += 10.0
    champion.failing = False
    await pipeline.process(events(4, start=24))
    assert champion.calls == calls_after[5] + 1, "one probe"
    assert roles.breaker.state is Circuit.CLOSED
    recovered = sink.decoded("out")[24:]
    assert [o["id"] for o in recovered] == [24, 25, 26, 27]
    assert all(set(o) == PLAIN_FIELDS for o in recovered), "no role field once the champion serves"
    assert [(o["model"], o["prediction"]) for o in recovered] == [("champ", i + 1) for i in range(24, 28)]


async def test_a_failed_probe_reopens_the_breaker_and_the_fallback_keeps_serving():
    champion, clock = Champion(failing=True, error=ModelUnavailableError("device lost")), FakeClock()
    roles = Roles(champion, fallback=ConstantRunner(0.0), policy=BreakerPolicy(failures=2, cooldown_s=5.0), clock=clock)
    pipeline, sink = make_pipeline(roles)
    for b in range(3):
        await pipeline.process(events(2, start=2 * b))
    assert champion.calls == 2
    clock.now += 5.0
    await pipeline.process(events(2, start=6))
    assert champion.calls == 3, "the probe"
    assert roles.breaker.state is Circuit.OPEN and roles.breaker.trips == 2
    await pipeline.process(events(2, start=8))
    assert champion.calls == 3, "reopened: not called during the new cool-down"
    out = sink.decoded("out")
    assert [o["id"] for o in out] == list(range(10))
    assert all(o["fallback"] is True for o in out)


async def test_a_hung_champion_times_out_and_the_fallback_scores_until_it_answers_again():
    champion, clock = Hangs(), FakeClock()
    policy = BreakerPolicy(failures=2, cooldown_s=30.0, timeout_s=TINY_S)
    roles = Roles(champion, fallback=ConstantRunner(0.0), policy=policy, clock=clock)
    pipeline, sink = make_pipeline(roles)
    for b in range(4):
        await pipeline.process(events(3, start=3 * b))
    assert champion.entered == 2, "two timeouts open the breaker: no batch waits for a stuck model after that"
    out = sink.decoded("out")
    assert [o["id"] for o in out] == list(range(12))
    assert all(o["role"] == "fallback" and o["prediction"] == 0.0 for o in out)
    assert "inference timeout" in out[0]["fallback_reason"]
    stats = roles.book.of("champion", "champ", "1")
    assert (stats.timeouts, stats.errors) == (2, 0)

    champion.release.set()  # the device is back
    clock.now += 30.0
    await pipeline.process(events(3, start=12))
    assert [(o["id"], o["prediction"]) for o in sink.decoded("out")[12:]] == [(12, 13), (13, 14), (14, 15)]
    assert all("role" not in o for o in sink.decoded("out")[12:])
    assert roles.breaker.state is Circuit.CLOSED


async def test_without_a_fallback_a_hung_champion_raises_the_retriable_timeout_and_emits_nothing():
    champion = Hangs()
    roles = Roles(champion, policy=BreakerPolicy(failures=1, timeout_s=TINY_S))
    pipeline, sink = make_pipeline(roles)
    for _ in range(3):
        with pytest.raises(ModelTimeout) as raised:
            await pipeline.process(events(3))
        assert raised.value.retriable
    assert sink.records == []
    assert champion.entered == 3, "no breaker without a fallback: each retry tries the model"
    assert roles.breaker.state is Circuit.CLOSED
    champion.release.set()


async def test_without_a_fallback_a_failing_champion_raises_and_emits_nothing():
    champion = Champion(failing=True)
    pipeline, sink = make_pipeline(Roles(champion, policy=BreakerPolicy(failures=1)))
    with pytest.raises(ModelUnavailableError, match="device lost") as raised:
        await pipeline.process(events(3))
    assert raised.value.retriable and not isinstance(raised.value, ModelTimeout)
    assert sink.records == []


async def test_without_a_fallback_the_driver_retries_a_timed_out_batch_until_the_model_answers(monkeypatch):
    """Today's retry path, with the timeout: a model stuck for two calls, then answering."""
    monkeypatch.setattr(streams.flow.backoff, "FIRST_RETRY_S", 0.001)

    class StuckTwice(SumRunner):
        name, version = "champ", "1"

        def __init__(self) -> None:
            super().__init__()
            self.stuck = 2
            self.never = asyncio.Event()

        async def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
            if self.stuck:
                self.stuck -= 1
                await self.never.wait()
            return await super().predict(inputs)

    runner = StuckTwice()
    sink = CollectingSink()
    pipeline, _ = make_pipeline(Roles(runner, policy=BreakerPolicy(timeout_s=TINY_S)), sink=sink)
    cost = CostModel()
    cost.seed({1: 1e-4, 8: 1e-3})
    batcher = Batcher(BatchPolicy(max_batch_size=8, latency_budget_ms=None), cost)
    driver = Driver(ListSource(events(20)), pipeline, batcher, RecordingProgress(), clock_ms=lambda: 5_000)
    await asyncio.wait_for(driver.run(), 30)
    out = sink.decoded("out")
    assert sorted(o["id"] for o in out) == list(range(20)), "each event scored once, after the retries"
    assert all(set(o) == PLAIN_FIELDS for o in out)
    assert runner.stuck == 0


async def test_a_champion_raising_on_one_row_still_dead_letters_only_that_row_not_the_fallback():
    fallback = Halves()
    roles = Roles(Poisoned(), fallback=fallback, policy=BreakerPolicy(failures=1))
    pipeline, sink = make_pipeline(roles)
    outcome = await pipeline.process(events(8, start=10))
    assert (outcome.scored, outcome.dead_lettered) == (7, 1)
    assert fallback.batches == [], "one bad row is not a failed model"
    out = sink.decoded("out")
    assert [o["id"] for o in out] == [10, 11, 12, 14, 15, 16, 17]
    assert all(set(o) == PLAIN_FIELDS and o["model"] == "champ" for o in out)
    [dead] = sink.decoded("dlq")
    assert (dead["error"], dead["source"]["offset"]) == ("ModelError", 13)
    assert "cannot handle 13" in dead["reason"]
    assert roles.breaker.state is Circuit.CLOSED and roles.breaker.trips == 0


async def test_a_fallback_that_fails_too_raises_with_both_reasons_and_emits_nothing():
    class Broken(SumRunner):
        name, version = "backup", "2"

        async def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
            raise RuntimeError("backup down")

    roles = Roles(Champion(failing=True), fallback=Broken(), policy=BreakerPolicy(failures=1))
    pipeline, sink = make_pipeline(roles)
    with pytest.raises(ModelUnavailableError) as raised:
        await pipeline.process(events(3))
    assert raised.value.retriable
    assert "device lost" in str(raised.value) and "backup down" in str(raised.value)
    assert sink.records == []


async def test_a_nan_from_one_group_is_dead_lettered_and_both_groups_score_the_rest():
    class NaNOnTwo(SumRunner):
        name, version = "canary", "2"

        async def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
            sums = await super().predict(inputs)
            return np.where(inputs[0][:, 0] == 2, np.nan, sums)

    on_canary = {i for i in range(12) if key_share(key_of(i)) < 0.5}
    assert 2 in on_canary and 3 not in on_canary, "the fixed hash puts key-2 on the canary, key-3 not"
    roles = Roles(Champion(), canary=Canary(NaNOnTwo(), 0.5))
    pipeline, sink = make_pipeline(roles)
    outcome = await pipeline.process(events(12))
    assert (outcome.scored, outcome.dead_lettered) == (11, 1)
    [dead] = sink.decoded("dlq")
    assert (dead["error"], dead["source"]["offset"]) == ("ModelError", 2) and "NaN" in dead["reason"]
    out = {o["id"]: o for o in sink.decoded("out")}
    assert sorted(out) == [i for i in range(12) if i != 2]
    assert all(out[i]["model"] == ("canary" if i in on_canary else "champ") for i in out)
    scores = roles.book.of("canary", "canary", "2").scores
    assert scores.count == len(on_canary) - 1 and math.isfinite(scores.sum), "the NaN is in no histogram"


async def test_swapping_the_champion_closes_an_open_breaker():
    clock = FakeClock()
    roles = Roles(Champion(failing=True), fallback=ConstantRunner(0.0), policy=BreakerPolicy(failures=1), clock=clock)
    pipeline, sink = make_pipeline(roles)
    await pipeline.process(events(2))
    assert roles.breaker.state is Circuit.OPEN
    pipeline.use_runner(Champion())
    await pipeline.process(events(2, start=2))
    assert [o.get("role") for o in sink.decoded("out")] == ["fallback", "fallback", None, None]


async def test_closing_the_roles_closes_every_model_once():
    closed: list[str] = []

    def closing(name: str) -> SumRunner:
        class Closing(SumRunner):
            async def aclose(self) -> None:
                closed.append(name)

        return Closing()

    roles = Roles(closing("champion"), canary=Canary(closing("canary"), 0.1), fallback=closing("fallback"))
    await roles.aclose()
    assert sorted(closed) == ["canary", "champion", "fallback"]


def stateful_parts() -> tuple[StatefulInputs, EventSchema]:
    spec = StateSpec((Window("n", "count", None, 60_000),), ttl_ms=600_000)
    inputs = (ModelInput("x", (2,)), ModelInput("n", (), from_state=True))
    fields = decoded_fields(inputs, spec.fields)
    return StatefulInputs(FeatureStep(spec, changelog=False), inputs, fields), EventSchema("id", fields)


async def test_each_key_remembers_the_version_of_the_model_that_scored_it():
    class Candidate(SumRunner):
        name, version = "cand", "2"

    state, schema = stateful_parts()
    clock = FakeClock()
    champion = Champion()
    roles = Roles(
        champion, canary=Canary(Candidate(), 0.5), fallback=Halves(), policy=BreakerPolicy(failures=1), clock=clock
    )
    pipeline, sink = make_pipeline(roles, stateful=state, schema=schema)
    await pipeline.process(events(12))
    on_canary = {i for i in range(12) if key_share(key_of(i)) < 0.5}
    partition = Partition("in", 0)

    def version(i: int) -> str:
        view = key_view(state.step, partition, key_of(i))
        assert view is not None and view["last_prediction"] is not None
        return view["last_prediction"]["model_version"]

    assert {i: version(i) for i in range(12)} == {i: "2" if i in on_canary else "1" for i in range(12)}
    assert len(sink.decoded("out")) == 12

    champion.failing = True  # the fallback scores the champion's keys of the next batch
    await pipeline.process(events(12, start=12, key=lambda i: key_of(i - 12)))
    assert {i: version(i) for i in range(12)} == {i: "2" if i in on_canary else "7" for i in range(12)}
