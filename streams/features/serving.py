"""A key's state as the worker that owns it answers ``GET /pipelines/NAME/keys/KEY``: its
current features (as of the partition's event time: what its next event would see of its
history), how many events it keeps, its latest event, and its last prediction."""

from __future__ import annotations

from typing import Any

import numpy as np

from streams.features.aggregate import compute_all
from streams.features.step import FeatureStep
from streams.features.store import PartitionId, newest_times


def key_view(step: FeatureStep, partition: PartitionId, key: bytes) -> dict[str, Any] | None:
    """What the worker knows of ``key`` in ``partition`` (which it owns), or None for a key with no state."""
    store = step.store
    slot = store.lookup(partition, key)
    if slot is None:
        return None
    times, values, length = store.times[[slot]], store.values[[slot]], store.length[[slot]].copy()
    newest = int(times[0, -1]) if length[0] else None
    now = step.latest_ms.get(partition, newest or 0)
    if length[0] and newest_times(times, length)[0] < now - step.spec.ttl_ms:
        length[0] = 0  # idle past its TTL: its next event starts from nothing
    at = np.array([now], dtype=np.int64)
    computed = compute_all(step.spec.features, times, values, length, at, step.field_index)
    features = {name: array[0].tolist() for name, array in computed.items()}
    prediction: dict[str, Any] | None = None
    if store.prediction_offset[slot] >= 0:
        value = float(store.prediction[slot])
        prediction = {
            "prediction": None if np.isnan(value) else value,
            "model_version": step.versions[int(store.prediction_version[slot])],
            "source": {"topic": partition[0], "partition": partition[1], "offset": int(store.prediction_offset[slot])},
            "event_ts": int(store.prediction_ts[slot]),
        }
    return {
        "events_kept": int(length[0]),
        "latest_event": None if newest is None else {"offset": int(store.offset[slot]), "event_ts": newest},
        "features_at": now,
        "features": features,
        "last_prediction": prediction,
    }
