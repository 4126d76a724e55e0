"""Decides when a batch goes to the model, and how big it is, under a latency budget.

Every queued event has a deadline: its timestamp (the Kafka record's, or the time it was
read) plus the budget. Whenever the runner is free, the batcher is asked for a plan:

- take what is queued, up to ``max_batch_size`` — or up to the size with the most events
  per second, when the measurements show that bigger batches are slower per event: a
  bigger batch would then only take longer, and let the queue behind it grow — but never
  so many that the predicted
  cost (``CostModel``, measured on this machine, plus the measured time for outputs to be
  acknowledged) would push the most urgent event of the batch past its deadline;
- if all that is queued fits with time to spare and the broker already holds more records
  for us (consumer lag), wait for them — one fetch, at most ``max_fill_wait_ms`` and never
  past the slack — since a fuller batch costs little more than a small one; with no lag,
  waiting could only add latency, so go now;
- events that cannot make their deadline anyway (a backlog after a restart, a slow
  consumer) are scored in the batches that give the most events per second — the
  largest, unless the measurements show a smaller size is faster per event — to catch up
  fastest, and are counted as late.

The batcher is pure logic over a clock it is given: no I/O, no asyncio.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from streams.flow.cost_model import CostModel, reference_sizes
from streams.records import Partition, SourceRecord

INF = math.inf
# How many of the largest batches a driver keeps fetched ahead of the model: enough to fill
# the next batches while one is scored; more only adds memory (and re-scoring after a crash).
QUEUED_BATCHES = 4
# How many scored batches may wait for their outputs' acknowledgement at once: enough to hide
# the broker's round trip behind scoring, few enough that a stall stops fetching soon.
IN_FLIGHT_BATCHES = 4


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int
    # None: throughput mode (backfill): always the largest batch, no deadline.
    latency_budget_ms: float | None
    deadline_from: str = "event"  # "event": the record's timestamp; "arrival": when it was read
    # Longest wait for more records when the broker holds them (the next fetch).
    max_fill_wait_ms: float = 5.0

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if self.latency_budget_ms is not None and self.latency_budget_ms <= 0:
            raise ValueError("latency_budget_ms must be positive")
        if self.deadline_from not in ("event", "arrival"):
            raise ValueError("deadline_from must be 'event' or 'arrival'")


@dataclass(frozen=True)
class Plan:
    """What to do now: take ``take`` events (0: don't), or wait up to ``wait_ms`` for more."""

    take: int
    wait_ms: float = INF
    late: bool = False
    reason: str = ""


@dataclass
class Batch:
    records: list[SourceRecord]
    deadlines_ms: np.ndarray
    late: bool

    def __len__(self) -> int:
        return len(self.records)


class _Chunk:
    __slots__ = ("deadlines", "records", "start")

    def __init__(self, records: list[SourceRecord], deadlines: np.ndarray) -> None:
        self.records = records
        self.deadlines = deadlines
        self.start = 0

    def __len__(self) -> int:
        return len(self.records) - self.start


class Batcher:
    def __init__(self, policy: BatchPolicy, cost: CostModel) -> None:
        self.policy = policy
        self.cost = cost
        self._chunks: deque[_Chunk] = deque()
        self._size = 0
        # Whether this batch already waited once for records the broker held: waiting again
        # under a steady stream would spend the whole budget on filling.
        self._waited_to_fill = False

    def __len__(self) -> int:
        return self._size

    def add(self, records: Sequence[SourceRecord], now_ms: float) -> None:
        """Queue records in the order given (per partition: offset order)."""
        if not records:
            return
        budget = self.policy.latency_budget_ms
        if budget is None:
            deadlines = np.full(len(records), INF)
        elif self.policy.deadline_from == "arrival":
            deadlines = np.full(len(records), now_ms + budget)
        else:
            stamps = np.fromiter((r.timestamp for r in records), dtype=np.float64, count=len(records))
            deadlines = stamps + budget
        self._chunks.append(_Chunk(list(records), deadlines))
        self._size += len(records)

    def _deadlines(self, n: int) -> np.ndarray:
        parts = []
        left = n
        for chunk in self._chunks:
            if left <= 0:
                break
            k = min(left, len(chunk))
            parts.append(chunk.deadlines[chunk.start : chunk.start + k])
            left -= k
        return np.concatenate(parts) if parts else np.empty(0)

    def use_cost_model(self, cost: CostModel) -> None:
        """Plan with ``cost`` from now on (a new model costs what its own warm-up measured)."""
        self.cost = cost

    def observe(self, size: int, seconds: float) -> None:
        """A batch of ``size`` events took ``seconds`` from being taken to its outputs being sent."""
        self.cost.observe(size, seconds)

    def predicted_seconds(self) -> dict[int, float]:
        """What the cost model predicts for a few batch sizes up to the largest (for the metrics)."""
        return {n: self.cost.predict(n) for n in reference_sizes(self.policy.max_batch_size)}

    def plan(self, now_ms: float, backlog: int = 0, overhead_ms: float = 0.0) -> Plan:
        """Decide, with ``backlog`` records known to wait in the broker beyond the queue, and
        ``overhead_ms`` the time from a batch's outputs being sent to being acknowledged."""
        queued = self._size
        if queued == 0:
            return Plan(take=0, reason="empty")
        limit = self.cost.best_throughput_size(self.policy.max_batch_size)
        cap = min(queued, limit)
        if self.policy.latency_budget_ms is None:
            return Plan(take=cap, reason="throughput")
        # Most urgent deadline among the first n queued, for every n.
        urgent = np.minimum.accumulate(self._deadlines(cap))
        extra_ms = overhead_ms

        def fits(n: int) -> bool:
            return now_ms + self.cost.predict(n) * 1000.0 + extra_ms <= urgent[n - 1]

        if not fits(1):
            return Plan(take=cap, late=True, reason="late")
        lo, hi = 1, cap
        while lo < hi:  # fits() is monotone: more events cost more and have earlier deadlines
            mid = (lo + hi + 1) // 2
            if fits(mid):
                lo = mid
            else:
                hi = mid - 1
        if lo < cap:
            return Plan(take=lo, reason="deadline")
        if cap == limit:
            return Plan(take=cap, reason="full")
        if backlog > 0 and not self._waited_to_fill and self.policy.max_fill_wait_ms > 0:
            target = min(limit, queued + backlog)
            slack = urgent[-1] - now_ms - extra_ms - self.cost.predict(target) * 1000.0
            if slack > 0:
                self._waited_to_fill = True
                return Plan(take=0, wait_ms=min(slack, self.policy.max_fill_wait_ms), reason="filling")
        return Plan(take=cap, reason="runner free")

    def take(self, plan: Plan, now_ms: float) -> Batch:
        """Remove the first ``plan.take`` events from the queue."""
        n = min(plan.take, self._size)
        self._waited_to_fill = False
        records: list[SourceRecord] = []
        deadlines = []
        while len(records) < n:
            chunk = self._chunks[0]
            k = min(n - len(records), len(chunk))
            records.extend(chunk.records[chunk.start : chunk.start + k])
            deadlines.append(chunk.deadlines[chunk.start : chunk.start + k])
            chunk.start += k
            if len(chunk) == 0:
                self._chunks.popleft()
        self._size -= n
        return Batch(
            records=records,
            deadlines_ms=np.concatenate(deadlines) if deadlines else np.empty(0),
            late=plan.late,
        )

    def give_back(self, batch: Batch) -> None:
        """Put a taken batch back at the front of the queue, as it was (batches given back in the
        reverse order they were taken restore the queue)."""
        if len(batch):
            self._chunks.appendleft(_Chunk(list(batch.records), batch.deadlines_ms))
            self._size += len(batch)

    def drop_partitions(self, partitions: set[Partition]) -> int:
        """Forget queued events of these (topic, partition)s, e.g. revoked in a rebalance.

        They were never scored nor committed, so their new owner consumes them again.
        """
        if not partitions:
            return 0
        dropped = 0
        kept: deque[_Chunk] = deque()
        for chunk in self._chunks:
            records = chunk.records[chunk.start :]
            keep = [i for i, r in enumerate(records) if (r.topic, r.partition) not in partitions]
            dropped += len(records) - len(keep)
            if keep:
                kept.append(_Chunk([records[i] for i in keep], chunk.deadlines[chunk.start :][keep]))
        self._chunks = kept
        self._size -= dropped
        return dropped
