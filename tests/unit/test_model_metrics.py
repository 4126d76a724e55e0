"""Evidence by model version: read from a running pipeline's models, exported by the collector,
and summed up in the stats line."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from streams.codecs.codec import EventSchema, TensorField
from streams.errors import ModelUnavailableError
from streams.flow.batcher import Batcher, BatchPolicy
from streams.flow.breaker import BreakerPolicy, Circuit
from streams.flow.canary import Canary
from streams.flow.cost_model import CostModel
from streams.flow.delivery import Delivery
from streams.flow.driver import Driver
from streams.flow.live_stats import LiveStats, models_part
from streams.flow.model_metrics import PipelineModels, model_families
from streams.flow.model_stats import Agreement, ModelBook
from streams.flow.pipeline import Pipeline, PipelineTopics
from streams.flow.roles import ConstantRunner, Roles
from streams.flow.shadow import Shadow
from streams.metrics import PipelineMetrics, SluiceCollector
from streams.records import InputRecord, Partition
from tests.fakes import ListSink, ListSource, RecordingProgress, SumRunner

SCHEMA = EventSchema(id_field="id", inputs=(TensorField("x", (2,)),))


class CanaryRunner(SumRunner):
    name = "sum"
    version = "2"


class Transformer(SumRunner):
    """A shadow that scores every event 0.5 above the champion."""

    name = "transformer"
    version = "7"

    async def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        return await super().predict(inputs) + 0.5


class DownRunner(SumRunner):
    async def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        raise ModelUnavailableError("the device is gone")


def evidence() -> PipelineModels:
    """A pipeline's models after some traffic, counted by the engine's own ``ModelBook``."""
    book = ModelBook()
    champion = book.of("champion", "mlp", "1")
    champion.scored(np.array([0.1, 0.2, 0.9]), 0.002)
    champion.scored(np.array([0.3]), 0.004)
    champion.failed(timed_out=True)
    canary = book.of("canary", "mlp", "2")
    canary.scored(np.array([0.6, 0.7]), 0.003)
    canary.failed(timed_out=False)
    book.of("fallback", "constant", "0.0").scored(np.array([0.0, 0.0]), 0.0001)
    shadow = book.of("shadow", "transformer", "7")
    shadow.scored(np.array([0.4, 0.6, 0.2, 0.8]), 0.02)
    shadow.skipped(5)
    shadow.agreement = Agreement(threshold=0.5)
    shadow.agreement.observe(np.array([0.4, 0.6, 0.2, 0.8]), np.array([0.1, 0.2, 0.3, 0.9]))
    return PipelineModels(
        in_use=[("champion", "mlp", "1"), ("canary", "mlp", "2"), ("shadow", "transformer", "7")],
        stats=list(book.models.values()),
        circuit=Circuit.OPEN,
        circuit_trips=2,
        canary_rolled_back=False,
        shadow_lost_outputs={("transformer", "7"): 3},
    )


class ModelsProbe:
    """A live probe with nothing queued, and the given models' evidence."""

    def __init__(self, models: PipelineModels | None) -> None:
        self.models = models

    def queue_depth(self) -> int:
        return 0

    def lag_by_partition(self) -> dict[Partition, int]:
        return {}

    def serving(self) -> tuple[str, str] | None:
        return None

    def predicted_batch_seconds(self) -> dict[int, float]:
        return {}

    def model_unavailable(self) -> bool:
        return False

    def lost_outputs(self) -> int:
        return 0

    def model_metrics(self, pipeline: str) -> list[Metric]:
        return [] if self.models is None else model_families(pipeline, self.models)


def metrics_text(pipelines: dict[str, PipelineModels | None]) -> str:
    """What a worker's ``/metrics`` serves for these pipelines (the collector's own text)."""
    collector = SluiceCollector()
    for name, models in pipelines.items():
        collector.register(PipelineMetrics(name, probe=ModelsProbe(models)))
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry).decode()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def labels(pipeline: str, role: str, model: str, version: str) -> tuple[tuple[str, str], ...]:
    return (("model", model), ("pipeline", pipeline), ("role", role), ("version", version))


def bucket(of: tuple[tuple[str, str], ...], le: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((*of, ("le", le))))


