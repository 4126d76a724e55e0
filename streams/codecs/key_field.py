"""Reading each event's key from a field of its JSON value (``state.key_field``), in batches.

``KeyField.key_of`` is the reference, with orjson: it says exactly why an event has no usable
key (not a JSON object, the field missing or null, not a string or an integer, over
``MAX_KEY_BYTES``). ``KeyField.keys`` reads a batch with msgspec instead, which decodes the key
field alone and skips the rest of the event (a third of orjson's time on a demo event), but
only for values where msgspec's verdict on the skipped fields is orjson's
(``streams.codecs.fast_decode.plain_positions``: valid UTF-8, no number beyond a double's range, no
nesting orjson refuses); every other value, and every value msgspec refuses, goes to
``key_of``. So the fast path only ever agrees with the reference.

A key is bytes: a string's UTF-8, an integer's decimal digits (so ``123`` and ``"123"`` are
one key; ``""`` is a key; Unicode is not normalised).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec
import orjson

from streams.codecs.codec import Reject
from streams.codecs.fast_decode import MSGSPEC_REFUSED, ORJSON_INT_MAX, ORJSON_INT_MIN, plain_positions
from streams.records import MAX_KEY_BYTES, SourceRecord, UndecodableRecord


class KeyField:
    def __init__(self, field: str, max_payload_bytes: int) -> None:
        self.field = field
        self.max_payload_bytes = max_payload_bytes
        keyed = msgspec.defstruct("Keyed", [("key", str | int | None, msgspec.field(name=field, default=None))])
        self._fast_key = msgspec.json.Decoder(keyed).decode

    def keys(self, records: Sequence[SourceRecord], skip: Sequence[int] = ()) -> dict[int, bytes | Reject]:
        """Each record's key, or why it has none (``Reject`` indices are batch indices), by index;
        ``skip`` are indices already rejected for another reason."""
        limit, fast_key = self.max_payload_bytes, self._fast_key
        skipped = set(skip)
        candidates = [
            i
            for i, r in enumerate(records)
            if i not in skipped and r.value and len(r.value) <= limit and type(r) is not UndecodableRecord
        ]
        values: list[bytes] = [records[i].value for i in candidates]  # type: ignore[misc]
        found: dict[int, bytes | Reject] = {}
        for position in plain_positions(values):
            try:
                key: Any = getattr(fast_key(values[position]), "key")  # noqa: B009 - a field msgspec made at run time
            except MSGSPEC_REFUSED:
                continue
            encoded = _encoded(key)
            if encoded is not None and len(encoded) <= MAX_KEY_BYTES:
                found[candidates[position]] = encoded
        for index, record in enumerate(records):
            if index not in found and index not in skipped:
                verdict = self.key_of(record)
                found[index] = verdict if type(verdict) is bytes else Reject(index, verdict.error, verdict.message)  # type: ignore[union-attr]
        return found

    def key_of(self, record: SourceRecord) -> bytes | Reject:
        """The event's key, or why it has none (a ``Reject`` whose index the caller sets)."""
        value = record.value
        if type(record) is UndecodableRecord:
            return Reject(-1, record.error, record.message)
        if value is None:
            return Reject(-1, "Tombstone", "the record has no value (a tombstone), so no key field")
        if len(value) > self.max_payload_bytes:
            return Reject(
                -1, "PayloadTooLarge", f"the value is {len(value)} bytes; the limit is {self.max_payload_bytes}"
            )
        try:
            doc = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            return Reject(-1, "InvalidJSON", f"the value is not valid JSON: {exc}")
        if not isinstance(doc, dict):
            return Reject(-1, "NotAnObject", f"the value is JSON {type(doc).__name__}, expected an object")
        key = doc.get(self.field)
        if key is None:
            return Reject(
                -1, "MissingKey", f"field {self.field!r} (the key of the per-key features) is missing or null"
            )
        encoded = _encoded(key)
        if encoded is None:
            return Reject(-1, "WrongType", f"field {self.field!r} (the key) must be a string or an integer")
        if len(encoded) > MAX_KEY_BYTES:
            size = len(encoded)
            return Reject(-1, "KeyTooLong", f"field {self.field!r} (the key) is {size} bytes; at most {MAX_KEY_BYTES}")
        return encoded


def _encoded(key: Any) -> bytes | None:
    """A key's bytes: a string's UTF-8 (orjson and msgspec refuse lone surrogates, so it encodes),
    an integer's digits within the range orjson reads as integers (beyond it, floats); None for anything else."""
    if type(key) is str:
        return key.encode()
    if type(key) is int and ORJSON_INT_MIN <= key <= ORJSON_INT_MAX:
        return str(key).encode()
    return None
