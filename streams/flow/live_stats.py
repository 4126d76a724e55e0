"""What the driver did over the last interval, as the one line the worker logs.

The cumulative view (counters, histograms) is ``streams.metrics``; this keeps only what
the log line needs: the interval's samples and three running totals.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np


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

    def interval_summary(self, name: str, budget_ms: float | None) -> str | None:
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
        self._interval_events = 0
        self._interval_batches = []
        self._interval_latencies = []
        self._interval_late = 0
        return line
