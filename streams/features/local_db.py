"""The local copy of a changelog: a RocksDB database (through ``rocksdict``) per input partition.

A partition's database holds the same records as its changelog partition (``k`` + key: a key's
state; ``w``: the partition's event time) as of the changelog offset it names (``m:checkpoint``:
it reflects every record before it), and the layout its states were written under
(``m:layout``). Records reach it only once the Kafka transaction that carried them committed,
so it is never ahead of the committed offsets.

One process opens a database at a time (RocksDB's lock). A worker that finds a partition's
database locked (another worker on this host, sharing the folder, has not let go of it)
waits a little, then uses a private folder instead (marked as its own, see ``folders``),
rebuilt from the changelog and removed when it lets go of the partition.

A copy found damaged (a record that is not what sluice wrote, or one RocksDB cannot read) is
marked so (``m:damaged``) and let go of: the next ``checkpoint`` of its partition empties it,
and the restore rebuilds it from the changelog, which holds the true state.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import struct
import time
from collections.abc import Iterable
from pathlib import Path

from rocksdict import Options, Rdict, WriteBatch

from streams.errors import StateError
from streams.features.folders import make_own_folder, release_own_folder
from streams.features.snapshot import newest_time
from streams.records import Partition

log = logging.getLogger(__name__)

KEY_PREFIX = b"k"
EVENT_TIME_KEY = b"w"
CHECKPOINT_KEY = b"m:checkpoint"
LAYOUT_KEY = b"m:layout"
DAMAGED_KEY = b"m:damaged"
_INT64 = struct.Struct("<q")
# How long to wait for another process on this host to let go of a partition's database.
LOCK_WAIT_S = 5.0


def _options() -> Options:
    options = Options(raw_mode=True)
    options.create_if_missing(True)
    return options


def new_batch() -> WriteBatch:
    return WriteBatch(raw_mode=True)


def put_or_delete(batch: WriteBatch, key: bytes, value: bytes | None) -> None:
    """A changelog record into ``batch``: None (a tombstone) deletes the key."""
    if value is None:
        batch.delete(key)
    else:
        batch.put(key, value)


class PartitionDatabases:
    def __init__(self, directory: Path, layout_id: bytes) -> None:
        self.directory = directory
        self.layout_id = layout_id
        self._dbs: dict[Partition, Rdict] = {}
        self._private: dict[Partition, Path] = {}
        # Where the next idle-key scan of each partition starts.
        self._sweep_from: dict[Partition, bytes] = {}

    def get(self, partition: Partition) -> Rdict | None:
        """The partition's database if it is open."""
        return self._dbs.get(partition)

    def checkpoint(self, partition: Partition) -> tuple[int, int | None] | None:
        """Opens the partition's database: the changelog offset it reflects and the partition's
        event time in it, or None for a database with nothing (one of another layout, or marked
        damaged, is wiped)."""
        db = self.open(partition)
        try:
            meta: list[bytes | None] = db.get([LAYOUT_KEY, DAMAGED_KEY, CHECKPOINT_KEY, EVENT_TIME_KEY])  # type: ignore[assignment]
            layout, damaged, checkpoint, event_time = meta
        except Exception as exc:  # noqa: BLE001 - rocksdict raises a bare Exception (RocksDB's Corruption, IOError)
            layout, damaged, checkpoint, event_time = self.layout_id, str(exc).encode(), None, None
        if damaged is None and any(v is not None and len(v) != _INT64.size for v in (checkpoint, event_time)):
            damaged = b"its checkpoint or event time record is not 8 bytes"
        if damaged is not None:
            log.warning(
                "the local state of %s[%d] in %s was found damaged (%s): rebuilding it from the changelog",
                *partition,
                self._private.get(partition) or self.path(partition),
                damaged.decode("utf-8", "replace"),
            )
        if layout != self.layout_id or damaged is not None:
            self.wipe(partition)
            return None
        if checkpoint is None:
            return None
        return _INT64.unpack(checkpoint)[0], None if event_time is None else _INT64.unpack(event_time)[0]

    def mark_damaged(self, partition: Partition, reason: str) -> None:
        """Mark the partition's database damaged and let go of it: its next ``checkpoint`` (the
        partition's next restore) empties it, to be rebuilt from the changelog. Nothing is written
        to it meanwhile (``get`` says it is not open)."""
        db = self._dbs.pop(partition, None)
        self._sweep_from.pop(partition, None)
        if db is None:
            return
        try:
            db[DAMAGED_KEY] = reason.encode()[:1000]
        except Exception:  # noqa: BLE001 - rocksdict raises a bare Exception; then empty it at once
            db.close()
            Rdict.destroy(str(self._private.get(partition) or self.path(partition)), _options())
            return
        db.close()

    def wipe(self, partition: Partition) -> Rdict:
        """An empty database in place of the partition's."""
        db = self._dbs.pop(partition, None)
        if db is not None:
            db.close()
        Rdict.destroy(str(self._private.get(partition) or self.path(partition)), _options())
        return self.open(partition)

    def write(self, partition: Partition, batch: WriteBatch, next_offset: int | None = None) -> None:
        """Write ``batch`` (and, atomically with it, the changelog offset it brings the copy to)."""
        if next_offset is not None:
            batch.put(CHECKPOINT_KEY, _INT64.pack(next_offset))
        self.open(partition).write(batch)

    def idle_keys(self, partition: Partition, idle_before_ms: int, scan: int) -> list[bytes]:
        """The keys whose newest event is older than ``idle_before_ms`` among the next ``scan``
        of the partition's database, going round it from one call to the next."""
        db = self._dbs.get(partition)
        if db is None:
            return []
        it = db.iter()
        it.seek(self._sweep_from.get(partition, KEY_PREFIX))
        idle: list[bytes] = []
        for _ in range(scan):
            if not it.valid() or it.key()[:1] != KEY_PREFIX:
                break
            newest = newest_time(it.value())
            if newest is not None and newest < idle_before_ms:
                idle.append(it.key()[1:])
            it.next()
        self._sweep_from[partition] = it.key() if it.valid() and it.key()[:1] == KEY_PREFIX else KEY_PREFIX
        return idle

    def key_count(self, partition: Partition) -> int:
        """RocksDB's estimate of the keys (exact until its files are compacted), less the records that are not keys."""
        db = self._dbs.get(partition)
        if db is None:
            return 0
        meta = sum(db.get(k) is not None for k in (LAYOUT_KEY, CHECKPOINT_KEY, EVENT_TIME_KEY))
        return max(0, (db.property_int_value("rocksdb.estimate-num-keys") or 0) - meta)

    def close(self, partitions: Iterable[Partition] | None = None) -> None:
        for partition in list(self._dbs if partitions is None else partitions):
            db = self._dbs.pop(partition, None)
            if db is not None:
                db.close()
            self._sweep_from.pop(partition, None)
            private = self._private.pop(partition, None)
            if private is not None:
                shutil.rmtree(private.parent, ignore_errors=True)
                release_own_folder(private.parent)

    def path(self, partition: Partition) -> Path:
        topic, number = partition
        if not topic.strip(".") or "/" in topic or "\\" in topic or "\0" in topic:
            raise StateError(f"cannot keep the state of a topic named {topic!r} in a folder")
        return self.directory / f"{topic}-{number}"

    async def acquire(self, partition: Partition) -> None:
        """Open the partition's database, waiting up to ``LOCK_WAIT_S`` (without blocking the event
        loop) for another process on this host to let go of it; then a private folder instead."""
        deadline = time.monotonic() + LOCK_WAIT_S
        while partition not in self._dbs:
            if self._try_open(partition) is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            elif partition not in self._dbs:
                self._go_private(partition)

    def open(self, partition: Partition) -> Rdict:
        """The partition's database, opened now (a private folder if another process holds it)."""
        db = self._dbs.get(partition) or self._try_open(partition)
        if db is None:
            self._go_private(partition)
            db = self._try_open(partition)
            assert db is not None  # a folder named after this process: no one else opens it
        return db

    def _try_open(self, partition: Partition) -> Rdict | None:
        """The database, or None while another process holds its lock."""
        path = self._private.get(partition) or self.path(partition)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            db = _open_or_empty(path)
        except Exception as exc:  # noqa: BLE001 - rocksdict raises a bare Exception
            message = str(exc)
            if "/LOCK:" not in message:
                raise StateError(f"cannot open the state database {path}: {message}") from None
            if "current process" in message:
                raise StateError(f"the state database {path} is open twice in this process (a bug)") from None
            return None
        if db.get(LAYOUT_KEY) is None:
            if _holds_records(db):  # not one of ours (or damaged): it is only a copy, so start again
                log.warning("state database %s was not written by sluice: emptied", path)
                db.close()
                Rdict.destroy(str(path), _options())
                db = Rdict(str(path), _options())
            db[LAYOUT_KEY] = self.layout_id
        self._dbs[partition] = db
        return db

    def _go_private(self, partition: Partition) -> None:
        path = self.path(partition)
        private = self._private[partition] = make_own_folder(path.parent, f"{path.name}.private-") / "db"
        log.warning(
            "state database %s is in use by another process on this host; restoring %s[%d] into %s "
            "instead (give each worker on one host its own state directory to avoid this)",
            path,
            *partition,
            private,
        )


def _open_or_empty(path: Path) -> Rdict:
    """The database at ``path``; one whose own files RocksDB finds damaged is only a copy: emptied."""
    try:
        return Rdict(str(path), _options())
    except Exception as exc:  # rocksdict raises a bare Exception
        if not str(exc).startswith("Corruption"):
            raise
        log.warning("state database %s is damaged (%s): emptied, to be rebuilt from the changelog", path, exc)
    Rdict.destroy(str(path), _options())
    return Rdict(str(path), _options())


def _holds_records(db: Rdict) -> bool:
    it = db.iter()
    it.seek_to_first()
    return bool(it.valid())
