"""Which events a canary scores: a fixed share of keys, the same ones everywhere.

A key is hashed (the record key; the event id for a record without one) to a number in
[0, 1); the canary takes the keys below its ``fraction``. BLAKE2b, not Python's ``hash``
(salted per process): every worker, a restarted one and the backfill assign a key alike, so a
key always meets the same model, live and on history. Raising the fraction only adds keys: a
key on the canary at 5% stays on it at 20%.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.protocol import Runner
from streams.records import SourceRecord

# Part of the hash, so a canary's keys are not, say, the low partitions' keys of another system
# hashing the same bytes.
SALT = b"sluice-canary"
_SCALE = float(2**64)


@functools.lru_cache(maxsize=1 << 16)
def key_share(key: bytes) -> float:
    """Where ``key`` falls in [0, 1). Cached: a stream's keys recur (an account's events), and
    the cache's bound keeps a stream of unique keys from growing it."""
    digest = hashlib.blake2b(key, digest_size=8, salt=SALT[:16]).digest()
    return int.from_bytes(digest, "big") / _SCALE


def routing_key(record: SourceRecord, event_id: Any) -> bytes:
    """The record key, or the event id's text for a record without a key."""
    return record.key if record.key is not None else str(event_id).encode()


@dataclass
class Canary:
    runner: Runner
    fraction: float

    def selects(self, records: Sequence[SourceRecord], rows: np.ndarray, ids: Sequence[Any]) -> np.ndarray:
        """A mask over ``rows`` (batch indices) of the events the canary scores."""
        if self.fraction <= 0.0:
            return np.zeros(len(rows), dtype=bool)
        if self.fraction >= 1.0:
            return np.ones(len(rows), dtype=bool)
        shares = [
            key_share(routing_key(records[row], event_id)) for row, event_id in zip(rows.tolist(), ids, strict=True)
        ]
        return np.asarray(shares, dtype=np.float64) < self.fraction
