"""Demo transaction events as JSON, from the same generator the demo models were trained on.

Events carry no history: sluice builds each account's from its earlier events (the record
key is the account), so the stream is just the chunks' events one after another.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import orjson

from models.synthetic import SCALAR_FIELDS, emitted, generate

CHUNK = 5_000


@dataclass(frozen=True, slots=True)
class DemoEvent:
    id: str
    key: bytes
    value: bytes
    label: float


def chunk_seed(seed: int, chunk: int) -> int:
    """The generator's seed for chunk ``chunk`` (events ``chunk * CHUNK`` on) of demo stream ``seed``."""
    return seed * 1_000_003 + chunk


def demo_events(count: int, *, seed: int = 1, start: int = 0) -> Iterator[DemoEvent]:
    """Events ``start`` to ``start + count`` of the demo stream for ``seed``; ids are
    ``tx-<seed>-<n>`` so tests can account for each one."""
    stop = start + count
    for chunk_start in range(start - start % CHUNK, stop, CHUNK):
        # Each chunk is generated whole from its own seed and sliced, so event n is the same
        # whatever slice it is produced in (the generator's output for a shorter n differs).
        data = generate(CHUNK, seed=chunk_seed(seed, chunk_start // CHUNK))
        part = slice(max(start, chunk_start) - chunk_start, min(stop, chunk_start + CHUNK) - chunk_start)
        features = emitted(data.features[part]).tolist()
        scalars = {field: emitted(getattr(data, field)[part]).tolist() for field in SCALAR_FIELDS}
        accounts = data.accounts[part].tolist()
        labels = data.labels[part].tolist()
        now_ms = time.time_ns() // 1_000_000
        for i, n in enumerate(range(chunk_start + part.start, chunk_start + part.stop)):
            event_id = f"tx-{seed}-{n}"
            account = f"acct-{accounts[i]:05d}"
            value = orjson.dumps(
                {
                    "id": event_id,
                    "account": account,
                    "ts": now_ms,
                    "features": features[i],
                    **{field: values[i] for field, values in scalars.items()},
                }
            )
            yield DemoEvent(event_id, account.encode(), value, labels[i])
