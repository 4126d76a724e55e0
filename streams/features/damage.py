"""Damaged records in a worker's local RocksDB copy of its state, and what is done about them.

A record of the database that is not a state sluice wrote (damaged) is never taken for a key
with nothing: a batch that reads one raises ``StateError`` before any of its events is scored,
and the database is marked damaged, to be emptied and rebuilt from the changelog at the
partition's next restore (the worker's restart). Reading one to serve a key (``peek``) raises
and changes nothing, but the partition's next batch then stops the same way: a copy known to
hold one damaged record is not trusted for any event of its partition.
"""

from __future__ import annotations

from collections.abc import Set
from typing import NoReturn

import numpy as np
from rocksdict import Rdict

from streams.errors import StateError
from streams.features.local_db import KEY_PREFIX, PartitionDatabases
from streams.features.snapshot import decode_state
from streams.features.store import KeyState
from streams.records import Partition


class DamagedCopies:
    """Reads and decodes a partition's records; notes the partitions found damaged, and what was found."""

    def __init__(self, databases: PartitionDatabases, layout_id: bytes, fields: int, capacity: int) -> None:
        self.databases = databases
        self.layout_id = layout_id
        self.fields = fields
        self.capacity = capacity
        self._found: dict[Partition, str] = {}

    def __bool__(self) -> bool:
        return bool(self._found)

    def __contains__(self, partition: object) -> bool:
        return partition in self._found

    def partitions(self) -> Set[Partition]:
        return self._found.keys()

    def read(self, partition: Partition, db: Rdict, keys: list[bytes]) -> list[bytes | None]:
        """The stored records of ``keys`` (None for a key the database does not hold); a read
        RocksDB refuses notes the database damaged and raises."""
        try:
            stored: list[bytes | None] = db.get([KEY_PREFIX + k for k in keys])  # type: ignore[assignment]
        except Exception as exc:  # noqa: BLE001 - rocksdict raises a bare Exception (RocksDB's Corruption, IOError)
            self._found.setdefault(partition, f"reading it failed: {exc}")
            raise StateError(self.message(partition)) from None
        return stored

    def decode(self, partition: Partition, key: bytes, value: bytes) -> tuple[np.ndarray, np.ndarray, int]:
        """A stored record as a key's state; one that is not notes the database damaged and raises."""
        try:
            return decode_state(value, self.layout_id, self.fields, self.capacity)
        except StateError as exc:
            self._found.setdefault(partition, f"the record of key {key[:40]!r}: {exc}")
            raise StateError(self.message(partition)) from None

    def key_state(self, partition: Partition, key: bytes, value: bytes) -> KeyState:
        """A stored record as the ``KeyState`` the memory store would hold (serving a key)."""
        times, values, offset = self.decode(partition, key, value)
        n = len(times)
        padded_times = np.zeros(self.capacity, dtype=np.int64)
        padded_values = np.zeros((self.capacity, self.fields), dtype=np.float32)
        if n:
            padded_times[-n:], padded_values[-n:] = times, values
        return KeyState(padded_times, padded_values, n, offset)

    def message(self, partition: Partition) -> str:
        return (
            f"the local state of {partition[0]}[{partition[1]}] (a copy of the changelog) holds a damaged record "
            f"({self._found[partition]}); it is rebuilt from the changelog before the partition is scored again"
        )

    def stop(self, partition: Partition) -> NoReturn:
        """A batch of a partition whose database is damaged: nothing of it is scored. The database is
        marked damaged and let go of (nothing more is written to it), to be emptied and rebuilt from
        the changelog at the partition's next restore."""
        self.databases.mark_damaged(partition, self._found[partition])
        raise StateError(
            f"{self.message(partition)}: stopping, nothing of this batch scored; restart the worker to rebuild it"
        )

    def let_go(self, partition: Partition) -> None:
        """The partition leaves this worker: whoever restores it next (this worker, or a restart) rebuilds it."""
        reason = self._found.pop(partition, None)
        if reason is not None:
            self.databases.mark_damaged(partition, reason)
