"""Per-key state in memory, column-wise, so a batch's keys are read and written with numpy.

Each key has a slot: a row of ``times`` (capacity,) and ``values`` (capacity, fields) holding its
last ``capacity`` events right-aligned (the newest in the last column), ``length`` of them real,
and the source ``offset`` of the newest. Slots are per input partition (``tables``): a partition
moves to another worker with its keys, and only its keys.

Changed keys are remembered per partition (``take_changed``) until the next commit writes them to
the changelog; a key forgotten by ``sweep`` (idle past its TTL) is written as a tombstone.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from streams.records import Partition


def partition_runs(partitions: Sequence[Partition]) -> Iterator[tuple[Partition, int, int]]:
    """``(partition, start, stop)`` of each run of equal partitions (a batch holds each fetched
    partition's records together, so there are about as many runs as partitions)."""
    start = 0
    for partition, run in itertools.groupby(partitions):
        stop = start + sum(1 for _ in run)
        yield partition, start, stop
        start = stop


def newest_times(times: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Each row's newest kept event time (the smallest int64 for a row with none): what a key's
    idleness counts from, so one late event (stamped early, out of order) does not age a key."""
    capacity = times.shape[1]
    real = np.arange(capacity)[None, :] >= (capacity - length)[:, None]
    return np.where(real, times, np.iinfo(np.int64).min).max(axis=1)


@dataclass(frozen=True)
class KeyState:
    """One key's state, copied out of the store: its last events right-aligned in ``times``
    (capacity,) and ``values`` (capacity, fields), ``length`` of them real, the source offset
    of the newest, and its last prediction if known (value, source offset, event time, model
    version index)."""

    times: np.ndarray
    values: np.ndarray
    length: int
    offset: int
    prediction: tuple[float, int, int, int] | None = None


class KeyedStore:
    # Whether the store keeps a local copy of the changelog (``persisted`` wants the records).
    keeps_local_copy = False

    def __init__(self, capacity: int, fields: int, *, initial_slots: int = 1024, track_changes: bool = True) -> None:
        self.capacity = capacity
        self.fields = fields
        self.times = np.zeros((initial_slots, capacity), dtype=np.int64)
        self.values = np.zeros((initial_slots, capacity, fields), dtype=np.float32)
        self.length = np.zeros(initial_slots, dtype=np.int32)
        self.offset = np.full(initial_slots, -1, dtype=np.int64)
        # The key's last prediction, for serving by key (kept in memory only, not in the changelog):
        # its value (NaN: none yet, or not one number), source offset, event time, model version (an index).
        self.prediction = np.full(initial_slots, np.nan, dtype=np.float32)
        self.prediction_offset = np.full(initial_slots, -1, dtype=np.int64)
        self.prediction_ts = np.zeros(initial_slots, dtype=np.int64)
        self.prediction_version = np.zeros(initial_slots, dtype=np.int16)
        self.tables: dict[Partition, dict[bytes, int]] = {}
        self._changed: dict[Partition, set[bytes]] = {}
        self._free: list[int] = []
        self._used = 0
        # Only a store with a changelog needs to know which keys changed (a backfill's does not).
        self.track_changes = track_changes
        # Counts ``slots_for`` calls: a batch's state update names the generation it was computed in.
        self.generation = 0

    def __len__(self) -> int:
        return sum(len(table) for table in self.tables.values())

    def slots_for(self, partitions: Sequence[Partition], keys: Sequence[bytes]) -> np.ndarray:
        """The slot of each (partition, key), a new empty one for a key not seen before; each key is
        marked changed (its events are about to be appended)."""
        self.generation += 1
        slots = np.empty(len(keys), dtype=np.int64)
        for partition, lo, hi in partition_runs(partitions):
            table = self.tables.get(partition)
            if table is None:
                table = self.tables[partition] = {}
                self._changed[partition] = set()
            group = keys[lo:hi]
            found = [table.get(key) for key in group]
            if None in found:
                for i, slot in enumerate(found):
                    if slot is None:  # new (or new earlier in this group)
                        key = group[i]
                        slot = table.get(key)
                        found[i] = (
                            slot if slot is not None else table.setdefault(key, self._new_slot_for(partition, key))
                        )
            slots[lo:hi] = found  # type: ignore[assignment]  # no None left
            if self.track_changes:
                self._changed[partition].update(group)
        return slots

    def clear(self, slots: np.ndarray) -> None:
        """Forget the events of ``slots`` (a key idle past its TTL starts again from nothing)."""
        self.times[slots] = 0
        self.values[slots] = 0
        self.length[slots] = 0

    def sweep(self, partition: Partition, idle_before_ms: int) -> int:
        """Forget the keys of ``partition`` whose newest event is older than ``idle_before_ms`` (their
        features would start from nothing anyway); returns how many."""
        table = self.tables.get(partition, {})
        if not table:
            return 0
        keys = list(table)
        slots = np.fromiter(table.values(), dtype=np.int64, count=len(keys))
        idle = np.flatnonzero(newest_times(self.times[slots], self.length[slots]) < idle_before_ms)
        for i in idle.tolist():
            self._forget(partition, keys[i])
        return int(idle.size)

    def take_changed(self, partition: Partition) -> list[tuple[bytes, int | None]]:
        """The keys changed since the last call, each with its slot, or None for a forgotten key."""
        changed = self._changed.get(partition)
        if not changed:
            return []
        self._changed[partition] = set()
        table = self.tables.get(partition, {})
        return [(key, table.get(key)) for key in changed]

    def peek(self, partition: Partition, key: bytes) -> KeyState | None:
        """A copy of a key's state, or None for a key with no state (serving by key): reading it
        changes nothing in the store."""
        slot = self.tables.get(partition, {}).get(key)
        if slot is None:
            return None
        prediction = None
        if self.prediction_offset[slot] >= 0:
            prediction = (
                float(self.prediction[slot]),
                int(self.prediction_offset[slot]),
                int(self.prediction_ts[slot]),
                int(self.prediction_version[slot]),
            )
        times, values = self.times[slot].copy(), self.values[slot].copy()
        return KeyState(times, values, int(self.length[slot]), int(self.offset[slot]), prediction)

    def key_count(self, partition: Partition) -> int:
        return len(self.tables.get(partition, {}))

    # What a store with a local copy of the changelog (``RocksStore``) does more; here, nothing.
    def open(self, partition: Partition) -> tuple[int, int | None] | None:
        """Before a restore: the changelog offset the local copy reflects and the partition's event
        time there, or None to restore from the beginning (there is no local copy)."""
        return None

    async def acquire(self, partition: Partition) -> None:
        """Before ``open``: take hold of the partition's local copy (waiting for another process)."""

    def wipe(self, partition: Partition) -> None:
        """Forget the local copy of ``partition`` (it cannot be brought up to date from the changelog)."""

    def mirror(self, partition: Partition, record_key: bytes, record_value: bytes | None) -> None:
        """Keep a changelog record read during a restore, as it is, in the local copy."""

    def restored(self, partition: Partition, next_offset: int) -> None:
        """The local copy holds the changelog up to ``next_offset`` (exclusive)."""

    def persisted(self, partition: Partition, records: Sequence[tuple[bytes, bytes | None]], next_offset: int) -> None:
        """``records`` (the changelog records of a committed transaction) are committed up to ``next_offset``."""

    def applied(self, generation: int) -> None:
        """The state computed in ``generation`` (and every one before) is written to the store."""

    def close(self) -> None:
        """Release what the store holds outside the process's memory."""

    def load(self, partition: Partition, key: bytes, times: np.ndarray, values: np.ndarray, offset: int) -> None:
        """Set a key's state (restoring from the changelog); not marked changed."""
        table = self.tables.setdefault(partition, {})
        self._changed.setdefault(partition, set())
        slot = table.get(key)
        if slot is None:
            slot = table[key] = self._new_slot_for(partition, key)
        n = len(times)
        self.clear(np.array([slot]))
        if n:
            self.times[slot, -n:] = times
            self.values[slot, -n:] = values
        self.length[slot] = n
        self.offset[slot] = offset

    def unload(self, partition: Partition, key: bytes) -> None:
        """Forget a key without marking it changed (a tombstone read from the changelog)."""
        table = self.tables.get(partition, {})
        slot = table.pop(key, None)
        if slot is not None:
            self._release(slot)

    def drop_partitions(self, partitions: Iterable[Partition]) -> None:
        """Forget every key of ``partitions`` (they moved to another worker)."""
        for partition in partitions:
            for slot in self.tables.pop(partition, {}).values():
                self._release(slot)
            self._changed.pop(partition, None)

    def events(self, slot: int) -> tuple[np.ndarray, np.ndarray]:
        """A slot's real events: their times and values, oldest first."""
        n = int(self.length[slot])
        return self.times[slot, self.capacity - n :], self.values[slot, self.capacity - n :]

    def _forget(self, partition: Partition, key: bytes) -> None:
        self._release(self.tables[partition].pop(key))
        if self.track_changes:
            self._changed.setdefault(partition, set()).add(key)

    def _release(self, slot: int) -> None:
        self.clear(np.array([slot]))
        self.offset[slot] = -1
        self.prediction[slot], self.prediction_offset[slot] = np.nan, -1
        self._free.append(slot)

    def _new_slot_for(self, partition: Partition, key: bytes) -> int:
        return self._new_slot()

    def _new_slot(self) -> int:
        if self._free:
            return self._free.pop()
        if self._used == len(self.length):
            self._grow()
        self._used += 1
        return self._used - 1

    def _grow(self) -> None:
        size = 2 * len(self.length)
        self.times = _resized(self.times, size)
        self.values = _resized(self.values, size)
        self.length = _resized(self.length, size)
        self.offset = _resized(self.offset, size, fill=-1)
        self.prediction = _resized(self.prediction, size, fill=np.nan)
        self.prediction_offset = _resized(self.prediction_offset, size, fill=-1)
        self.prediction_ts = _resized(self.prediction_ts, size)
        self.prediction_version = _resized(self.prediction_version, size)


def _resized(array: np.ndarray, rows: int, fill: float = 0) -> np.ndarray:
    grown = np.full((rows, *array.shape[1:]), fill, dtype=array.dtype)
    grown[: len(array)] = array
    return grown
