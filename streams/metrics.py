"""Prometheus metrics for each pipeline, exposed by the worker's web server at ``/metrics``.

Histograms are counted with numpy, a whole batch of latencies at a time, and exported
through the standard client's metric families by a collector: observing each event's
latency through ``Histogram.observe`` would put a Python call per event on the hot path,
which is what the rest of the engine avoids. Gauges (queue depth, lag, the model, the cost
model's predictions) are read from the running driver when Prometheus scrapes. So is the
evidence by model version (each model's counts and histograms by role and version, a shadow's
agreement, the champion's circuit): the driver hands those families over ready-made
(``streams.flow.model_metrics``, beside the stats they read), and they are merged here by name
so each metric is one family whatever the number of pipelines.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from streams.records import Partition

LATENCY_BOUNDS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
INFERENCE_BOUNDS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
BATCH_SIZE_BOUNDS = tuple(float(2**i) for i in range(13))  # 1 .. 4096


class Buckets:
    """A cumulative histogram with fixed upper bounds (Prometheus ``le`` semantics)."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = np.asarray(bounds, dtype=np.float64)
        self.counts = np.zeros(len(bounds) + 1, dtype=np.int64)  # the last is +Inf
        self.sum = 0.0

    def observe_many(self, values: np.ndarray) -> None:
        if values.size:
            # side="left": a value equal to a bound belongs to that bound's bucket (value <= le).
            slots = np.searchsorted(self.bounds, values, side="left")
            self.counts += np.bincount(slots, minlength=self.counts.size)
            self.sum += float(values.sum())

    def observe(self, value: float) -> None:
        self.observe_many(np.asarray([value], dtype=np.float64))

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    def cumulative(self) -> list[tuple[str, float]]:
        totals = np.cumsum(self.counts).tolist()
        return [(repr(float(b)), float(c)) for b, c in zip(self.bounds.tolist(), totals, strict=False)] + [
            ("+Inf", float(totals[-1]))
        ]


class LiveProbe(Protocol):
    """What a running pipeline tells the collector at scrape time."""

    def queue_depth(self) -> int: ...

    def lag_by_partition(self) -> dict[Partition, int]: ...

    def serving(self) -> tuple[str, str] | None:
        """The model's name and version."""
        ...

    def predicted_batch_seconds(self) -> dict[int, float]: ...

    def model_unavailable(self) -> bool: ...

    def lost_outputs(self) -> int:
        """Outputs the broker refused whose minimal dead letter it refused too."""
        ...

    def model_metrics(self, pipeline: str) -> list[Metric]:
        """Evidence by model version, labelled ``pipeline``: empty for a stage without models."""
        ...


@dataclass
class PipelineMetrics:
    """Counters and histograms of one pipeline since the worker started."""

    pipeline: str
    received: int = 0
    predictions: int = 0
    late: int = 0
    batches: int = 0
    model_swaps: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    latency: Buckets = field(default_factory=lambda: Buckets(LATENCY_BOUNDS_S))
    inference: Buckets = field(default_factory=lambda: Buckets(INFERENCE_BOUNDS_S))
    batch_size: Buckets = field(default_factory=lambda: Buckets(BATCH_SIZE_BOUNDS))
    probe: LiveProbe | None = None

    def scored_batch(self, size: int, inference_s: float, errors: dict[str, int]) -> None:
        self.batches += 1
        self.batch_size.observe(size)
        if inference_s > 0:
            self.inference.observe(inference_s)
        self.dead_letters.update(errors)

    def acknowledged(self, predictions: int, latencies_s: np.ndarray, late: int) -> None:
        self.predictions += predictions
        self.latency.observe_many(latencies_s)
        self.late += late


