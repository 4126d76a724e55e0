"""Test hooks, off unless their environment variable is set: tests that must
interrupt a worker make it stop itself at a known point, never race it.

``SLUICE_TEST_KILL_IN_TRANSACTION_AFTER_COMMITS=N`` (exactly-once pipelines): once N
transactions are committed, the next outputs are sent, acknowledged by the broker (they are in
the log, in a transaction still open), and the process kills itself with SIGKILL.

``SLUICE_TEST_KILL_IN_REKEY_TRANSACTION_AFTER_COMMITS=N``: the same, in the re-keying stage of a
pipeline keyed by an event field (exactly-once): its re-keyed records are left in an open transaction.

``SLUICE_TEST_KILL_IN_CHANGELOG_FLUSH_AFTER_COMMITS=N`` (stateful pipelines): once N commits
wrote state to the changelog, the next one writes its keys' state, acknowledged by the broker
(in the log, in the partition's transaction still open), and the process kills itself.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from streams.errors import CommandLineError
from streams.flow.pipeline import Sink
from streams.kafka.changelog import Changelog
from streams.records import OutputRecord, Partition

KILL_IN_TRANSACTION_ENV = "SLUICE_TEST_KILL_IN_TRANSACTION_AFTER_COMMITS"
KILL_IN_REKEY_ENV = "SLUICE_TEST_KILL_IN_REKEY_TRANSACTION_AFTER_COMMITS"
KILL_IN_FLUSH_ENV = "SLUICE_TEST_KILL_IN_CHANGELOG_FLUSH_AFTER_COMMITS"


def count_from_env(name: str, what: str) -> int | None:
    """A crash hook's count from ``$name``: None when unset; a count of ``what`` >= 1, or one line."""
    value = os.environ.get(name)
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise CommandLineError(f"${name} {value!r}: expected a number of {what} >= 1")
    return int(value)


def kill_in_transaction_after() -> int | None:
    return count_from_env(KILL_IN_TRANSACTION_ENV, "commits")


def kill_in_rekey_transaction_after() -> int | None:
    return count_from_env(KILL_IN_REKEY_ENV, "commits")


class KillInOpenTransaction:
    """Wraps the sink; ``committed`` is the progress's ``on_committed`` callback."""

    def __init__(self, sink: Sink, after: int, on_committed: Callable[[dict[Partition, int]], None]) -> None:
        self.sink = sink
        self.after = after
        self.commits = 0
        self._on_committed = on_committed

    def committed(self, offsets: dict[Partition, int]) -> None:
        self.commits += 1
        self._on_committed(offsets)

    async def send(self, records: Sequence[OutputRecord]) -> Awaitable[None]:
        acknowledged = await self.sink.send(records)
        if self.commits >= self.after and records:
            await acknowledged
            os.kill(os.getpid(), signal.SIGKILL)
        return acknowledged


def kill_in_changelog_flush_after() -> int | None:
    return count_from_env(KILL_IN_FLUSH_ENV, "commits")


class KillInChangelogFlush:
    """Wraps a ``Changelog`` as the state of ``PartitionTransactions``: killed in its flush."""

    def __init__(self, changelog: Changelog, after: int) -> None:
        self.changelog = changelog
        self.after = after
        self.flushes = 0

    async def flush(self, partition: Partition, producer: Any) -> int:
        written = await self.changelog.flush(partition, producer)  # sent and acknowledged, not committed
        if written:
            self.flushes += 1
            if self.flushes > self.after:
                os.kill(os.getpid(), signal.SIGKILL)
        return written

    def committed(self, partition: Partition) -> None:
        self.changelog.committed(partition)
