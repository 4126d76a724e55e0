"""The pipeline's features step: a batch of decoded events in, their per-key features out.

Events are taken in rounds: round r holds the r-th event of each key in the batch, so the keys
of one round are distinct and the round reads and appends with numpy for all of them at once;
two events of one key in a batch see each other in partition order. A batch of distinct keys
is one round. For each round: keys idle past the TTL are cleared, the features that exclude
the current event are computed, the events are appended, then the features that include it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from streams.features.aggregate import compute
from streams.features.spec import Feature, StateSpec
from streams.features.store import KeyedStore, PartitionId


class FeatureStep:
    def __init__(self, spec: StateSpec, store: KeyedStore | None = None) -> None:
        self.spec = spec
        self.store = store or KeyedStore(spec.capacity, len(spec.fields))
        self.field_index = {name: i for i, name in enumerate(spec.fields)}
        self._before = [f for f in spec.features if not f.include_current]
        self._after = [f for f in spec.features if f.include_current]
        # The newest event time seen per partition: what the TTL sweep counts idleness from.
        self.latest_ms: dict[PartitionId, int] = {}

    def compute(
        self,
        partitions: Sequence[PartitionId],
        keys: Sequence[bytes],
        times: np.ndarray,
        values: np.ndarray,
        offsets: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """Each feature for each event (in order), appending the events to their keys' state."""
        n = len(keys)
        out = {f.name: np.zeros((n, *f.shape), dtype=np.float32) for f in self.spec.features}
        if not n:
            return out
        times = np.asarray(times, dtype=np.int64)
        slots = self.store.slots_for(partitions, keys)
        rank = occurrence_rank(slots)
        for r in range(int(rank.max()) + 1):
            idx = np.flatnonzero(rank == r) if rank.any() else np.arange(n)
            at = times[idx]
            round_slots = slots[idx]
            idle = (self.store.length[round_slots] > 0) & (at - self.store.times[round_slots, -1] > self.spec.ttl_ms)
            if idle.any():
                self.store.clear(round_slots[idle])
            self._fill(out, self._before, idx, round_slots, at)
            self.store.append(round_slots, at, values[idx], offsets[idx])
            self._fill(out, self._after, idx, round_slots, at)
        self._note_latest(partitions, times)
        return out

    def sweep(self, partition: PartitionId) -> int:
        """Forget the partition's keys idle past the TTL, by event time; returns how many."""
        latest = self.latest_ms.get(partition)
        return 0 if latest is None else self.store.sweep(partition, latest - self.spec.ttl_ms)

    def _fill(self, out: dict[str, np.ndarray], features: list[Feature], idx: np.ndarray, slots: np.ndarray, at: np.ndarray) -> None:
        if not features:
            return
        times, values, length = self.store.times[slots], self.store.values[slots], self.store.length[slots]
        for feature in features:
            out[feature.name][idx] = compute(feature, times, values, length, at, self.field_index)

    def _note_latest(self, partitions: Sequence[PartitionId], times: np.ndarray) -> None:
        first = partitions[0]
        if all(p == first for p in partitions):
            newest = {first: int(times.max())}
        else:
            newest = {}
            for partition, t in zip(partitions, times.tolist(), strict=True):
                newest[partition] = max(t, newest.get(partition, t))
        for partition, t in newest.items():
            self.latest_ms[partition] = max(t, self.latest_ms.get(partition, t))


def occurrence_rank(slots: np.ndarray) -> np.ndarray:
    """For each position, how many earlier positions hold the same slot."""
    order = np.argsort(slots, kind="stable")
    ordered = slots[order]
    starts = np.ones(len(slots), dtype=bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    positions = np.arange(len(slots))
    group_start = np.maximum.accumulate(np.where(starts, positions, 0))
    rank = np.empty(len(slots), dtype=np.int64)
    rank[order] = positions - group_start
    return rank
