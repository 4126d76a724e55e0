"""A key's state as the bytes of one changelog record, and back.

    b"SK1" | layout id (8) | source offset (int64) | n (int32) | n times (int64) | n x fields values (float32)

little-endian. The layout id (``StateSpec.layout_id``) names the kept fields and capacity: a
changelog written under another features config is refused on restore, never misread. Only
the real events are written, so a key with one event costs one event's bytes.
"""

from __future__ import annotations

import struct

import numpy as np

from streams.errors import StateError

MAGIC = b"SK1"
_HEAD = struct.Struct("<3s8sqi")


def encode_state(layout_id: bytes, offset: int, times: np.ndarray, values: np.ndarray) -> bytes:
    head = _HEAD.pack(MAGIC, layout_id, offset, len(times))
    return head + times.astype("<i8", copy=False).tobytes() + values.astype("<f4", copy=False).tobytes()


def max_state_bytes(fields: int, capacity: int) -> int:
    """The largest value a key's state record can have (a full key)."""
    return _HEAD.size + capacity * (8 + 4 * fields)


def decode_state(data: bytes, layout_id: bytes, fields: int, capacity: int) -> tuple[np.ndarray, np.ndarray, int]:
    """``(times, values, offset)``, or ``StateError`` saying why these bytes are not such a state."""
    if len(data) < _HEAD.size:
        raise StateError(f"a state record of {len(data)} bytes is shorter than its header")
    magic, layout, offset, n = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise StateError("a changelog record is not a sluice key state (wrong magic bytes)")
    if layout != layout_id:
        raise StateError(
            "the changelog holds state of another features config (other fields or history_events); "
            "rebuild the state under a new changelog topic (see the README, Features)"
        )
    if not 0 <= n <= capacity or len(data) != _HEAD.size + n * (8 + 4 * fields):
        raise StateError(f"a state record's length ({len(data)} bytes for {n} events) does not match its layout")
    times = np.frombuffer(data, dtype="<i8", count=n, offset=_HEAD.size).astype(np.int64)
    values = np.frombuffer(data, dtype="<f4", count=n * fields, offset=_HEAD.size + 8 * n).astype(np.float32)
    if not np.isfinite(values).all() or offset < -1:
        raise StateError("a state record holds values sluice never writes (NaN, infinity, or a negative offset)")
    return times, values.reshape(n, fields), offset


def newest_time(data: bytes) -> int | None:
    """The newest event time in a state record (its events are kept in arrival order, not time
    order), or None for a record that is not one."""
    if len(data) < _HEAD.size:
        return None
    n = _HEAD.unpack_from(data)[3]
    if not n > 0 or len(data) < _HEAD.size + 8 * n:
        return None
    return int(np.frombuffer(data, dtype="<i8", count=n, offset=_HEAD.size).max())
