"""Test doubles for the protocols between rooms (never for Kafka: integration tests use the real broker)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import numpy as np

from streams.records import Partition, SourceRecord
from streams.testing import CollectingSink


class SumRunner:
    """A runner whose prediction is the sum of each row of the first input: easy to check."""

    name = "sum"
    version = "1"

    def __init__(self) -> None:
        self.batches: list[int] = []

    async def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        self.batches.append(int(inputs[0].shape[0]))
        return inputs[0].reshape(inputs[0].shape[0], -1).sum(axis=1)

    async def aclose(self) -> None:
        pass


# Keeps what it is sent, in order; 'acknowledges' at once: the users' test kit's sink.
ListSink = CollectingSink


class ListSource:
    """A ``streams.source.Source`` handing out a list of records, ``per_fetch`` at a time.

    ``bounded``: ends when the list is handed out (a replay); otherwise it then returns nothing
    forever (a live source with no new events), after yielding to the loop."""

    def __init__(self, records: Sequence[SourceRecord], *, per_fetch: int = 1_000, bounded: bool = True) -> None:
        self.records = list(records)
        self.per_fetch = per_fetch
        self.bounded = bounded
        self.handed_out = 0
        self.keep_alives = 0
        self.asked: list[int] = []

    @property
    def exhausted(self) -> bool:
        return self.bounded and self.handed_out == len(self.records)

    async def next_batch(self, max_records: int) -> list[SourceRecord]:
        self.asked.append(max_records)
        n = min(max_records, self.per_fetch, len(self.records) - self.handed_out)
        batch = self.records[self.handed_out : self.handed_out + n]
        self.handed_out += n
        if not batch:
            await asyncio.sleep(0.001)
        return batch

    async def keep_alive(self) -> list[SourceRecord]:
        self.keep_alives += 1
        await asyncio.sleep(0.001)
        return []

    def backlog(self) -> int:
        return len(self.records) - self.handed_out

    def lag_by_partition(self) -> dict[Partition, int]:
        return {}


class RecordingProgress:
    """A ``streams.source.Progress`` that remembers what it was told and when it committed."""

    def __init__(self, *, needs_quiet: bool = False) -> None:
        self.needs_quiet = needs_quiet
        self.acknowledged_offsets: list[tuple[str, int, int]] = []
        self.commits: list[tuple[int, bool]] = []  # (events acknowledged at the commit, final)
        self.due = asyncio.Event()

    def acknowledged(self, records: Sequence[SourceRecord], scored: int, dead_lettered: int) -> None:
        self.acknowledged_offsets += [(r.topic, r.partition, r.offset) for r in records]

    async def wait_until_due(self) -> None:
        await self.due.wait()
        self.due.clear()

    async def commit(self, *, final: bool = False) -> None:
        self.commits.append((len(self.acknowledged_offsets), final))


class GatedRunner(SumRunner):
    """A ``SumRunner`` that stops inside ``predict`` until the test opens the gate, so a test can
    act while a batch is being scored, at a known point."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

    async def predict(self, inputs: Sequence[np.ndarray]) -> np.ndarray:
        self.entered.set()
        await self.gate.wait()
        return await super().predict(inputs)


async def until(condition: Callable[[], bool], what: str) -> None:
    """Yield to the loop until ``condition()``: a test waits for a point the code reaches, never a sleep."""
    for _ in range(100_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"never reached: {what}")
