"""The pipeline's features step: a batch of decoded events in, their per-key features out.

Events are taken in rounds: round r holds the r-th event of each key in the batch, so the keys
of one round are distinct and the round reads and appends with numpy for all of them at once;
two events of one key in a batch see each other in partition order. A batch of distinct keys
is one round. For each round: keys idle past the TTL are cleared, the features that exclude
the current event are computed, the events are appended, then the features that include it.

Idleness is measured against the partition's event time: the newest timestamp seen in the
partition so far, this event included (so it only moves forward, and depends only on the
events before, in partition order). A key whose newest kept event is more than the TTL behind
it is forgotten (its newest, not its last: one event stamped long before does not age it);
since that time never goes back, the sweep that frees such keys at a commit
can never change a later event's features, however late (out of order) that event is stamped.

``compute`` works on a copy of the batch's keys' state and returns the new state as a
``StateUpdate``, which ``apply`` writes once the batch is scored: a batch the model could not
score (it is retried, or given back at a rebalance) leaves the state as it was, so no event is
ever counted twice, and the state always matches the events whose outputs were produced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from streams.features.aggregate import compute_all
from streams.features.spec import Feature, StateSpec
from streams.features.store import KeyedStore, newest_times
from streams.records import Partition


@dataclass
class StateUpdate:
    """The new state of the keys of one batch (rows of the store's arrays, for ``slots``)."""

    slots: np.ndarray
    times: np.ndarray
    values: np.ndarray
    length: np.ndarray
    offset: np.ndarray
    latest_ms: dict[Partition, int]
    # Each event's slot and source offset, in batch order (to remember its prediction).
    event_slots: np.ndarray
    event_offsets: np.ndarray
    event_times: np.ndarray
    # The store's generation it was computed in (``KeyedStore.applied``).
    generation: int = 0


# A step without a changelog (a backfill) forgets idle keys itself, every this many batches:
# nothing else would, and a long history holds many keys that went idle long ago.
SWEEP_EVERY_BATCHES = 256


class FeatureStep:
    def __init__(self, spec: StateSpec, store: KeyedStore | None = None, *, changelog: bool = True) -> None:
        self.spec = spec
        self.store = (
            store if store is not None else KeyedStore(spec.capacity, len(spec.fields), track_changes=changelog)
        )
        self._applied = 0
        self.field_index = {name: i for i, name in enumerate(spec.fields)}
        self._before = [f for f in spec.features if not f.include_current]
        self._after = [f for f in spec.features if f.include_current]
        # The newest event time seen per partition: what the TTL sweep counts idleness from.
        self.latest_ms: dict[Partition, int] = {}
        # Model versions that made the predictions kept per key (``store.prediction_version`` indexes it).
        self.versions: list[str] = []

    def compute(
        self,
        partitions: Sequence[Partition],
        keys: Sequence[bytes],
        times: np.ndarray,
        values: np.ndarray,
        offsets: np.ndarray,
    ) -> tuple[dict[str, np.ndarray], StateUpdate]:
        """Each feature for each event (in order), and the keys' state with the events appended."""
        n = len(keys)
        out = {f.name: np.zeros((n, *f.shape), dtype=np.float32) for f in self.spec.features}
        times = np.asarray(times, dtype=np.int64)
        event_time, newest = self._partition_time(partitions, times)
        slots = self.store.slots_for(partitions, keys)
        unique, local = np.unique(slots, return_inverse=True)
        store = self.store
        state = StateUpdate(
            unique,
            store.times[unique],
            store.values[unique],
            store.length[unique],
            store.offset[unique],
            newest,
            slots,
            np.asarray(offsets, dtype=np.int64),
            times,
            store.generation,
        )
        rank = occurrence_rank(local)
        # Each round's events, in batch order, as slices of one sort (a hot key makes many rounds).
        by_round = np.argsort(rank, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(rank))]) if n else np.zeros(1, dtype=np.int64)
        for r in range(len(bounds) - 1):
            idx = by_round[bounds[r] : bounds[r + 1]]
            rows, at = local[idx], times[idx]
            kept_newest = newest_times(state.times[rows], state.length[rows])
            idle = (state.length[rows] > 0) & (kept_newest < event_time[idx] - self.spec.ttl_ms)
            if idle.any():
                stale = rows[idle]
                state.times[stale], state.values[stale], state.length[stale] = 0, 0, 0
            self._fill(out, self._before, idx, state, rows, at)
            state.times[rows, :-1] = state.times[rows, 1:]
            state.times[rows, -1] = at
            state.values[rows, :-1] = state.values[rows, 1:]
            state.values[rows, -1] = values[idx]
            state.length[rows] = np.minimum(state.length[rows] + 1, store.capacity)
            state.offset[rows] = offsets[idx]
            self._fill(out, self._after, idx, state, rows, at)
        return out, state

    def apply(self, update: StateUpdate) -> None:
        """Write a scored batch's state (batches in the order they were computed)."""
        store = self.store
        store.times[update.slots] = update.times
        store.values[update.slots] = update.values
        store.length[update.slots] = update.length
        store.offset[update.slots] = update.offset
        store.applied(update.generation)
        self.latest_ms.update(update.latest_ms)
        self._applied += 1
        if not store.track_changes and self._applied % SWEEP_EVERY_BATCHES == 0:
            for partition in update.latest_ms:
                self.sweep(partition)

    def remember(self, update: StateUpdate, rows: np.ndarray, predictions: np.ndarray, version: str) -> None:
        """Keep the last prediction of each key of a scored batch (``rows``: the events scored, in
        batch order, one prediction each), for serving by key."""
        if version not in self.versions:
            self.versions.append(version)
        slots = update.event_slots[rows]
        values = predictions if predictions.ndim == 1 else np.full(len(rows), np.nan, dtype=np.float32)
        # A key's last event of the batch wins (numpy leaves the order of repeated indices open).
        _, from_end = np.unique(slots[::-1], return_index=True)
        last = len(slots) - 1 - from_end
        store = self.store
        store.prediction[slots[last]] = values[last]
        store.prediction_offset[slots[last]] = update.event_offsets[rows][last]
        store.prediction_ts[slots[last]] = update.event_times[rows][last]
        store.prediction_version[slots[last]] = self.versions.index(version)

    def sweep(self, partition: Partition) -> int:
        """Forget the partition's keys idle past the TTL, by event time; returns how many."""
        latest = self.latest_ms.get(partition)
        return 0 if latest is None else self.store.sweep(partition, latest - self.spec.ttl_ms)

    def drop_partitions(self, partitions: Sequence[Partition]) -> None:
        self.store.drop_partitions(partitions)
        for partition in partitions:
            self.latest_ms.pop(partition, None)

    def _partition_time(
        self, partitions: Sequence[Partition], times: np.ndarray
    ) -> tuple[np.ndarray, dict[Partition, int]]:
        """Each event's partition event time (see the module docstring), and each partition's newest."""
        first = partitions[0] if len(partitions) else None
        if all(p == first for p in partitions):
            groups = {first: np.arange(len(times))} if first is not None else {}
        else:
            index: dict[Partition, list[int]] = {}
            for i, partition in enumerate(partitions):
                index.setdefault(partition, []).append(i)
            groups = {p: np.asarray(rows) for p, rows in index.items()}
        event_time = np.empty(len(times), dtype=np.int64)
        newest: dict[Partition, int] = {}
        for partition, rows in groups.items():
            assert partition is not None
            running = np.maximum.accumulate(times[rows])
            before = self.latest_ms.get(partition)
            if before is not None:
                running = np.maximum(running, before)
            event_time[rows] = running
            newest[partition] = int(running[-1])
        return event_time, newest

    def _fill(
        self,
        out: dict[str, np.ndarray],
        features: list[Feature],
        idx: np.ndarray,
        state: StateUpdate,
        rows: np.ndarray,
        at: np.ndarray,
    ) -> None:
        if not features:
            return
        times, values, length = state.times[rows], state.values[rows], state.length[rows]
        for name, array in compute_all(features, times, values, length, at, self.field_index).items():
            out[name][idx] = array


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
