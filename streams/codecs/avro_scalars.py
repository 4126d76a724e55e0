"""The common Avro output, one finite number per event and no features, written without fastavro.

fastavro's writer costs about 5 us per output record (most of it choosing each union's branch);
the JSON encoder fills byte templates for this case, and this does the same for Avro: a record
is its fields' encodings one after the other, so the parts every output of a batch shares (the
model, its version, the fields of who scored it) are encoded once, the integers of the whole
batch are turned into varints by numpy at once, and each output is joined from its pieces.
Tests check every output byte for byte against fastavro's.

Avro binary, as used here: a ``long`` or ``int`` is its zigzag varint; a ``string`` its length
then its UTF-8 bytes; a ``double`` 8 bytes little-endian; a ``boolean`` one byte; a union the
index of its branch, then the value; ``null`` nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from streams.records import SourceRecord

# Bits of a varint byte, and the most bytes a 64-bit varint takes.
_SHIFTS = np.arange(0, 70, 7, dtype=np.uint64)
_MOST = len(_SHIFTS)


def long_bytes(n: int) -> bytes:
    """``n`` as an Avro ``long`` (zigzag varint)."""
    zigzag = (n << 1) ^ (n >> 63)
    out = bytearray()
    while zigzag >= 0x80:
        out.append((zigzag & 0x7F) | 0x80)
        zigzag >>= 7
    out.append(zigzag)
    return bytes(out)


def string_bytes(text: str) -> bytes:
    data = text.encode()
    return long_bytes(len(data)) + data


def longs_bytes(values: np.ndarray) -> list[bytes]:
    """Each of ``values`` (int64) as an Avro ``long``, the whole array at once."""
    if not len(values):
        return []
    v = values.astype(np.int64)
    zigzag = ((v << 1) ^ (v >> 63)).view(np.uint64)
    groups = (zigzag[:, None] >> _SHIFTS[None, :]) & np.uint64(0x7F)
    used = groups != 0
    # Bytes per value: up to its highest non-zero group of 7 bits (one for zero).
    lengths = np.where(used.any(axis=1), _MOST - np.argmax(used[:, ::-1], axis=1), 1)
    more = np.arange(_MOST)[None, :] < (lengths - 1)[:, None]
    raw = (groups | (more.astype(np.uint64) << np.uint64(7))).astype(np.uint8).tobytes()
    return [raw[i * _MOST : i * _MOST + n] for i, n in enumerate(lengths.tolist())]


def ids_bytes(ids: list[Any]) -> list[bytes]:
    """Each id as the schema's ``["long", "string"]``: the branch's index, then the value
    (``avro_outputs.avro_ids`` has made integers beyond a long their text already)."""
    kinds = set(map(type, ids))
    if kinds == {int}:
        return [b"\x00" + b for b in longs_bytes(np.asarray(ids, dtype=np.int64))]
    return [b"\x00" + long_bytes(i) if type(i) is int else b"\x02" + string_bytes(i) for i in ids]


def optional_bytes(value: Any) -> bytes:
    """An optional field (``["null", T]``) holding ``value`` (a string, a boolean or None)."""
    if value is None:
        return b"\x00"
    if isinstance(value, bool):
        return b"\x02" + (b"\x01" if value else b"\x00")
    return b"\x02" + string_bytes(str(value))


def scalar_outputs(
    header: bytes,
    records: Sequence[SourceRecord],
    rows: list[int],
    ids: list[Any],
    predictions: np.ndarray,
    *,
    model_name: str,
    model_version: str,
    now_ms: int,
    optional: Sequence[str],
    extra: dict[str, Any] | None,
) -> list[bytes]:
    """Each event's output, with its finite ``predictions`` (one per event), in the wire format
    (``header`` first). ``optional``: the names of the schema's optional fields, in its order."""
    model = string_bytes(model_name) + string_bytes(model_version)
    tail = b"".join(optional_bytes((extra or {}).get(name)) for name in optional)
    chosen = [records[row] for row in rows]
    timestamps = np.fromiter((r.timestamp for r in chosen), dtype=np.int64, count=len(chosen))
    offsets = longs_bytes(np.fromiter((r.offset for r in chosen), dtype=np.int64, count=len(chosen)))
    partitions = longs_bytes(np.fromiter((r.partition for r in chosen), dtype=np.int64, count=len(chosen)))
    times = longs_bytes(timestamps)
    latencies = longs_bytes(now_ms - timestamps)
    doubles = np.ascontiguousarray(predictions, dtype="<f8").tobytes()
    topics: dict[str, bytes] = {}
    out = []
    for i, (record, event_id) in enumerate(zip(chosen, ids_bytes(ids), strict=True)):
        topic = record.topic
        if topic not in topics:
            topics[topic] = string_bytes(topic)
        out.append(
            b"".join(
                (
                    header,
                    event_id,
                    b"\x00",  # prediction: the union's "double"
                    doubles[8 * i : 8 * i + 8],
                    model,
                    topics[topic],
                    partitions[i],
                    offsets[i],
                    times[i],
                    latencies[i],
                    tail,
                )
            )
        )
    return out
