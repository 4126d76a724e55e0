from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence

import numpy as np
import orjson
import pytest

from models.protocol import Runner
from streams.codecs.codec import EventSchema, TensorField
from streams.errors import OutputRefused
from streams.flow.batcher import Batcher, BatchPolicy
from streams.flow.cost_model import CostModel
from streams.flow.driver import Driver
from streams.flow.pipeline import Pipeline, PipelineTopics
from streams.records import HeaderPolicy, InputRecord, OutputRecord
from tests.fakes import ListSink, ListSource, RecordingProgress, SumRunner

SCHEMA = EventSchema(id_field="id", inputs=(TensorField("x", (2,)),))


def make_pipeline(headers: HeaderPolicy = "all") -> tuple[Pipeline, SumRunner, ListSink]:
    runner, sink = SumRunner(), ListSink()
    pipeline = Pipeline(
        name="p",
        schema=SCHEMA,
        runner=runner,
        sink=sink,
        topics=PipelineTopics(output="out", dead_letter="dlq"),
        clock_ms=lambda: 5_000,
        headers=headers,
    )
    return pipeline, runner, sink


def rec(offset: int, value: bytes | None, partition: int = 0) -> InputRecord:
    return InputRecord("in", partition, offset, 4_000, f"key-{offset}".encode(), value)


def test_the_fake_runner_satisfies_the_protocol():
    assert isinstance(SumRunner(), Runner)


async def test_every_valid_event_gets_one_prediction_keyed_like_its_input():
    pipeline, runner, sink = make_pipeline()
    batch = [rec(i, orjson.dumps({"id": i, "x": [i, 1]}), partition=i % 2) for i in range(6)]
    outcome = await pipeline.process(batch)
    assert (outcome.events, outcome.scored, outcome.dead_lettered) == (6, 6, 0)
    assert runner.batches == [6], "the whole batch goes to the model at once"
    bodies = [orjson.loads(r.value) for r in sink.records]
    assert [b["id"] for b in bodies] == list(range(6))
    assert [b["prediction"] for b in bodies] == [i + 1 for i in range(6)]
    assert [r.key for r in sink.records] == [f"key-{i}".encode() for i in range(6)]
    assert {r.topic for r in sink.records} == {"out"}
    assert bodies[3]["latency_ms"] == 1_000


async def test_bad_events_go_to_the_dead_letter_topic_and_the_rest_are_scored():
    pipeline, _, sink = make_pipeline()
    batch = [rec(0, orjson.dumps({"id": 0, "x": [1, 1]})), rec(1, b"\x00\x9f"), rec(2, None)]
    outcome = await pipeline.process(batch)
    assert (outcome.scored, outcome.dead_lettered) == (1, 2)
    scored = [r for r in sink.records if r.topic == "out"]
    dead = [orjson.loads(r.value) for r in sink.records if r.topic == "dlq"]
    assert len(scored) == 1
    assert [d["error"] for d in dead] == ["InvalidJSON", "Tombstone"]
    assert dead[0]["source"] == {"topic": "in", "partition": 0, "offset": 1, "timestamp": 4_000}
    assert dead[0]["value_base64"] == "AJ8="
    assert dead[0]["pipeline"] == "p"
    assert dead[1]["value"] is None


async def test_a_batch_of_only_bad_events_never_calls_the_model():
    pipeline, runner, sink = make_pipeline()
    await pipeline.process([rec(0, b"[]")])
    assert runner.batches == []
    assert [r.topic for r in sink.records] == ["dlq"]


async def test_expired_events_go_to_the_dead_letter_topic_and_the_rest_are_scored_in_order():
    pipeline, runner, sink = make_pipeline()
    batch = [rec(i, orjson.dumps({"id": i, "x": [i, 0]})) for i in range(5)]
    scored = await pipeline.score(batch, expired=[0, 3])
    await pipeline.delivery.deliver(scored.outputs)
    assert runner.batches == [3]
    predictions = [orjson.loads(r.value) for r in sink.records if r.topic == "out"]
    assert [(p["id"], p["prediction"]) for p in predictions] == [(1, 1.0), (2, 2.0), (4, 4.0)]
    dead = [orjson.loads(r.value) for r in sink.records if r.topic == "dlq"]
    assert [(d["source"]["offset"], d["error"]) for d in dead] == [(0, "Expired"), (3, "Expired")]
    assert scored.outcome.errors == {"Expired": 2}


class RefusingSink(ListSink):
    """Refuses for good every record whose value holds ``marker``, as a broker refuses a record
    that is too large or invalid; acknowledges the rest."""

    def __init__(self, marker: bytes) -> None:
        super().__init__()
        self.marker = marker

    async def send(self, records: Sequence[OutputRecord]) -> Awaitable[None]:
        refused = [(r, "InvalidRecord") for r in records if self.marker in r.value]
        await (await super().send([r for r in records if self.marker not in r.value]))
        return _refuse(refused)


async def _refuse(refused: list[tuple[OutputRecord, str]]) -> None:
    if refused:
        raise OutputRefused(refused)


async def test_an_output_refused_for_good_becomes_a_minimal_dead_letter_and_the_batch_completes():
    pipeline, _, _ = make_pipeline()
    sink = RefusingSink(marker=b'"id":"refuse-me"')
    pipeline.delivery.sink = sink
    batch = [rec(i, orjson.dumps({"id": "refuse-me" if i == 1 else i, "x": [i, 1]})) for i in range(3)]
    await pipeline.delivery.deliver((await pipeline.score(batch)).outputs)
    assert [orjson.loads(r.value)["id"] for r in sink.records if r.topic == "out"] == [0, 2]
    [letter] = [orjson.loads(r.value) for r in sink.records if r.topic == "dlq"]
    assert letter["error"] == "OutputRefused" and letter["source"]["offset"] == 1
    assert pipeline.delivery.lost_outputs == 0


