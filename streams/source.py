"""What the driver reads from and what it reports progress to: the two things that differ
between the live worker and the backfill.

- A ``Source`` hands out records in each partition's offset order: the consumer-group
  member of the live worker (``streams.kafka.group_source``), or a bounded replay of history
  (``streams.kafka.replay``), which ends (``exhausted``) at the end offsets it saw when it began.
- A ``Progress`` is told about every batch whose outputs are acknowledged, in the order the
  batches were scored, and makes that durable when asked: the live worker commits offsets to
  its consumer group; the backfill writes a checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from streams.records import Partition, SourceRecord


class Source(Protocol):
    async def next_batch(self, max_records: int) -> list[SourceRecord]:
        """Up to ``max_records`` records, each partition's in offset order; empty if none came in time."""
        ...

    async def keep_alive(self) -> list[SourceRecord]:
        """Called instead of ``next_batch`` while the driver cannot take more records for a while (the
        model is slow or down): keep whatever membership the source has without fetching more.
        Returns records already fetched, if any."""
        ...

    def backlog(self) -> int:
        """Records known to wait beyond what was handed out (the consumer lag)."""
        ...

    def lag_by_partition(self) -> dict[Partition, int]:
        """Per partition: records not yet made durable (for the metrics)."""
        ...

    @property
    def exhausted(self) -> bool:
        """True once a bounded source handed out everything it will; never for a live one."""
        ...


class Progress(Protocol):
    # Whether ``commit`` must see nothing in flight: a file sink's checkpoint records how long
    # its files are, which must count exactly the acknowledged outputs and no more.
    needs_quiet: bool

    def acknowledged(self, records: Sequence[SourceRecord], scored: int, dead_lettered: int) -> None:
        """A batch's outputs are all acknowledged (called in the order the batches were scored)."""
        ...

    async def wait_until_due(self) -> None:
        """Return when the next commit is due."""
        ...

    async def commit(self, *, final: bool = False) -> None:
        """Make what was acknowledged so far durable; ``final`` when the driver stops or finishes."""
        ...


def next_offsets(records: Sequence[SourceRecord]) -> dict[Partition, int]:
    """The offsets to resume from after ``records``: one past the last record of each partition.

    Each partition's records come in offset order (fetches and batches keep it), so the last
    one seen is the highest; were it ever not, this would resume earlier, never later.
    """
    last = {(r.topic, r.partition): r.offset for r in records}  # one dict store per record: this runs per event
    return {Partition(topic, partition): offset + 1 for (topic, partition), offset in last.items()}
