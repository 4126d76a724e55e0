"""The careful path of decoding, the reference: one event at a time, with orjson and numpy,
saying exactly what is wrong with an event that cannot be scored.

The rule (see ``streams.codecs.codec``): a feature is a JSON number, or ``true``/``false`` read as
1/0, converted as a double and then to float32; strings (even numeric ones), nulls and
objects are ``WrongType``. The fast path (``streams.codecs.fast_decode``) vouches only for events
this path would score, with the same id and tensors bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from streams.records import SourceRecord, UndecodableRecord

if TYPE_CHECKING:
    from streams.codecs.codec import EventSchema


class _BadEvent(Exception):
    """Why one event cannot be scored: a dead letter's ``error`` (its kind) and ``message``."""

    def __init__(self, error: str, message: str) -> None:
        super().__init__(message)
        self.error = error
        self.message = message


# What numpy may infer for an event's features that are numbers: booleans, integers (signed
# or not) and floats. Strings infer as "U"; nulls, ragged lists and integers too large for
# numpy's integer types as "O" (and only the last are numbers).
_NUMERIC_KINDS = frozenset("biuf")


def _as_float32(values: Any) -> np.ndarray:
    """Numbers (or booleans) to float32, always through a double: the same result whether an
    event is converted alone or inside a batch. Values beyond float32's range become inf,
    which the finite check rejects."""
    with np.errstate(over="ignore"):
        return np.asarray(values, dtype=np.float64).astype(np.float32)


def decode_each(
    records: Sequence[SourceRecord], schema: EventSchema
) -> tuple[list[int], list[Any], list[np.ndarray], list[tuple[int, str, str]]]:
    """Each record alone: the indices and ids of those that can be scored with their inputs
    (one float32 array each, a row per event), and ``(index, kind, message)`` for each that
    cannot."""
    rows: list[int] = []
    ids: list[Any] = []
    columns: list[list[np.ndarray]] = [[] for _ in schema.inputs]
    rejects: list[tuple[int, str, str]] = []
    for index, record in enumerate(records):
        try:
            if type(record) is UndecodableRecord:
                raise _BadEvent(record.error, record.message)
            event_id, arrays = decode_one(record.value, schema)
        except _BadEvent as bad:
            rejects.append((index, bad.error, bad.message))
            continue
        rows.append(index)
        ids.append(event_id)
        for column, array in zip(columns, arrays, strict=True):
            column.append(array)
    inputs = [
        np.stack(column) if column else np.empty((0, *spec.shape), dtype=np.float32)
        for column, spec in zip(columns, schema.inputs, strict=True)
    ]
    return rows, ids, inputs, rejects


def decode_one(value: bytes | None, schema: EventSchema) -> tuple[Any, list[np.ndarray]]:
    """Decode one event or raise ``_BadEvent`` saying exactly what is wrong with it."""
    if value is None:
        raise _BadEvent("Tombstone", "the record has no value (a tombstone)")
    if len(value) == 0:
        raise _BadEvent("EmptyValue", "the record's value is empty")
    if len(value) > schema.max_payload_bytes:
        raise _BadEvent("PayloadTooLarge", f"the value is {len(value)} bytes; the limit is {schema.max_payload_bytes}")
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise _BadEvent("InvalidJSON", f"the value is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise _BadEvent("NotAnObject", f"the value is JSON {type(doc).__name__}, expected an object")
    if schema.id_field not in doc:
        raise _BadEvent("MissingField", f"field {schema.id_field!r} (the event id) is missing")
    event_id = doc[schema.id_field]
    if type(event_id) is not str and type(event_id) is not int:
        raise _BadEvent("WrongType", f"field {schema.id_field!r} must be a string or an integer")
    arrays = []
    for spec in schema.inputs:
        value_of_field = _at(doc, spec.keys, spec.field)
        try:
            raw = np.asarray(value_of_field)
        except ValueError:
            raise _BadEvent(
                "WrongShape", f"field {spec.field!r} is ragged, expected shape {list(spec.shape)}"
            ) from None
        if raw.dtype.kind not in _NUMERIC_KINDS and not (raw.dtype.kind == "O" and _only_numbers(value_of_field)):
            raise _BadEvent("WrongType", f"field {spec.field!r} must hold only numbers, shape {list(spec.shape)}")
        if raw.shape != spec.shape:
            raise _BadEvent(
                "WrongShape",
                f"field {spec.field!r} has shape {list(raw.shape)}, expected {list(spec.shape)}",
            )
        try:
            array = _as_float32(value_of_field)
        except OverflowError:
            raise _BadEvent("NonFinite", f"field {spec.field!r} holds a number beyond float32's range") from None
        if not np.isfinite(array).all():
            raise _BadEvent("NonFinite", f"field {spec.field!r} holds NaN or infinity")
        arrays.append(array)
    return event_id, arrays


def _at(doc: dict[str, Any], keys: tuple[str, ...], name: str) -> Any:
    """The value at ``keys`` in ``doc``: each key but the last names an object the next is in."""
    value: Any = doc
    for depth, key in enumerate(keys):
        if type(value) is not dict:
            where = ".".join(keys[:depth])
            raise _BadEvent("WrongType", f"field {name!r}: {where!r} must be an object, holding {key!r}")
        if key not in value:
            raise _BadEvent("MissingField", f"field {name!r} is missing")
        value = value[key]
    return value


def _only_numbers(value: Any) -> bool:
    """True for a number, a boolean, or nested lists of them: integers too large for numpy's
    integer types infer as objects, and are still numbers."""
    if type(value) in (int, float, bool):
        return True
    return type(value) is list and all(_only_numbers(v) for v in value)
