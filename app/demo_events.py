"""Demo transaction events as JSON, from the same generator the demo models were trained on."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import orjson

from models.synthetic import generate

CHUNK = 5_000


@dataclass(frozen=True, slots=True)
class DemoEvent:
    id: str
    key: bytes
    value: bytes
    label: float


def demo_events(count: int, *, seed: int = 1, start: int = 0) -> Iterator[DemoEvent]:
    """``count`` events; ids are ``tx-<seed>-<n>`` so tests can account for each one."""
    for chunk_start in range(start, start + count, CHUNK):
        n = min(CHUNK, start + count - chunk_start)
        # Seed per chunk so any slice of the sequence is reproducible on its own.
        data = generate(n, seed=seed * 1_000_003 + chunk_start // CHUNK)
        features = data.features.astype(np.float64).round(4).tolist()
        history = data.history.astype(np.float64).round(4).tolist()
        accounts = data.accounts.tolist()
        labels = data.labels.tolist()
        now_ms = time.time_ns() // 1_000_000
        for i in range(n):
            event_id = f"tx-{seed}-{chunk_start + i}"
            account = f"acct-{accounts[i]:05d}"
            value = orjson.dumps(
                {
                    "id": event_id,
                    "account": account,
                    "ts": now_ms,
                    "features": features[i],
                    "history": history[i],
                }
            )
            yield DemoEvent(event_id, account.encode(), value, labels[i])
