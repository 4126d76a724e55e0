"""Predicts how long a batch of n events takes to score, from what it measured on this machine.

Cost is not linear in batch size (kernels switch, caches overflow), so the model keeps
one running estimate per batch-size bucket — buckets on a geometric grid — and
interpolates between buckets. Each bucket follows its measurements with an exponentially
weighted mean, so it tracks a machine that gets busier or quieter; the prediction adds
the weighted mean deviation, so a batch that is usually 10 ms but sometimes 14 ms is
planned as about 12, not 10. Warm-up measurements seed the buckets before the first event.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass

GRID_RATIO = 1.5


def reference_sizes(max_batch_size: int) -> list[int]:
    """The batch sizes the model is warmed up at and the cost model is reported for:
    powers of two up to the largest batch, and the largest batch itself."""
    sizes = {max_batch_size}
    size = 1
    while size < max_batch_size:
        sizes.add(size)
        size *= 2
    return sorted(sizes)


def bucket_of(size: int) -> int:
    """Index of the geometric bucket holding ``size`` (1, 2, 3, 4-5, 6-7, 8-11, ...)."""
    return int(math.log(max(size, 1)) / math.log(GRID_RATIO) + 1e-9)


@dataclass
class _Bucket:
    size: float
    seconds: float
    deviation: float


class CostModel:
    def __init__(self, *, alpha: float = 0.2, fallback_seconds_per_event: float = 1e-4) -> None:
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = alpha
        self.fallback = fallback_seconds_per_event
        self._buckets: dict[int, _Bucket] = {}
        self._keys: list[int] = []

    def seed(self, timings: Mapping[int, float]) -> None:
        """Start from warm-up timings: batch size -> seconds."""
        for size, seconds in timings.items():
            self._buckets.pop(bucket_of(size), None)
            self.observe(size, seconds)

    def observe(self, size: int, seconds: float) -> None:
        """Fold one measured batch into its bucket."""
        if size <= 0 or seconds < 0:
            return
        key = bucket_of(size)
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = _Bucket(float(size), seconds, 0.0)
            bisect.insort(self._keys, key)
            return
        a = self.alpha
        bucket.deviation += a * (abs(seconds - bucket.seconds) - bucket.deviation)
        bucket.seconds += a * (seconds - bucket.seconds)
        bucket.size += a * (size - bucket.size)

    def predict(self, size: int) -> float:
        """Seconds a batch of ``size`` is expected to take (mean plus typical deviation)."""
        if size <= 0:
            return 0.0
        points = [self._buckets[k] for k in self._keys]
        if not points:
            return size * self.fallback
        if size <= points[0].size:
            # Below the smallest measured batch a batch is never cheaper than... nothing:
            # scale down, but keep the fixed overhead the smallest batch showed.
            p = points[0]
            return p.seconds + p.deviation
        for lower, upper in itertools.pairwise(points):
            if size <= upper.size:
                span = upper.size - lower.size
                w = (size - lower.size) / span if span > 0 else 1.0
                return (1 - w) * (lower.seconds + lower.deviation) + w * (upper.seconds + upper.deviation)
        # Beyond the largest measured batch: extrapolate at that batch's cost per event.
        last = points[-1]
        return (last.seconds + last.deviation) * size / last.size

    def best_throughput_size(self, limit: int, margin: float = 1.05) -> int:
        """The batch size up to ``limit`` with the most events per second, by what was measured.

        Bigger is not always faster per event (a model may switch kernels or spill caches),
        but a batch also has costs this model does not time (a fetch, a produce request, a
        commit), so a smaller size must measure clearly faster (``margin``) to be chosen.
        """
        candidates = {limit} | {round(self._buckets[k].size) for k in self._keys}
        candidates = {c for c in candidates if 1 <= c <= limit}

        def rate(n: int) -> float:
            return n / max(self.predict(n), 1e-12)

        best = max(candidates, key=lambda n: (rate(n), n))
        return best if rate(best) > margin * rate(limit) else limit
