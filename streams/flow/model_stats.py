"""Evidence by model version: what each model of a pipeline did, for the metrics and ``watch --compare``.

One ``ModelStats`` per (role, name, version): batches and events scored, inference time,
the scores' histogram, whole-batch errors and timeouts, and for a shadow the batches it
skipped and its agreement with the model that served the same events. Counted a batch at a
time with numpy, like the pipeline's own metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from streams.metrics import INFERENCE_BOUNDS_S, Buckets

SCORE_BOUNDS = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05 .. 0.95, then +Inf


def first_column(predictions: np.ndarray) -> np.ndarray:
    """Each event's score: the first value of its row of predictions, as float64."""
    return predictions.reshape(len(predictions), -1)[:, 0].astype(np.float64)


@dataclass
class Agreement:
    """A shadow against the served model, on the events both scored."""

    threshold: float
    events: int = 0
    abs_diff_sum: float = 0.0
    flips: int = 0

    def observe(self, shadow: np.ndarray, served: np.ndarray) -> None:
        """Count the events where both scores are real numbers: one NaN would make the sums NaN for good."""
        a, b = first_column(shadow), first_column(served)
        both = np.isfinite(a) & np.isfinite(b)
        if not both.all():
            a, b = a[both], b[both]
        self.events += len(a)
        self.abs_diff_sum += float(np.abs(a - b).sum())
        self.flips += int(((a >= self.threshold) != (b >= self.threshold)).sum())

    @property
    def mean_abs_diff(self) -> float | None:
        return self.abs_diff_sum / self.events if self.events else None

    @property
    def flip_share(self) -> float | None:
        return self.flips / self.events if self.events else None


@dataclass
class ModelStats:
    role: str  # champion, canary, fallback or shadow
    name: str
    version: str
    batches: int = 0
    events: int = 0
    errors: int = 0
    timeouts: int = 0
    skipped_batches: int = 0
    skipped_events: int = 0
    inference: Buckets = field(default_factory=lambda: Buckets(INFERENCE_BOUNDS_S))
    scores: Buckets = field(default_factory=lambda: Buckets(SCORE_BOUNDS))
    agreement: Agreement | None = None
    # The longest batch so far: what bounds the p99 past the inference histogram's last bucket.
    slowest_s: float = 0.0

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.role, self.name, self.version)

    def scored(self, predictions: np.ndarray, seconds: float) -> None:
        self.batches += 1
        self.events += len(predictions)
        self.inference.observe(seconds)
        self.slowest_s = max(self.slowest_s, seconds)
        if predictions.size:
            scores = first_column(predictions)
            # NaN or infinity is no score (the pipeline dead-letters those events): it would make the sum NaN for good.
            self.scores.observe_many(scores[np.isfinite(scores)])

    def failed(self, timed_out: bool) -> None:
        if timed_out:
            self.timeouts += 1
        else:
            self.errors += 1

    def skipped(self, events: int) -> None:
        self.skipped_batches += 1
        self.skipped_events += events

    def p99_seconds(self) -> float | None:
        """The upper bound of the bucket holding the 99th percentile batch time; past the last
        bucket (1 s), the slowest batch seen (a roll-back limit may be far above 1 s)."""
        total = self.inference.count
        if not total:
            return None
        cumulative = np.cumsum(self.inference.counts)
        slot = int(np.searchsorted(cumulative, 0.99 * total))
        bounds = self.inference.bounds
        return float(bounds[slot]) if slot < len(bounds) else self.slowest_s


class ModelBook:
    """Every model's stats of one pipeline, kept across swaps and roll-backs (each version its own)."""

    def __init__(self) -> None:
        self.models: dict[tuple[str, str, str], ModelStats] = {}

    def of(self, role: str, name: str, version: str) -> ModelStats:
        key = (role, name, version)
        stats = self.models.get(key)
        if stats is None:
            stats = self.models[key] = ModelStats(role, name, version)
        return stats
