"""The ``streams.source.Progress`` of a worker whose offsets commit in transactions, one per input
partition (``streams.kafka.transactions.PartitionTransactions``): exactly-once delivery, and
stateful pipelines, whose changelog goes into the same transactions."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

from streams.kafka.transactions import PartitionTransactions
from streams.records import Partition, SourceRecord
from streams.source import next_offsets


class TransactionCommits:
    """The exactly-once worker's ``streams.source.Progress``: every ``interval_ms``, with nothing
    in flight (``needs_quiet``), each partition's acknowledged offset goes into its transaction,
    which is committed; at once before partitions are revoked and when the worker stops."""

    needs_quiet = True

    def __init__(
        self,
        transactions: PartitionTransactions,
        *,
        interval_ms: float,
        on_committed: Callable[[dict[Partition, int]], None] = lambda offsets: None,
    ) -> None:
        self.transactions = transactions
        self.interval_s = interval_ms / 1000
        self.on_committed = on_committed
        self._committable: dict[Partition, int] = {}
        self._committing = asyncio.Lock()

    def acknowledged(self, records: Sequence[SourceRecord], scored: int, dead_lettered: int) -> None:
        self._committable.update(next_offsets(records))

    async def wait_until_due(self) -> None:
        # A failure seen elsewhere (a send, a commit at a revocation: the group's listener swallows
        # errors) stops the driver here, at once.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.transactions.failure_seen.wait(), self.interval_s)
        if self.transactions.failed is not None:
            raise self.transactions.failed

    async def commit(self, *, final: bool = False) -> None:
        async with self._committing:
            offsets, self._committable = self._committable, {}
            owned = {p: o for p, o in offsets.items() if p in self.transactions.owned}
            if not owned:
                return
            await self.transactions.commit(owned)
            self.on_committed(owned)
