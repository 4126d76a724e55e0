"""Every model's score for every event of a backfill's plan, kept for its evaluation.

One slot per position the plan covers (its partitions one after another, offset by offset), so
a score lands at its event's slot whatever order the models scored in, nothing is joined by id
in memory, and a resumed run writes the events it scores again over the same slots. Beside the
scores, per slot, the event's label (``--labels FIELD``, read from the event as it is scored) or
a 64-bit hash of its id (``--labels kafka:TOPIC``: the labels topic is read once the replay is
done, and joined here by hash).

The arrays are ``.npy`` files in a folder beside the run's checkpoint, memory-mapped: 4 bytes
per event and model (plus 4 for a label or 8 for an id hash), in the page cache rather than
Python's heap, so a few million events cost a few tens of MiB. ``flush`` runs at each
checkpoint, so a run resumed after a crash still reports on every event; a slot never scored
(a dead letter, a gap in a partition's offsets) stays NaN.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from streams.backfill.replay_plan import ReplayPlan
from streams.errors import CheckpointError
from streams.flow.scored_groups import OnScored
from streams.records import SourceRecord

# Past this many events in one process's plan the files would take gigabytes per model: the
# run is split with --part K/N instead (each part keeps and reports its own).
MAX_SLOTS = 1 << 31
NO_HASH = 0  # what an id-hash slot holds until its event is scored (a real hash is never 0)


def id_hash(event_id: object) -> int:
    """A 64-bit hash of the id as text (labels are joined to events by their ids as text), never 0."""
    digest = hashlib.blake2b(str(event_id).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True) or 1


def labels_by_hash(labels: Mapping[str, float], hashes: np.ndarray) -> np.ndarray:
    """The label of each id hash in ``hashes`` (NaN where none, or for ``NO_HASH``)."""
    out = np.full(len(hashes), np.nan, dtype=np.float32)
    if not labels or not len(hashes):
        return out
    known = np.fromiter((id_hash(i) for i in labels), dtype=np.int64, count=len(labels))
    values = np.fromiter(labels.values(), dtype=np.float32, count=len(labels))
    order = np.argsort(known, kind="stable")
    known, values = known[order], values[order]
    at = np.minimum(np.searchsorted(known, hashes), len(known) - 1)
    found = (known[at] == hashes) & (hashes != NO_HASH)
    out[found] = values[at[found]]
    return out


class ScoreTable:
    """Scores by plan slot for ``models`` models (0: the champion), and labels or id hashes."""

    def __init__(self, folder: Path, plan: ReplayPlan, models: int, *, labels: bool, ids: bool) -> None:
        self.folder = folder
        self.size = plan.total
        if self.size > MAX_SLOTS:
            raise CheckpointError(
                f"the run's plan covers {self.size:,} events, more than the {MAX_SLOTS:,} one process keeps scores "
                "of for a report: split the run with --part K/N"
            )
        self._base: dict[tuple[str, int], int] = {}
        base = 0
        for tp in sorted(plan.end):
            self._base[(tp.topic, tp.partition)] = base - plan.start[tp]
            base += max(0, plan.end[tp] - plan.start[tp])
        self.models = models
        self.with_labels, self.with_ids = labels, ids
        self.scores: list[np.ndarray] = []
        self.labels: np.ndarray | None = None
        self.ids: np.ndarray | None = None
        # False when a resumed run found no scores of the events scored before it (they read NaN).
        self.kept_earlier = True

    def _files(self) -> list[tuple[str, np.dtype[np.generic], float]]:
        files: list[tuple[str, np.dtype[np.generic], float]] = [
            (f"model-{i}.npy", np.dtype(np.float32), np.nan) for i in range(self.models)
        ]
        if self.with_labels:
            files.append(("labels.npy", np.dtype(np.float32), np.nan))
        if self.with_ids:
            files.append(("id-hashes.npy", np.dtype(np.int64), NO_HASH))
        return files

    def open(self, *, resume: bool) -> ScoreTable:
        """Create the files (a new run), or map those a resumed run kept; files that are missing or
        not this run's shape are made anew, and ``kept_earlier`` says so."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CheckpointError(f"cannot keep scores for the report in {self.folder}: {exc.strerror}") from None
        arrays = [self._mapped(name, dtype, resume) for name, dtype, _ in self._files()]
        if resume and self.size and any(a is None for a in arrays):
            self.kept_earlier = False
        made = [
            a if a is not None and self.kept_earlier else self._create(name, dtype, empty)
            for a, (name, dtype, empty) in zip(arrays, self._files(), strict=True)
        ]
        self.scores = made[: self.models]
        rest = made[self.models :]
        self.labels = rest.pop(0) if self.with_labels else None
        self.ids = rest.pop(0) if self.with_ids else None
        return self

    def _checked_path(self, name: str) -> Path | None:
        """``folder/name`` if it is a regular file (None if absent); a link or anything else is refused."""
        path = self.folder / name
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(mode):
            raise CheckpointError(f"{path} is not a regular file a run wrote (a link?): remove it")
        return path

    def _mapped(self, name: str, dtype: np.dtype[np.generic], resume: bool) -> np.ndarray | None:
        path = self._checked_path(name)
        if not resume or path is None or not self.size:
            return None
        try:
            array = np.load(path, mmap_mode="r+", allow_pickle=False)
        except (OSError, ValueError):
            return None
        return array if array.dtype == dtype and array.shape == (self.size,) else None

    def _create(self, name: str, dtype: np.dtype[np.generic], empty: float) -> np.ndarray:
        if not self.size:  # nothing to map (an empty file cannot be)
            return np.full(0, empty, dtype=dtype)
        path = self._checked_path(name)
        if path is not None:
            path.unlink()
        array = np.lib.format.open_memmap(self.folder / name, mode="w+", dtype=dtype, shape=(self.size,))
        array[:] = empty
        return array

    def slots(self, records: Sequence[SourceRecord], rows: np.ndarray) -> np.ndarray:
        """The plan slot of each event at batch index ``rows`` of ``records``."""
        base = self._base
        return np.fromiter(
            (base[(r.topic, r.partition)] + r.offset for r in (records[i] for i in rows.tolist())),
            dtype=np.int64,
            count=len(rows),
        )

    def recorder(self, model: int) -> OnScored:
        """What a model's scored groups are handed to (``ServedRecorder``, ``Shadow(on_scored=...)``)."""
        scores = self.scores[model]

        def record(records: Sequence[SourceRecord], rows: np.ndarray, ids: Sequence[object], p: np.ndarray) -> None:
            # The first column: a model with several outputs is judged on its first.
            scores[self.slots(records, rows)] = np.asarray(p).reshape(len(rows), -1)[:, 0]

        return record

    def record_labels(self, slots: np.ndarray, labels: Iterable[float | None]) -> None:
        assert self.labels is not None
        values = np.fromiter((np.nan if x is None else x for x in labels), dtype=np.float32, count=len(slots))
        self.labels[slots] = values

    def record_ids(self, slots: np.ndarray, ids: Sequence[object]) -> None:
        assert self.ids is not None
        self.ids[slots] = np.fromiter((id_hash(i) for i in ids), dtype=np.int64, count=len(slots))

    def scored(self) -> np.ndarray:
        """Which slots some model scored: the events an evaluation is about."""
        mask = np.zeros(self.size, dtype=bool)
        for scores in self.scores:
            mask |= ~np.isnan(scores)
        return mask

    def flush(self) -> None:
        """Make what was recorded durable (at each checkpoint)."""
        for array in (*self.scores, self.labels, self.ids):
            if isinstance(array, np.memmap):
                array.flush()

    def close(self) -> None:
        self.flush()
        self.scores, self.labels, self.ids = [], None, None