def test_each_model_is_counted_by_pipeline_role_model_and_version():
    got = samples(metrics_text({"fraud": evidence()}))
    champion, canary = labels("fraud", "champion", "mlp", "1"), labels("fraud", "canary", "mlp", "2")
    shadow = labels("fraud", "shadow", "transformer", "7")
    assert got[("sluice_model_batches_total", champion)] == 2
    assert got[("sluice_model_events_total", champion)] == 4
    assert got[("sluice_model_timeouts_total", champion)] == 1
    assert got[("sluice_model_errors_total", champion)] == 0
    assert got[("sluice_model_errors_total", canary)] == 1
    assert got[("sluice_model_events_total", labels("fraud", "fallback", "constant", "0.0"))] == 2
    assert got[("sluice_model_skipped_batches_total", shadow)] == 1
    assert got[("sluice_model_skipped_events_total", shadow)] == 5
    assert got[("sluice_model_inference_seconds_count", champion)] == 2
    assert got[("sluice_model_inference_seconds_bucket", bucket(champion, "0.0025"))] == 1
    assert np.isclose(got[("sluice_model_inference_seconds_sum", champion)], 0.006)
    # The scores' histogram: 0.1 and 0.2 at or under 0.2, all four under +Inf, their sum for a mean.
    assert got[("sluice_model_score_bucket", bucket(champion, "0.2"))] == 2
    assert got[("sluice_model_score_count", champion)] == 4
    assert np.isclose(got[("sluice_model_score_sum", champion)], 1.5)


def test_every_model_in_use_is_named_with_its_role():
    got = samples(metrics_text({"fraud": evidence()}))
    info = {key[1] for key in got if key[0] == "sluice_model_info"}
    assert info == {
        labels("fraud", "champion", "mlp", "1"),
        labels("fraud", "canary", "mlp", "2"),
        labels("fraud", "shadow", "transformer", "7"),
    }


def test_a_shadow_agreement_is_exported_with_its_threshold():
    got = samples(metrics_text({"fraud": evidence()}))
    shadow = (("model", "transformer"), ("pipeline", "fraud"), ("threshold", "0.5"), ("version", "7"))
    # |0.4-0.1| + |0.6-0.2| + |0.2-0.3| + |0.8-0.9| = 0.9 over 4 events; 0.6 vs 0.2 flips at 0.5.
    assert np.isclose(got[("sluice_shadow_mean_abs_diff", shadow)], 0.225)
    assert got[("sluice_shadow_decision_flip_share", shadow)] == 0.25
    assert got[("sluice_shadow_compared_events_total", shadow)] == 4
    lost = (("model", "transformer"), ("pipeline", "fraud"), ("version", "7"))
    assert got[("sluice_shadow_lost_outputs_total", lost)] == 3


def test_the_circuit_and_the_canary_are_one_number_each_by_pipeline():
    rolled_back = PipelineModels([("champion", "mlp", "1")], [], Circuit.HALF_OPEN, 1, canary_rolled_back=True)
    got = samples(metrics_text({"fraud": evidence(), "quiet": rolled_back, "fraud-rekey": None}))
    assert got[("sluice_circuit_state", (("pipeline", "fraud"),))] == 2
    assert got[("sluice_circuit_state", (("pipeline", "quiet"),))] == 1
    assert got[("sluice_circuit_trips_total", (("pipeline", "fraud"),))] == 2
    assert got[("sluice_canary_rolled_back", (("pipeline", "fraud"),))] == 0
    assert got[("sluice_canary_rolled_back", (("pipeline", "quiet"),))] == 1
    assert not any(dict(key[1]).get("pipeline") == "fraud-rekey" for key in got if "circuit" in key[0])


