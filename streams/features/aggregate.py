"""Each feature, computed for a batch of events at once from their keys' kept events.

Inputs are column-wise: ``times`` (b, capacity) and ``values`` (b, capacity, fields) hold each
event's key's kept events right-aligned, ``length`` (b,) how many are real, ``at`` (b,) each
event's own time. A window is a boolean mask over the kept events, so every aggregation is one
masked numpy reduction for the whole batch, never a loop over events.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from streams.features.spec import Feature, LastEvents, SincePrevious


def compute(
    feature: Feature,
    times: np.ndarray,
    values: np.ndarray,
    length: np.ndarray,
    at: np.ndarray,
    field_index: Mapping[str, int],
) -> np.ndarray:
    """``feature`` for each of the b events, as float32 of shape (b, *feature.shape)."""
    return compute_all((feature,), times, values, length, at, field_index)[feature.name]


def compute_all(
    features: Sequence[Feature],
    times: np.ndarray,
    values: np.ndarray,
    length: np.ndarray,
    at: np.ndarray,
    field_index: Mapping[str, int],
) -> dict[str, np.ndarray]:
    """Each of ``features`` for each of the b events. Features over one window share its mask
    and count, and those over one field of it its values and sum: computed once, not per feature."""
    capacity = times.shape[1]
    real = np.arange(capacity)[None, :] >= (capacity - length)[:, None]
    windows: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    sums: dict[tuple[int, str], tuple[np.ndarray, np.ndarray]] = {}
    out = {}
    for feature in features:
        if isinstance(feature, LastEvents):
            out[feature.name] = _last(feature, values, real, field_index)
        elif isinstance(feature, SincePrevious):
            gap_ms = np.where(length > 0, np.maximum(at - times[:, -1], 0), 0)
            out[feature.name] = (gap_ms / 1000.0).astype(np.float32)
        else:
            window = windows.get(feature.window_ms)
            if window is None:
                inside = real & (times > (at - feature.window_ms)[:, None]) & (times <= at[:, None])
                window = windows[feature.window_ms] = (inside, inside.sum(axis=1))
            if feature.field is None:  # count
                out[feature.name] = window[1].astype(np.float32)
                continue
            summed = sums.get((feature.window_ms, feature.field))
            if summed is None:
                x = values[:, :, field_index[feature.field]].astype(np.float64)
                summed = sums[(feature.window_ms, feature.field)] = (x, np.where(window[0], x, 0.0).sum(axis=1))
            out[feature.name] = _window(feature.kind, *window, *summed)
    return out


def _last(feature: LastEvents, values: np.ndarray, real: np.ndarray, field_index: Mapping[str, int]) -> np.ndarray:
    n = feature.n
    columns = [field_index[f] for f in feature.fields]
    recent = real[:, -n:]
    sequence = np.where(recent[:, :, None], values[:, -n:, :][:, :, columns], np.float32(0))
    if feature.mask:
        sequence = np.concatenate([sequence, recent[:, :, None].astype(np.float32)], axis=2)
    return sequence.astype(np.float32, copy=False)


def _window(kind: str, inside: np.ndarray, count: np.ndarray, x: np.ndarray, total: np.ndarray) -> np.ndarray:
    """One aggregation of a field's values ``x`` (b, capacity) over the window ``inside``."""
    some = count > 0
    if kind == "sum":
        result = total
    elif kind == "mean":
        result = total / np.maximum(count, 1)
    elif kind == "min":
        result = np.where(some, np.where(inside, x, np.inf).min(axis=1), 0.0)
    elif kind == "max":
        result = np.where(some, np.where(inside, x, -np.inf).max(axis=1), 0.0)
    elif kind == "std":
        mean = total / np.maximum(count, 1)
        squares = np.where(inside, (x - mean[:, None]) ** 2, 0.0).sum(axis=1)
        result = np.sqrt(squares / np.maximum(count, 1))
    else:  # distinct: sorted, the window's values come first (NaN sorts last); count the changes
        ordered = np.sort(np.where(inside, x, np.nan), axis=1)
        changes = (ordered[:, 1:] != ordered[:, :-1]) & ~np.isnan(ordered[:, 1:])
        result = some + changes.sum(axis=1)
    return result.astype(np.float32)
