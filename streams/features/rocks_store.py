"""Per-key state larger than memory: each input partition's keys in a local RocksDB database
(``local_db``: a copy of the changelog as of a committed point), the keys in use cached in the
memory store's numpy arrays. A restart reads the changelog from the copy's checkpoint on, not
all of it; a copy of another layout, or whose checkpoint is outside the changelog (the topic
was recreated, or records deleted), is wiped and rebuilt from the changelog's beginning.

(As in Kafka Streams, a key forgotten while the copy was away, whose tombstone compaction has
removed since, stays in it: idle past its TTL, it starts from nothing and is swept again.)

A damaged record is never taken for a key with nothing: see ``streams.features.damage``.

The cache holds at most ``cache_keys`` keys; the least recently used go first. A key changed
since the last commit (or, in a backfill, by a batch not yet written to the store) is never
evicted, so the cache exceeds its bound by at most the keys of one commit interval.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rocksdict import Rdict

from streams.errors import StateError
from streams.features.damage import DamagedCopies
from streams.features.folders import release_own_folder
from streams.features.local_db import KEY_PREFIX, PartitionDatabases, new_batch, put_or_delete
from streams.features.snapshot import encode_state
from streams.features.store import KeyedStore, KeyState, _resized, partition_runs
from streams.records import Partition

# Keys of the database (not cached) each sweep looks at for idleness, going round the database.
SWEEP_SCAN_KEYS = 2048


class RocksStore(KeyedStore):
    keeps_local_copy = True

    def __init__(
        self,
        capacity: int,
        fields: int,
        *,
        layout_id: bytes,
        directory: Path,
        cache_keys: int,
        track_changes: bool = True,
        remove_on_close: bool = False,
    ) -> None:
        super().__init__(capacity, fields, initial_slots=max(16, min(1024, cache_keys)), track_changes=track_changes)
        self.layout_id = layout_id
        self.cache_keys = cache_keys
        self.remove_on_close = remove_on_close
        self.last_used = np.zeros(len(self.length), dtype=np.int64)
        # Changed since the database last had it (not to be evicted before it does).
        self.dirty = np.zeros(len(self.length), dtype=bool)
        self.occupied = np.zeros(len(self.length), dtype=bool)
        self.slot_keys: list[tuple[Partition, bytes] | None] = [None] * len(self.length)
        self.applied_generation = 0
        self.evicted = 0
        self.databases = PartitionDatabases(directory, layout_id)
        self._restoring: dict[Partition, Any] = {}
        self._damage = DamagedCopies(self.databases, layout_id, fields, capacity)

    def slots_for(self, partitions: Sequence[Partition], keys: Sequence[bytes]) -> np.ndarray:
        if self._damage:
            for partition, _, _ in partition_runs(partitions):
                if partition in self._damage:
                    self._damage.stop(partition)
        # This batch's cached keys are marked in use first: making room for its other keys must not evict them.
        missing: dict[tuple[Partition, bytes], None] = {}
        for partition, lo, hi in partition_runs(partitions):
            table = self.tables.get(partition, {})
            found = [table.get(key) for key in keys[lo:hi]]
            self.last_used[[slot for slot in found if slot is not None]] = self.generation + 1
            missing |= {(partition, keys[lo + i]): None for i, slot in enumerate(found) if slot is None}
        if missing:
            self._fault_in(list(missing))
        slots = super().slots_for(partitions, keys)
        self.last_used[slots] = self.generation
        self.dirty[slots] = True
        return slots

    def peek(self, partition: Partition, key: bytes) -> KeyState | None:
        if key in self.tables.get(partition, ()):
            return super().peek(partition, key)
        db = self.databases.get(partition)
        if db is None and partition in self._damage:  # let go of, to be rebuilt
            raise StateError(self._damage.message(partition))
        if db is None or key in self._changed.get(partition, ()):  # not open, or forgotten since the last commit
            return None
        value = self._damage.read(partition, db, [key])[0]
        return None if value is None else self._damage.key_state(partition, key, value)

    def key_count(self, partition: Partition) -> int:
        return max(self.databases.key_count(partition), super().key_count(partition))

    def applied(self, generation: int) -> None:
        self.applied_generation = max(self.applied_generation, generation)

    def _fault_in(self, wanted: list[tuple[Partition, bytes]]) -> None:
        """Bring the wanted keys' state from the database into the cache (a key it does not hold
        gets a new empty slot later, in ``slots_for``)."""
        self._make_room(len(wanted))
        by_partition: dict[Partition, list[bytes]] = {}
        for partition, key in wanted:
            by_partition.setdefault(partition, []).append(key)
        for partition, keys in by_partition.items():
            db = self._db(partition)
            if db is None:
                continue
            # A key forgotten since the last commit (its tombstone not yet persisted) is not read back.
            pending = self._changed.get(partition, set())
            keys = [key for key in keys if key not in pending]
            try:
                stored = self._damage.read(partition, db, keys)
                decode = self._damage.decode
                states = [v if v is None else decode(partition, k, v) for k, v in zip(keys, stored, strict=True)]
            except StateError:
                self._damage.stop(partition)
            for key, state in zip(keys, states, strict=True):
                if state is not None:
                    super().load(partition, key, *state)
                    slot = self.tables[partition][key]
                    self.dirty[slot], self.last_used[slot] = False, self.generation + 1

    def _make_room(self, incoming: int) -> None:
        """Evict the least recently used clean keys if ``incoming`` more would pass the bound (down
        to 90% of it, so eviction runs once per many batches, not on each)."""
        cached = int(self.occupied.sum())
        if cached + incoming <= self.cache_keys:
            return
        target = cached + incoming - int(self.cache_keys * 0.9)
        evictable = self.occupied & (self.last_used <= self.applied_generation)
        if self.track_changes:
            evictable &= ~self.dirty
        candidates = np.flatnonzero(evictable)
        if len(candidates) > target:
            candidates = candidates[np.argpartition(self.last_used[candidates], target - 1)[:target]]
        writes: dict[Partition, Any] = {}
        for slot in candidates.tolist():
            owner = self.slot_keys[slot]
            assert owner is not None
            partition, key = owner
            if self.dirty[slot]:  # a backfill's: the database is where its state lives from now on
                batch = writes.setdefault(partition, new_batch())
                batch.put(KEY_PREFIX + key, encode_state(self.layout_id, int(self.offset[slot]), *self.events(slot)))
            self._release(self.tables[partition].pop(key))
        for partition, batch in writes.items():
            self.databases.write(partition, batch)
        self.evicted += len(candidates)

    def _new_slot_for(self, partition: Partition, key: bytes) -> int:
        slot = super()._new_slot_for(partition, key)
        self.occupied[slot] = True
        self.slot_keys[slot] = (partition, key)
        return slot

    def _release(self, slot: int) -> None:
        super()._release(slot)
        self.occupied[slot] = False
        self.dirty[slot] = False
        self.slot_keys[slot] = None

    def _grow(self) -> None:
        super()._grow()
        size = len(self.length)
        grown = [_resized(a, size) for a in (self.last_used, self.dirty, self.occupied)]
        self.last_used, self.dirty, self.occupied = grown
        self.slot_keys += [None] * (size - len(self.slot_keys))

    def load(self, partition: Partition, key: bytes, times: np.ndarray, values: np.ndarray, offset: int) -> None:
        """A restored key goes to the database (``mirror``), not the cache: state may exceed memory."""
        self.unload(partition, key)

    def unload(self, partition: Partition, key: bytes) -> None:
        slot = self.tables.get(partition, {}).pop(key, None)
        if slot is not None:
            self._release(slot)

    def _forget(self, partition: Partition, key: bytes) -> None:
        super()._forget(partition, key)
        db = self._db(partition)
        if not self.track_changes and db is not None:
            del db[KEY_PREFIX + key]  # a backfill's: no changelog tombstone will do it

    def sweep(self, partition: Partition, idle_before_ms: int) -> int:
        forgotten = super().sweep(partition, idle_before_ms)
        db = self._db(partition)
        if db is None:
            return forgotten
        cached, pending = self.tables.get(partition, {}), self._changed.get(partition, set())
        idle = [
            key
            for key in self.databases.idle_keys(partition, idle_before_ms, SWEEP_SCAN_KEYS)
            if key not in cached and key not in pending
        ]
        for key in idle:
            if self.track_changes:
                self._changed.setdefault(partition, set()).add(key)  # a tombstone at the next commit
            else:
                del db[KEY_PREFIX + key]
        return forgotten + len(idle)

    async def acquire(self, partition: Partition) -> None:
        await self.databases.acquire(partition)

    def open(self, partition: Partition) -> tuple[int, int | None] | None:
        return self.databases.checkpoint(partition)

    def wipe(self, partition: Partition) -> None:
        self.databases.wipe(partition)

    def mirror(self, partition: Partition, record_key: bytes, record_value: bytes | None) -> None:
        batch = self._restoring.get(partition)
        if batch is None:
            batch = self._restoring[partition] = new_batch()
        put_or_delete(batch, record_key, record_value)

    def restored(self, partition: Partition, next_offset: int) -> None:
        self.databases.write(partition, self._restoring.pop(partition, None) or new_batch(), next_offset)

    def persisted(self, partition: Partition, records: Sequence[tuple[bytes, bytes | None]], next_offset: int) -> None:
        if self.databases.get(partition) is None:
            return  # given up meanwhile: its next owner restores from the changelog
        batch = new_batch()
        for key, value in records:
            put_or_delete(batch, key, value)
        self.databases.write(partition, batch, next_offset)
        table, changed_again = self.tables.get(partition, {}), self._changed.get(partition, set())
        for key, _ in records:
            slot = table.get(key[1:]) if key[:1] == KEY_PREFIX else None
            if slot is not None and key[1:] not in changed_again:
                self.dirty[slot] = False

    def drop_partitions(self, partitions: Iterable[Partition]) -> None:
        partitions = list(partitions)
        super().drop_partitions(partitions)
        for partition in partitions:
            self._restoring.pop(partition, None)
            self._damage.let_go(partition)
        self.databases.close(partitions)

    def close(self) -> None:
        self.drop_partitions(list(self.tables.keys() | self._damage.partitions()))
        self.databases.close()
        if self.remove_on_close:
            shutil.rmtree(self.databases.directory, ignore_errors=True)
            release_own_folder(self.databases.directory)

    def _db(self, partition: Partition) -> Rdict | None:
        """The partition's database: a live worker's is opened by ``open`` (restoring), a backfill's
        (``track_changes`` false: no changelog, a directory of its own) when first needed."""
        if self.track_changes:
            return self.databases.get(partition)
        return self.databases.open(partition)
