"""The live worker's progress: acknowledged offsets, committed to the consumer group every
``commit_interval_ms`` and at once before partitions are revoked or the worker stops.

Committing after every batch would put a broker round trip on the path of every batch; a
crash loses at most an interval of commits, which the next owner scores again
(at-least-once).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from streams.records import Partition, SourceRecord
from streams.source import next_offsets

# Commits these next-offsets; False when they should be tried again with the next commit.
CommitOffsets = Callable[[dict[Partition, int]], Awaitable[bool]]


class GroupCommits:
    needs_quiet = False

    def __init__(self, commit_offsets: CommitOffsets, *, interval_ms: float) -> None:
        self.commit_offsets = commit_offsets
        self.interval_s = interval_ms / 1000
        self._committable: dict[Partition, int] = {}
        # One commit at a time: the last one, at a revocation or a stop, waits for one the timer
        # started, so offsets that one took (and may have to put back) are not left behind.
        self._committing = asyncio.Lock()

    def acknowledged(self, records: Sequence[SourceRecord], scored: int, dead_lettered: int) -> None:
        self._committable.update(next_offsets(records))

    async def wait_until_due(self) -> None:
        await asyncio.sleep(self.interval_s)

    async def commit(self, *, final: bool = False) -> None:
        async with self._committing:
            if not self._committable:
                return
            offsets, self._committable = self._committable, {}
            if not await self.commit_offsets(offsets):
                # Not committed (the broker is away): keep them for the next try, unless newer ones came.
                for tp, offset in offsets.items():
                    self._committable[tp] = max(offset, self._committable.get(tp, 0))