class SluiceCollector(Collector):
    """Exports every registered pipeline's metrics, labelled by pipeline."""

    def __init__(self) -> None:
        self.pipelines: dict[str, PipelineMetrics] = {}

    def register(self, metrics: PipelineMetrics) -> PipelineMetrics:
        self.pipelines[metrics.pipeline] = metrics
        return metrics

    def collect(self) -> Iterator[Metric]:
        p = ["pipeline"]
        received = CounterMetricFamily("sluice_events_received", "Events fetched from the input topics.", labels=p)
        predictions = CounterMetricFamily(
            "sluice_predictions", "Predictions acknowledged by the broker on the output topic.", labels=p
        )
        dead = CounterMetricFamily(
            "sluice_dead_letters", "Events sent to the dead-letter topic, by reason.", labels=[*p, "reason"]
        )
        late = CounterMetricFamily(
            "sluice_late_events", "Events acknowledged after their latency budget (event time to ack).", labels=p
        )
        batches = CounterMetricFamily("sluice_batches", "Batches scored.", labels=p)
        swaps = CounterMetricFamily("sluice_model_swaps", "Models swapped in while running.", labels=p)
        latency = HistogramMetricFamily(
            "sluice_end_to_end_latency_seconds",
            "From the input record's timestamp to its prediction acknowledged by the broker.",
            labels=p,
        )
        inference = HistogramMetricFamily(
            "sluice_inference_seconds", "Model time per batch (on the inference thread).", labels=p
        )
        batch_size = HistogramMetricFamily("sluice_batch_size", "Events per scored batch.", labels=p)
        queue = GaugeMetricFamily("sluice_queue_depth", "Events fetched and waiting for a batch.", labels=p)
        lag = GaugeMetricFamily(
            "sluice_consumer_lag",
            "Records in the partition after this worker's last committed offset.",
            labels=[*p, "topic", "partition"],
        )
        down = GaugeMetricFamily(
            "sluice_model_unavailable", "1 while the model fails on every input and consuming is paused.", labels=p
        )
        lost = CounterMetricFamily(
            "sluice_outputs_lost",
            "Outputs the broker refused for good whose minimal dead letter it refused too (each logged at ERROR).",
            labels=p,
        )
        predicted = GaugeMetricFamily(
            "sluice_cost_model_batch_seconds",
            "What the online cost model predicts a batch of this size costs, end to end.",
            labels=[*p, "batch_size"],
        )
        for name, m in sorted(self.pipelines.items()):
            received.add_metric([name], m.received)
            predictions.add_metric([name], m.predictions)
            late.add_metric([name], m.late)
            batches.add_metric([name], m.batches)
            swaps.add_metric([name], m.model_swaps)
            for reason, count in sorted(m.dead_letters.items()):
                dead.add_metric([name, reason], count)
            latency.add_metric([name], m.latency.cumulative(), m.latency.sum)
            inference.add_metric([name], m.inference.cumulative(), m.inference.sum)
            batch_size.add_metric([name], m.batch_size.cumulative(), m.batch_size.sum)
            if m.probe is not None:
                queue.add_metric([name], m.probe.queue_depth())
                for (topic, partition), records in sorted(m.probe.lag_by_partition().items()):
                    lag.add_metric([name, topic, str(partition)], records)
                down.add_metric([name], 1 if m.probe.model_unavailable() else 0)
                lost.add_metric([name], m.probe.lost_outputs())
                for size, seconds in sorted(m.probe.predicted_batch_seconds().items()):
                    predicted.add_metric([name, str(size)], seconds)
        yield from (received, predictions, dead, late, batches, swaps, latency, inference, batch_size)
        yield from (queue, lag, down, lost, predicted)
        yield from self._model_families()

    def _model_families(self) -> Iterator[Metric]:
        """Each probe's model families, one family per name: a name twice in one scrape is refused."""
        merged: dict[str, Metric] = {}
        for name, m in sorted(self.pipelines.items()):
            for family in m.probe.model_metrics(name) if m.probe is not None else ():
                if (into := merged.setdefault(family.name, family)) is not family:
                    into.samples += family.samples
        yield from merged.values()
