from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from streams.flow.model_metrics import PipelineModels, model_families
from streams.metrics import Buckets, PipelineMetrics, SluiceCollector


class StillProbe:
    def queue_depth(self) -> int:
        return 7

    def lag_by_partition(self) -> dict[tuple[str, int], int]:
        return {("in", 0): 3, ("in", 1): 0}

    def serving(self) -> tuple[str, str]:
        return "fraud-mlp", "2"

    def predicted_batch_seconds(self) -> dict[int, float]:
        return {1: 0.001, 64: 0.004}

    def model_unavailable(self) -> bool:
        return False

    def lost_outputs(self) -> int:
        return 2

    def model_metrics(self, pipeline: str) -> list[Metric]:
        return model_families(pipeline, PipelineModels([("champion", "fraud-mlp", "2")], []))


def test_buckets_count_values_up_to_and_including_each_bound():
    buckets = Buckets([1.0, 2.0, 5.0])
    buckets.observe_many(np.array([0.5, 1.0, 1.5, 2.0, 7.0]))
    buckets.observe(5.0)
    assert buckets.cumulative() == [("1.0", 2.0), ("2.0", 4.0), ("5.0", 5.0), ("+Inf", 6.0)]
    assert buckets.count == 6
    assert buckets.sum == 17.0


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_the_collector_exports_each_pipeline_in_the_prometheus_text_format():
    collector = SluiceCollector()
    metrics = collector.register(PipelineMetrics("fraud", probe=StillProbe()))
    collector.register(PipelineMetrics("idle"))
    metrics.received += 10
    metrics.scored_batch(10, 0.002, {"InvalidJSON": 2})
    metrics.acknowledged(8, np.array([0.004] * 9 + [0.2]), late=1)
    registry = CollectorRegistry()
    registry.register(collector)
    got = samples(registry)
    fraud = (("pipeline", "fraud"),)
    assert got[("sluice_events_received_total", fraud)] == 10
    assert got[("sluice_predictions_total", fraud)] == 8
    assert got[("sluice_late_events_total", fraud)] == 1
    assert got[("sluice_dead_letters_total", (("pipeline", "fraud"), ("reason", "InvalidJSON")))] == 2
    assert got[("sluice_end_to_end_latency_seconds_bucket", (("le", "0.005"), ("pipeline", "fraud")))] == 9
    assert got[("sluice_end_to_end_latency_seconds_count", fraud)] == 10
    assert got[("sluice_batch_size_sum", fraud)] == 10
    assert got[("sluice_queue_depth", fraud)] == 7
    assert got[("sluice_consumer_lag", (("partition", "0"), ("pipeline", "fraud"), ("topic", "in")))] == 3
    champion = (("model", "fraud-mlp"), ("pipeline", "fraud"), ("role", "champion"), ("version", "2"))
    assert got[("sluice_model_info", champion)] == 1
    assert got[("sluice_cost_model_batch_seconds", (("batch_size", "64"), ("pipeline", "fraud")))] == 0.004
    assert got[("sluice_outputs_lost_total", fraud)] == 2
    assert got[("sluice_events_received_total", (("pipeline", "idle"),))] == 0
    assert ("sluice_queue_depth", (("pipeline", "idle"),)) not in got, "no live state before the loop runs"