async def test_an_output_whose_minimal_dead_letter_is_refused_too_is_counted_as_lost_and_the_batch_completes(caplog):
    pipeline, _, _ = make_pipeline()
    pipeline.delivery.sink = RefusingSink(marker=b'"offset":1')  # refuses the prediction and its replacement
    batch = [rec(i, orjson.dumps({"id": i, "x": [i, 1]})) for i in range(3)]
    await pipeline.delivery.deliver((await pipeline.score(batch)).outputs)
    assert pipeline.delivery.lost_outputs == 1
    assert "LOST OUTPUT" in caplog.text and '"offset":1' in caplog.text


class NaNRunner(SumRunner):
    async def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        sums = await super().predict(inputs)
        return np.where(sums > 10, np.nan, sums)


async def test_a_nan_prediction_is_dead_lettered_as_a_model_error_not_emitted_as_null():
    pipeline, _, sink = make_pipeline()
    pipeline.use_runner(NaNRunner())
    batch = [rec(i, orjson.dumps({"id": i, "x": [i * 4, 0]})) for i in range(5)]  # sums 0, 4, 8, 12, 16
    outcome = await pipeline.process(batch)
    assert (outcome.scored, outcome.dead_lettered) == (3, 2)
    assert [orjson.loads(r.value)["prediction"] for r in sink.records if r.topic == "out"] == [0, 4, 8]
    dead = [orjson.loads(r.value) for r in sink.records if r.topic == "dlq"]
    assert [(d["source"]["offset"], d["error"]) for d in dead] == [(3, "ModelError"), (4, "ModelError")]
    assert "NaN" in dead[0]["reason"]


@pytest.mark.parametrize(
    ("policy", "carried"),
    [("all", (("trace-id", b"t1"), ("tenant", b"a"))), ("none", ()), (("trace-id",), (("trace-id", b"t1"),))],
)
async def test_input_headers_are_carried_to_predictions_and_dead_letters(policy, carried):
    pipeline, _, sink = make_pipeline(headers=policy)
    headers = (("trace-id", b"t1"), ("tenant", b"a"))
    batch = [
        InputRecord("in", 0, 0, 4_000, b"k", orjson.dumps({"id": 0, "x": [1, 1]}), headers),
        InputRecord("in", 0, 1, 4_000, b"k", b"broken", headers),
    ]
    await pipeline.process(batch)
    assert [(r.topic, tuple(r.headers)) for r in sink.records] == [("out", carried), ("dlq", carried)]


async def test_a_late_event_counts_in_its_keys_state_then_leaves_as_a_dead_letter(tmp_path):
    """``late_events = "dead_letter"`` in a stateful pipeline: the late event happened all the same,
    so the key's later events see it in their features; it is dead-lettered, never scored."""
    from app.testing import Event, score_async
    from tests.unit.test_testing_kit import STATEFUL, transaction

    config = tmp_path / "sluice.toml"
    config.write_text(
        STATEFUL.replace("STORE", "").replace(
            "emit_features = true", 'emit_features = true\nlate_events = "dead_letter"'
        )
    )
    now = 10_000_000
    stamps = [now - 1_000_000, now - 900_000, now - 10, now - 5]  # the first two missed their budget
    events = [Event(transaction(i, amount=float(i + 1)), key="a", timestamp=t) for i, t in enumerate(stamps)]
    out = await score_async(config, "spend", events, now_ms=now, environ={})
    assert [(d["error"], d["source"]["offset"]) for d in out.dead_letters] == [("Expired", 0), ("Expired", 1)]
    assert {p["id"]: p["features"]["spend"] for p in out.predictions} == {"tx-2": 3.0, "tx-3": 6.0}


SCHEMA2 = EventSchema(id_field="id", inputs=(TensorField("x", (2,)),))


async def test_a_late_event_is_dead_lettered_as_expired_in_a_stateless_pipeline_whatever_its_value():
    """README (late_events): with ``dead_letter``, an event past its budget goes to the dead-letter
    topic as ``Expired``; a stateless pipeline does not even decode it (under a backlog, the case
    the option is for, that work is saved), so a late event that is not JSON is ``Expired`` too."""
    records = [
        InputRecord("in", 0, 0, 1_000, None, b"{not json"),
        InputRecord("in", 0, 1, 1_000, None, orjson.dumps({"id": 1, "x": [1, 1]})),
    ]
    sink = ListSink()
    pipeline = Pipeline(
        name="p",
        schema=SCHEMA2,
        runner=SumRunner(),
        sink=sink,
        topics=PipelineTopics(output="out", dead_letter="dlq"),
        clock_ms=lambda: 2_000,
    )
    cost = CostModel()
    cost.seed({1: 1e-4, 16: 1e-3})
    # Stamped at 1 000 ms with a 10 ms budget, read at 2 000 ms: both events are late.
    batcher = Batcher(BatchPolicy(max_batch_size=16, latency_budget_ms=10), cost)
    driver = Driver(
        ListSource(records),
        pipeline,
        batcher,
        RecordingProgress(),
        late_events="dead_letter",
        on_model_down="raise",
        clock_ms=lambda: 2_000,
    )
    await asyncio.wait_for(driver.run(), 10)
    dead = [orjson.loads(r.value) for r in sink.records if r.topic == "dlq"]
    assert [(d["source"]["offset"], d["error"]) for d in dead] == [(0, "Expired"), (1, "Expired")]
