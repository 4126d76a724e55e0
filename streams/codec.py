"""JSON events in, tensors out; predictions in, JSON records out. Whole batches at a time.

Decoding has a fast path and a careful path. The fast path parses every value with
orjson and builds each input tensor with one ``np.array`` call over the batch; when
anything in the batch is wrong (a record that is not JSON, a missing field, a ragged
feature vector) it falls back to checking records one by one, so the valid records of
a batch are still scored and each bad one gets its own reason.

Both paths apply one rule, so whether an event is scored never depends on its neighbours
(live and backfill batch the same events differently): a feature is a JSON number, or
``true``/``false`` read as 1/0, converted as a double and then to float32. Strings (even
numeric ones), nulls and objects are ``WrongType``. The fast path lets numpy infer the
type of the whole batch and accepts only a numeric or boolean result; anything else sends
the batch to the careful path, which checks each value the same way.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from streams.records import OutputRecord, SourceRecord, UndecodableRecord


@dataclass(frozen=True)
class TensorField:
    """One model input: the event field it is read from and its shape per event."""

    field: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class EventSchema:
    """How an event's JSON maps to the model's input tensors."""

    id_field: str
    inputs: tuple[TensorField, ...]
    max_payload_bytes: int = 1 << 20


@dataclass(frozen=True, slots=True)
class Reject:
    """Why the record at ``index`` of its batch cannot be scored."""

    index: int
    error: str
    message: str


@dataclass
class Decoded:
    """The scorable part of a batch.

    ``rows[i]`` is the index in the batch of the record whose id is ``ids[i]`` and whose
    tensors are row ``i`` of each input.
    """

    rows: np.ndarray
    ids: list[Any]
    inputs: list[np.ndarray]
    rejects: list[Reject] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.rows.shape[0])


class _BadEvent(Exception):
    def __init__(self, error: str, message: str) -> None:
        super().__init__(message)
        self.error = error
        self.message = message


@contextmanager
def _gc_paused() -> Iterator[None]:
    # Decoding allocates many short-lived lists and floats; letting the cyclic GC scan
    # them mid-batch costs more than the parse itself. None of them form cycles.
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# The most value bytes parsed at once. Parsed JSON can take far more memory than its text
# (nested empty arrays cost ~30x), so a batch of maximum-size events is decoded in slices.
MAX_DECODE_BYTES = 8 << 20

# What numpy may infer for a batch of features that the careful path would also accept:
# booleans, integers (signed or not) and floats. Strings infer as "U", nulls and ragged
# or too-large integers as "O": those batches take the careful path.
_NUMERIC_KINDS = frozenset("biuf")


def decode(records: Sequence[SourceRecord], schema: EventSchema, exclude: Sequence[Reject] = ()) -> Decoded:
    """Turn a batch of records into input tensors, setting aside the ones that can't be scored.

    ``exclude`` rejects records for a reason decided elsewhere (a missed deadline, say):
    they are not decoded, and their rejects join the others in batch order.
    """
    if exclude:
        gone = {r.index for r in exclude}
        kept = [i for i in range(len(records)) if i not in gone]
        inner = decode([records[i] for i in kept], schema)
        rejects = [Reject(kept[r.index], r.error, r.message) for r in inner.rejects] + list(exclude)
        return Decoded(
            rows=np.asarray(kept, dtype=np.int64)[inner.rows],
            ids=inner.ids,
            inputs=inner.inputs,
            rejects=sorted(rejects, key=lambda r: r.index),
        )
    slices = _byte_bounded_slices(records)
    if len(slices) > 1:
        return _concatenate([(start, decode(records[start:stop], schema)) for start, stop in slices], schema)
    with _gc_paused():
        try:
            return _decode_fast(records, schema)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, _BadEvent):
            return _decode_careful(records, schema)


def _byte_bounded_slices(records: Sequence[SourceRecord]) -> list[tuple[int, int]]:
    """Consecutive ``[start, stop)`` slices whose values add up to at most ``MAX_DECODE_BYTES``
    (a slice holds at least one record)."""
    slices: list[tuple[int, int]] = []
    start, size = 0, 0
    for i, record in enumerate(records):
        length = len(record.value) if record.value is not None else 0
        if size + length > MAX_DECODE_BYTES and i > start:
            slices.append((start, i))
            start, size = i, 0
        size += length
    slices.append((start, len(records)))
    return slices


def _concatenate(parts: list[tuple[int, Decoded]], schema: EventSchema) -> Decoded:
    """One ``Decoded`` from the decoded slices of a batch (each with the index it starts at)."""
    rows = [part.rows + start for start, part in parts]
    inputs = [
        np.concatenate([part.inputs[i] for _, part in parts]) if parts else np.empty((0, *spec.shape), dtype=np.float32)
        for i, spec in enumerate(schema.inputs)
    ]
    return Decoded(
        rows=np.concatenate(rows) if rows else np.empty(0, dtype=np.int64),
        ids=[event_id for _, part in parts for event_id in part.ids],
        inputs=inputs,
        rejects=[Reject(r.index + start, r.error, r.message) for start, part in parts for r in part.rejects],
    )


def _as_float32(values: Any) -> np.ndarray:
    """Numbers (or booleans) to float32, always through a double: the same result whether an
    event is converted alone or inside a batch. Values beyond float32's range become inf,
    which the finite check rejects."""
    with np.errstate(over="ignore"):
        return np.asarray(values, dtype=np.float64).astype(np.float32)


def _decode_fast(records: Sequence[SourceRecord], schema: EventSchema) -> Decoded:
    values = [r.value for r in records]
    if any(v is None or len(v) > schema.max_payload_bytes for v in values):
        raise _BadEvent("", "")
    docs = [orjson.loads(v) for v in values]  # type: ignore[arg-type]
    ids = [d[schema.id_field] for d in docs]
    if not all(type(i) is str or type(i) is int for i in ids):
        raise _BadEvent("", "")
    n = len(docs)
    inputs = []
    for spec in schema.inputs:
        inferred = np.array([d[spec.field] for d in docs])
        if inferred.dtype.kind not in _NUMERIC_KINDS or inferred.shape != (n, *spec.shape):
            raise _BadEvent("", "")
        inputs.append(_as_float32(inferred))
    finite = np.ones(n, dtype=bool)
    for array in inputs:
        finite &= np.isfinite(array.reshape(n, -1)).all(axis=1)
    if not finite.all():
        raise _BadEvent("", "")
    return Decoded(rows=np.arange(n), ids=ids, inputs=inputs)


def _decode_careful(records: Sequence[SourceRecord], schema: EventSchema) -> Decoded:
    rows: list[int] = []
    ids: list[Any] = []
    columns: list[list[np.ndarray]] = [[] for _ in schema.inputs]
    rejects: list[Reject] = []
    for index, record in enumerate(records):
        try:
            if type(record) is UndecodableRecord:
                raise _BadEvent("Undecodable", f"the consumer could not decode the record's batch: {record.reason}")
            event_id, arrays = decode_one(record.value, schema)
        except _BadEvent as bad:
            rejects.append(Reject(index, bad.error, bad.message))
            continue
        rows.append(index)
        ids.append(event_id)
        for column, array in zip(columns, arrays, strict=True):
            column.append(array)
    inputs = [
        np.stack(column) if column else np.empty((0, *spec.shape), dtype=np.float32)
        for column, spec in zip(columns, schema.inputs, strict=True)
    ]
    return Decoded(rows=np.asarray(rows, dtype=np.int64), ids=ids, inputs=inputs, rejects=rejects)


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
        if spec.field not in doc:
            raise _BadEvent("MissingField", f"field {spec.field!r} is missing")
        value_of_field = doc[spec.field]
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


def _only_numbers(value: Any) -> bool:
    """True for a number, a boolean, or nested lists of them: integers too large for numpy's
    integer types infer as objects, and are still numbers."""
    if type(value) in (int, float, bool):
        return True
    return type(value) is list and all(_only_numbers(v) for v in value)


def position_key(record: SourceRecord) -> bytes:
    return f"{record.topic}:{record.partition}:{record.offset}".encode()


def encode_predictions(
    records: Sequence[SourceRecord],
    decoded: Decoded,
    predictions: np.ndarray,
    *,
    topic: str,
    model_name: str,
    model_version: str,
    now_ms: int,
    key_by_position: bool = False,
    headers_of: Callable[[SourceRecord], Sequence[tuple[str, bytes]]] | None = None,
) -> list[OutputRecord]:
    """One JSON output per scored record, keyed like its input so per-key order holds downstream,
    or by its source position (``topic:partition:offset``), so that scoring the same record
    again writes the same key (a backfill re-run overwrites on a compacted topic). Each output
    carries ``headers_of(record)`` as its headers (none by default)."""
    encode = _encode_scalars if predictions.ndim == 1 and np.isfinite(predictions).all() else _encode_general
    return encode(
        records,
        decoded,
        predictions.tolist(),
        topic,
        model_name,
        model_version,
        now_ms,
        key_by_position,
        headers_of or _no_headers,
    )


def _no_headers(record: SourceRecord) -> Sequence[tuple[str, bytes]]:
    return ()


def _encode_scalars(
    records: Sequence[SourceRecord],
    decoded: Decoded,
    values: list[float],
    topic: str,
    model_name: str,
    model_version: str,
    now_ms: int,
    key_by_position: bool,
    headers_of: Callable[[SourceRecord], Sequence[tuple[str, bytes]]],
) -> list[OutputRecord]:
    # One float per event, the common case, and this runs once per event: filling bytes
    # templates is about 3x faster than building and serialising a dict per event. The
    # constant parts are serialised by orjson once per batch, so names are escaped as before.
    dumps = orjson.dumps
    model = (dumps(model_name) + b',"model_version":' + dumps(model_version)).replace(b"%", b"%%")
    template = (
        b'{"id":%b,"prediction":%r,"model":' + model + b',"source":{"topic":%b,"partition":%d,"offset":%d},'
        b'"event_ts":%d,"latency_ms":%d}'
    )
    topic_json: dict[str, bytes] = {}
    topic_key: dict[str, bytes] = {}
    out = []
    for row, event_id, prediction in zip(decoded.rows.tolist(), decoded.ids, values, strict=True):
        record = records[row]
        source = record.topic
        if source not in topic_json:
            topic_json[source] = dumps(source)
            topic_key[source] = source.encode().replace(b"%", b"%%") + b":%d:%d"
        partition, offset, timestamp = record.partition, record.offset, record.timestamp
        body = template % (
            dumps(event_id),
            prediction,
            topic_json[source],
            partition,
            offset,
            timestamp,
            now_ms - timestamp,
        )
        key = topic_key[source] % (partition, offset) if key_by_position else record.key
        out.append(OutputRecord(topic, key, body, partition, headers_of(record)))
    return out


def _encode_general(
    records: Sequence[SourceRecord],
    decoded: Decoded,
    values: list[Any],
    topic: str,
    model_name: str,
    model_version: str,
    now_ms: int,
    key_by_position: bool,
    headers_of: Callable[[SourceRecord], Sequence[tuple[str, bytes]]],
) -> list[OutputRecord]:
    # Several outputs per event, or NaN/inf (which orjson writes as null): a dict per event.
    out = []
    for row, event_id, prediction in zip(decoded.rows.tolist(), decoded.ids, values, strict=True):
        record = records[row]
        body = orjson.dumps(
            {
                "id": event_id,
                "prediction": prediction,
                "model": model_name,
                "model_version": model_version,
                "source": {"topic": record.topic, "partition": record.partition, "offset": record.offset},
                "event_ts": record.timestamp,
                "latency_ms": now_ms - record.timestamp,
            }
        )
        key = position_key(record) if key_by_position else record.key
        out.append(OutputRecord(topic, key, body, record.partition, headers_of(record)))
    return out