def test_several_pipelines_share_one_family_per_metric():
    text = metrics_text({"a": evidence(), "b": evidence()})
    # Prometheus refuses a scrape that declares a metric twice.
    declared = [line for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(declared) == len(set(declared))
    events = {key[1] for key in samples(text) if key[0] == "sluice_model_events_total"}
    assert {dict(key)["pipeline"] for key in events} == {"a", "b"}


def rec(offset: int, key: str) -> InputRecord:
    return InputRecord("in", 0, offset, 1_000, key.encode(), orjson.dumps({"id": offset, "x": [offset, 1]}))


def driver_of(pipeline: Pipeline) -> Driver[Pipeline]:
    batcher = Batcher(BatchPolicy(max_batch_size=16, latency_budget_ms=None), CostModel())
    return Driver(ListSource([]), pipeline, batcher, RecordingProgress())


async def test_the_driver_reads_every_role_and_shadow_of_its_pipeline():
    book = ModelBook()
    roles = Roles(SumRunner(), canary=Canary(CanaryRunner(), 0.5), fallback=ConstantRunner(0.0), book=book)
    sink = ListSink()
    shadow = Shadow(
        Transformer(),
        sink=sink,
        topic="out-shadow",
        pipeline="p",
        stats=book.of("shadow", "transformer", "7"),
        wait=True,
    )
    topics = PipelineTopics(output="out", dead_letter="dlq")
    pipeline = Pipeline(name="p", schema=SCHEMA, runner=roles, sink=sink, topics=topics, shadows=[shadow])
    await pipeline.process([rec(i, f"key-{i}") for i in range(40)])
    await shadow.drain()

    models = driver_of(pipeline).models()
    assert models is not None
    assert models.in_use == [
        ("champion", "sum", "1"),
        ("canary", "sum", "2"),
        ("fallback", "constant", "0.0"),
        ("shadow", "transformer", "7"),
    ]
    events = {stats.key: stats.events for stats in models.stats}
    assert events[("champion", "sum", "1")] + events[("canary", "sum", "2")] == 40
    assert events[("shadow", "transformer", "7")] == 40
    assert models.circuit is Circuit.CLOSED
    assert models.shadow_lost_outputs == {("transformer", "7"): 0}
    shadow_stats = next(s for s in models.stats if s.role == "shadow")
    assert shadow_stats.agreement is not None and shadow_stats.agreement.mean_abs_diff == 0.5


async def test_an_open_circuit_and_its_fallback_are_read_from_the_breaker():
    roles = Roles(DownRunner(), fallback=ConstantRunner(0.0), policy=BreakerPolicy(failures=1, cooldown_s=60))
    topics = PipelineTopics(output="out", dead_letter="dlq")
    pipeline = Pipeline(name="p", schema=SCHEMA, runner=roles, sink=ListSink(), topics=topics)
    await pipeline.process([rec(0, "a"), rec(1, "b")])
    models = driver_of(pipeline).models()
    assert models is not None
    assert (models.circuit, models.circuit_trips) == (Circuit.OPEN, 1)
    assert models_part(models) == "circuit open, 1 trip (fallback 2 ev)"


def test_a_stage_without_models_has_no_model_metrics():
    class Stage:
        name = "p-rekey"
        delivery = Delivery(ListSink(), pipeline="p", dead_letter_topic="dlq", max_copy_bytes=1_000, clock_ms=int)

    batcher = Batcher(BatchPolicy(max_batch_size=16, latency_budget_ms=None), CostModel())
    driver = Driver(ListSource([]), Stage(), batcher, RecordingProgress())  # type: ignore[type-var]
    assert driver.models() is None
    assert driver.model_metrics("p-rekey") == []


def test_the_stats_line_names_each_model_beside_the_champion():
    assert models_part(evidence()) == (
        "canary mlp v2: 2 ev, 1 err; "
        "shadow transformer v7: 4 ev, 0 err, 1 skipped batches, MAD 0.225, flips 25.0%; "
        "circuit open, 2 trips (fallback 2 ev)"
    )


def test_the_stats_line_tells_the_canary_before_the_shadows_whatever_scored_first():
    book = ModelBook()
    book.of("shadow", "transformer", "7").scored(np.array([0.5]), 0.01)
    book.of("canary", "mlp", "2").scored(np.array([0.5]), 0.001)
    in_use = [("canary", "mlp", "2"), ("shadow", "transformer", "7")]
    part = models_part(PipelineModels(in_use, list(book.models.values())))
    assert part == "canary mlp v2: 1 ev, 0 err; shadow transformer v7: 1 ev, 0 err"


def test_the_stats_line_of_a_champion_alone_is_as_it_was():
    book = ModelBook()
    book.of("champion", "mlp", "1").scored(np.array([0.5]), 0.001)
    alone = PipelineModels([("champion", "mlp", "1")], list(book.models.values()))
    assert models_part(alone) is None
    stats = LiveStats()
    stats.record(events=1, scored=1, dead_lettered=0, latencies_ms=np.array([3.0]), late=0)
    line = stats.interval_summary("p", 50, alone)
    assert line is not None and line.endswith("totals: 1 events, 1 scored, 0 dead-lettered")


def test_the_stats_line_says_which_canary_was_rolled_back():
    book = ModelBook()
    book.of("canary", "mlp", "2").failed(timed_out=True)
    models = PipelineModels([("champion", "mlp", "1")], list(book.models.values()), canary_rolled_back=True)
    assert models_part(models) == "canary mlp v2 (rolled back): 0 ev, 0 err, 1 timeouts"
    stats = LiveStats()
    stats.record(events=1, scored=1, dead_lettered=0, latencies_ms=np.array([3.0]), late=0)
    line = stats.interval_summary("p", None, models)
    assert line is not None and line.endswith("dead-lettered; canary mlp v2 (rolled back): 0 ev, 0 err, 1 timeouts")
