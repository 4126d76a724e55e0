"""What the driver did over the last interval, as the one line the worker logs.

The cumulative view (counters, histograms) is ``streams.metrics``; this keeps only what
the log line needs: the interval's samples and three running totals. Where a pipeline has more
than a champion (a canary, shadows, a fallback that scored), the line ends with each model's
totals since start, read from the same evidence as the metrics (``streams.flow.model_metrics``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from streams.flow.breaker import Circuit
from streams.flow.model_metrics import PipelineModels
from streams.flow.model_stats import ModelStats


@dataclass
class LiveStats:
    """Running totals for the log line, plus the samples of the current interval."""

    events: int = 0
    scored: int = 0
    dead_lettered: int = 0
    _interval_started: float = field(default_factory=time.monotonic)
    _interval_events: int = 0
    _interval_batches: list[int] = field(default_factory=list)
    _interval_latencies: list[np.ndarray] = field(default_factory=list)
    _interval_late: int = 0

    def record(self, *, events: int, scored: int, dead_lettered: int, latencies_ms: np.ndarray, late: int) -> None:
        self.events += events
        self.scored += scored
        self.dead_lettered += dead_lettered
        self._interval_events += events
        self._interval_batches.append(events)
        self._interval_latencies.append(latencies_ms)
        self._interval_late += late

    def interval_summary(self, name: str, budget_ms: float | None, models: PipelineModels | None = None) -> str | None:
        """One line about the interval since the last call (None if nothing happened), then reset it."""
        now = time.monotonic()
        elapsed = max(now - self._interval_started, 1e-9)
        self._interval_started = now
        if not self._interval_batches:
            return None
        latencies = np.concatenate(self._interval_latencies)
        p50, p99 = np.percentile(latencies, [50, 99]) if latencies.size else (0.0, 0.0)
        budget = f" (budget {budget_ms:.0f} ms)" if budget_ms is not None else ""
        line = (
            f"pipeline {name}: {self._interval_events} events in {elapsed:.1f}s "
            f"({self._interval_events / elapsed:,.0f}/s); {len(self._interval_batches)} batches, "
            f"mean size {np.mean(self._interval_batches):.1f}, max {max(self._interval_batches)}; "
            f"latency p50 {p50:.0f} ms, p99 {p99:.0f} ms{budget}; {self._interval_late} late; "
            f"totals: {self.events} events, {self.scored} scored, {self.dead_lettered} dead-lettered"
        )
        if models is not None and (by_model := models_part(models)):
            line += f"; {by_model}"
        self._interval_events = 0
        self._interval_batches = []
        self._interval_latencies = []
        self._interval_late = 0
        return line


def models_part(models: PipelineModels) -> str | None:
    """Each model but the champion, then the champion's circuit when it ever mattered; None when
    the champion alone scored (the line stays as it always was)."""
    # Canaries first (they serve), then shadows; the fallback is told with the circuit it stands in for.
    others = sorted((m for m in models.stats if m.role in ("canary", "shadow")), key=lambda m: m.role != "canary")
    parts = [_one_model(stats, models) for stats in others]
    fallback_events = sum(stats.events for stats in models.stats if stats.role == "fallback")
    if fallback_events or models.circuit is not Circuit.CLOSED or models.circuit_trips:
        state = models.circuit.value.replace("_", "-")
        trips = f", {models.circuit_trips} trip{'s' if models.circuit_trips != 1 else ''}"
        parts.append(f"circuit {state}{trips} (fallback {fallback_events} ev)")
    return "; ".join(parts) or None


def _one_model(stats: ModelStats, models: PipelineModels) -> str:
    retired = ""
    if stats.key not in models.in_use:
        rolled_back = stats.role == "canary" and models.canary_rolled_back
        retired = " (rolled back)" if rolled_back else " (no longer in use)"
    text = f"{stats.role} {stats.name} v{stats.version}{retired}: {stats.events} ev, {stats.errors} err"
    if stats.timeouts:
        text += f", {stats.timeouts} timeouts"
    if stats.skipped_batches:
        text += f", {stats.skipped_batches} skipped batches"
    agreement = stats.agreement
    if agreement is not None and agreement.mean_abs_diff is not None and agreement.flip_share is not None:
        text += f", MAD {agreement.mean_abs_diff:.3f}, flips {agreement.flip_share:.1%}"
    return text
