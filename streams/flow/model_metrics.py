"""Evidence by model version, read from a running pipeline: for Prometheus and the stats line.

``PipelineModels`` is one read of a scoring pipeline's models (``read_models``): which serve or
shadow now, and every model's ``ModelStats`` since the worker started, each (role, name,
version) its own, so a version swapped out or rolled back keeps its evidence. ``model_families``
turns it into Prometheus families labelled by pipeline, role, model and version; the collector
(``streams.metrics``) merges them across pipelines. Counters here are totals since start, as
Prometheus expects; rates and comparisons are the reader's (``sluice watch --compare``, PromQL).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from operator import attrgetter

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from streams.flow.breaker import Circuit
from streams.flow.model_stats import ModelStats
from streams.flow.pipeline import Pipeline
from streams.flow.shadow import Shadow


@dataclass(frozen=True)
class PipelineModels:
    # (role, name, version) of each model serving or shadowing now.
    in_use: list[tuple[str, str, str]]
    # Every model that scored or failed since start (swapped-out versions too).
    stats: list[ModelStats]
    circuit: Circuit = Circuit.CLOSED
    # Times the champion's circuit opened since the champion was swapped in (a swap starts a new breaker).
    circuit_trips: int = 0
    canary_rolled_back: bool = False
    # (name, version) of a shadow -> its outputs the shadow topic never got.
    shadow_lost_outputs: dict[tuple[str, str], int] = field(default_factory=dict)


def read_models(pipeline: Pipeline) -> PipelineModels:
    roles = pipeline.roles
    # The pipeline's watchers of scored groups are shadows, or recorders that score nothing.
    shadows = [watcher for watcher in pipeline.shadows if isinstance(watcher, Shadow)]
    in_use = [("champion", roles.champion.name, roles.champion.version)]
    if roles.canary is not None:
        in_use.append(("canary", roles.canary.runner.name, roles.canary.runner.version))
    if roles.fallback is not None:
        in_use.append(("fallback", roles.fallback.name, roles.fallback.version))
    in_use += [("shadow", s.runner.name, s.runner.version) for s in shadows]
    stats = list(roles.book.models.values())
    # A shadow's stats are in the same book when the app built it so; a shadow given its own is not lost.
    stats += [s.stats for s in shadows if not any(s.stats is known for known in stats)]
    return PipelineModels(
        in_use,
        stats,
        roles.breaker.state,
        roles.breaker.trips,
        roles.rolled_back is not None,
        {(s.runner.name, s.runner.version): s.lost_outputs for s in shadows},
    )


# The circuit as a number a graph can show: half-open between closed and open.
CIRCUIT_VALUES = {Circuit.CLOSED: 0, Circuit.HALF_OPEN: 1, Circuit.OPEN: 2}

# Each model's counters: (metric, help, the ModelStats attribute it reads).
MODEL_COUNTERS = (
    ("sluice_model_batches", "Batches a model scored.", "batches"),
    ("sluice_model_events", "Events a model scored.", "events"),
    ("sluice_model_errors", "Batches a model failed whole with an error.", "errors"),
    ("sluice_model_timeouts", "Batches a model did not answer within its inference timeout.", "timeouts"),
    ("sluice_model_skipped_batches", "Batches a shadow skipped because it was behind.", "skipped_batches"),
    ("sluice_model_skipped_events", "Events of the batches a shadow skipped.", "skipped_events"),
)


def model_families(pipeline: str, models: PipelineModels) -> list[Metric]:
    m = ["pipeline", "role", "model", "version"]
    info = GaugeMetricFamily("sluice_model_info", "Each model serving or shadowing now (value 1).", labels=m)
    counters = [(CounterMetricFamily(n, text, labels=m), attrgetter(attr)) for n, text, attr in MODEL_COUNTERS]
    inference = HistogramMetricFamily("sluice_model_inference_seconds", "A model's time per batch.", labels=m)
    scores = HistogramMetricFamily("sluice_model_score", "A model's scores (its first output per event).", labels=m)
    # The threshold is a label: a share of flipped decisions means nothing without it.
    a = ["pipeline", "model", "version", "threshold"]
    mad = GaugeMetricFamily(
        "sluice_shadow_mean_abs_diff", "Mean |shadow score - served score| over the events both scored.", labels=a
    )
    flips = GaugeMetricFamily(
        "sluice_shadow_decision_flip_share", "Share of those events decided otherwise at the threshold.", labels=a
    )
    # What the two above are means over: to weigh them when summing workers.
    compared = CounterMetricFamily(
        "sluice_shadow_compared_events", "Events a shadow and the served model scored.", labels=a
    )
    lost = CounterMetricFamily(
        "sluice_shadow_lost_outputs",
        "Shadow outputs the shadow topic never got.",
        labels=["pipeline", "model", "version"],
    )
    p = ["pipeline"]
    circuit = GaugeMetricFamily(
        "sluice_circuit_state", "The champion's circuit: 0 closed, 1 half-open, 2 open.", labels=p
    )
    trips = CounterMetricFamily("sluice_circuit_trips", "Times the champion's circuit opened.", labels=p)
    rolled_back = GaugeMetricFamily("sluice_canary_rolled_back", "1 once the canary was rolled back.", labels=p)

    for in_use in models.in_use:
        info.add_metric([pipeline, *in_use], 1)
    for stats in models.stats:
        labels = [pipeline, stats.role, stats.name, stats.version]
        for family, read in counters:
            family.add_metric(labels, read(stats))
        inference.add_metric(labels, stats.inference.cumulative(), stats.inference.sum)
        scores.add_metric(labels, stats.scores.cumulative(), stats.scores.sum)
        agreement = stats.agreement
        if agreement is not None:
            shadow = [pipeline, stats.name, stats.version, f"{agreement.threshold:g}"]
            compared.add_metric(shadow, agreement.events)
            if agreement.mean_abs_diff is not None and agreement.flip_share is not None:
                mad.add_metric(shadow, agreement.mean_abs_diff)
                flips.add_metric(shadow, agreement.flip_share)
    for (name, version), count in sorted(models.shadow_lost_outputs.items()):
        lost.add_metric([pipeline, name, version], count)
    circuit.add_metric([pipeline], CIRCUIT_VALUES[models.circuit])
    trips.add_metric([pipeline], models.circuit_trips)
    rolled_back.add_metric([pipeline], 1 if models.canary_rolled_back else 0)
    families = [info, *(family for family, _ in counters), inference, scores, mad, flips, compared, lost]
    return [*families, circuit, trips, rolled_back]
