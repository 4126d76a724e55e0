"""Each feature, computed for a batch of events at once from their keys' kept events.

Inputs are column-wise: ``times`` (b, capacity) and ``values`` (b, capacity, fields) hold each
event's key's kept events right-aligned, ``length`` (b,) how many are real, ``at`` (b,) each
event's own time. A window is a boolean mask over the kept events, so every aggregation is one
masked numpy reduction for the whole batch, never a loop over events.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from streams.features.spec import Feature, LastEvents, SincePrevious, Window


def compute(
    feature: Feature,
    times: np.ndarray,
    values: np.ndarray,
    length: np.ndarray,
    at: np.ndarray,
    field_index: Mapping[str, int],
) -> np.ndarray:
    """``feature`` for each of the b events, as float32 of shape (b, *feature.shape)."""
    capacity = times.shape[1]
    real = np.arange(capacity)[None, :] >= (capacity - length)[:, None]
    if isinstance(feature, LastEvents):
        return _last(feature, values, real, field_index)
    if isinstance(feature, SincePrevious):
        gap_ms = np.where(length > 0, np.maximum(at - times[:, -1], 0), 0)
        return (gap_ms / 1000.0).astype(np.float32)
    return _window(feature, times, values, real, at, field_index)


def _last(feature: LastEvents, values: np.ndarray, real: np.ndarray, field_index: Mapping[str, int]) -> np.ndarray:
    n = feature.n
    columns = [field_index[f] for f in feature.fields]
    recent = real[:, -n:]
    sequence = np.where(recent[:, :, None], values[:, -n:, :][:, :, columns], np.float32(0))
    if feature.mask:
        sequence = np.concatenate([sequence, recent[:, :, None].astype(np.float32)], axis=2)
    return sequence.astype(np.float32, copy=False)


def _window(
    feature: Window,
    times: np.ndarray,
    values: np.ndarray,
    real: np.ndarray,
    at: np.ndarray,
    field_index: Mapping[str, int],
) -> np.ndarray:
    inside = real & (times > (at - feature.window_ms)[:, None]) & (times <= at[:, None])
    count = inside.sum(axis=1)
    if feature.kind == "count":
        return count.astype(np.float32)
    assert feature.field is not None
    x = values[:, :, field_index[feature.field]].astype(np.float64)
    some = count > 0
    total = np.where(inside, x, 0.0).sum(axis=1)
    if feature.kind == "sum":
        result = total
    elif feature.kind == "mean":
        result = total / np.maximum(count, 1)
    elif feature.kind == "min":
        result = np.where(some, np.where(inside, x, np.inf).min(axis=1), 0.0)
    elif feature.kind == "max":
        result = np.where(some, np.where(inside, x, -np.inf).max(axis=1), 0.0)
    elif feature.kind == "std":
        mean = total / np.maximum(count, 1)
        squares = np.where(inside, (x - mean[:, None]) ** 2, 0.0).sum(axis=1)
        result = np.sqrt(squares / np.maximum(count, 1))
    else:  # distinct: sorted, the window's values come first (NaN sorts last); count the changes
        ordered = np.sort(np.where(inside, x, np.nan), axis=1)
        changes = (ordered[:, 1:] != ordered[:, :-1]) & ~np.isnan(ordered[:, 1:])
        result = some + changes.sum(axis=1)
    return result.astype(np.float32)
