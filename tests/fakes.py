"""Test doubles for the protocols between rooms (never for Kafka: integration tests use the real broker)."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence

import numpy as np

from streams.records import OutputRecord


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


class ListSink:
    """Keeps what it is sent, in order; 'acknowledges' at once."""

    def __init__(self) -> None:
        self.records: list[OutputRecord] = []

    async def send(self, records: Sequence[OutputRecord]) -> Awaitable[None]:
        self.records.extend(records)
        return _acknowledged()


async def _acknowledged() -> None:
    return None
