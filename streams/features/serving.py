"""A key's state as the worker that owns it answers ``GET /pipelines/NAME/keys/KEY``: its
current features (as of the partition's event time: what its next event would see of its
history), how many events it keeps, its latest event, and its last prediction."""

from __future__ import annotations

from typing import Any

import numpy as np

from streams.features.aggregate import compute_all
from streams.features.step import FeatureStep
from streams.features.store import newest_times
from streams.records import Partition


def key_view(step: FeatureStep, partition: Partition, key: bytes) -> dict[str, Any] | None:
    """What the worker knows of ``key`` in ``partition`` (which it owns), or None for a key with
    no state. Only reads: a state it cannot read (a damaged record in the local copy) raises
    ``StateError`` and changes nothing."""
    state = step.store.peek(partition, key)
    if state is None:
        return None
    times, values, length = state.times[None], state.values[None], np.array([state.length], dtype=np.int32)
    newest = int(times[0, -1]) if length[0] else None
    now = step.latest_ms.get(partition, newest or 0)
    if length[0] and newest_times(times, length)[0] < now - step.spec.ttl_ms:
        length[0] = 0  # idle past its TTL: its next event starts from nothing
    at = np.array([now], dtype=np.int64)
    computed = compute_all(step.spec.features, times, values, length, at, step.field_index)
    features = {name: array[0].tolist() for name, array in computed.items()}
    prediction: dict[str, Any] | None = None
    if state.prediction is not None:
        value, offset, event_ts, version = state.prediction
        prediction = {
            "prediction": None if np.isnan(value) else value,
            "model_version": step.versions[version],
            "source": {"topic": partition[0], "partition": partition[1], "offset": offset},
            "event_ts": event_ts,
        }
    return {
        "events_kept": int(length[0]),
        "latest_event": None if newest is None else {"offset": state.offset, "event_ts": newest},
        "features_at": now,
        "features": features,
        "last_prediction": prediction,
    }
