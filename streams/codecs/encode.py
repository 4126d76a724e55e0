"""Predictions in, JSON records out (or Avro: ``streams.codecs.avro_outputs``): one output per scored
event, a whole batch at a time."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from streams.codecs.avro_outputs import AvroOutputs, avro_ids, nullable
from streams.codecs.avro_scalars import scalar_outputs
from streams.records import OutputRecord, SourceRecord

if TYPE_CHECKING:
    from streams.codecs.codec import Decoded


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
    features: dict[str, np.ndarray] | None = None,
    extra: dict[str, Any] | None = None,
    avro: AvroOutputs | None = None,
) -> list[OutputRecord]:
    """One JSON output per scored record (Avro in the registry's wire format, with ``avro``), keyed
    like its input so per-key order holds downstream, or by its source position
    (``topic:partition:offset``), so that scoring the same record again writes the same key (a
    backfill re-run overwrites on a compacted topic). Each output carries ``headers_of(record)`` as
    its headers (none by default). With ``features`` (arrays by name, row for row), each output
    carries its event's values under ``"features"``: a backfill's outputs are then a training set
    with the features the model was served. ``extra`` fields, the same for the whole batch, go into
    every output (which role scored it, and why a fallback did)."""
    if avro is not None and predictions.ndim == 1 and not features and np.isfinite(predictions).all():
        # The common case again (see _encode_scalars): written from byte templates, not a dict each.
        rows, ids = decoded.rows.tolist(), avro_ids(decoded.ids)
        bodies = scalar_outputs(
            avro.header, records, rows, ids, predictions, model_name=model_name, model_version=model_version,
            now_ms=now_ms, optional=avro.optional, extra=extra,
        )  # fmt: skip
        return _records(_scored(records, rows), bodies, topic, key_by_position, headers_of or _no_headers)
    if avro is not None:
        # The same documents as JSON's general path, NaN and infinities as null as orjson writes them.
        return _encode_general(
            records, replace(decoded, ids=avro_ids(decoded.ids)), nullable(predictions), topic, model_name,
            model_version, now_ms, key_by_position, headers_of or _no_headers,
            {name: nullable(array) for name, array in features.items()} if features else None, extra, avro,
        )  # fmt: skip
    if features or extra:
        return _encode_general(
            records, decoded, predictions.tolist(), topic, model_name, model_version, now_ms,
            key_by_position, headers_of or _no_headers,
            {name: array.tolist() for name, array in features.items()} if features else None, extra,
        )  # fmt: skip
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
    # constant parts are serialised by orjson once per batch, so names are escaped as before;
    # so are the ids and the predictions (one orjson call each, split: see json_each).
    dumps = orjson.dumps
    model = (dumps(model_name) + b',"model_version":' + dumps(model_version)).replace(b"%", b"%%")
    id_json, quoted = json_each(decoded.ids)
    id_field = b'"id":"%b"' if quoted else b'"id":%b'
    template = (
        b"{" + id_field + b',"prediction":%b,"model":' + model + b',"source":{"topic":%b,"partition":%d,"offset":%d},'
        b'"event_ts":%d,"latency_ms":%d}'
    )
    prediction_json, _ = json_each(values)
    scored = _scored(records, decoded.rows.tolist())
    topic_json = {source: dumps(source) for source in {record.topic for record in scored}}
    bodies = [
        template % (event_id, prediction, topic_json[r.topic], r.partition, r.offset, r.timestamp, now_ms - r.timestamp)
        for r, event_id, prediction in zip(scored, id_json, prediction_json, strict=True)
    ]
    return _records(scored, bodies, topic, key_by_position, headers_of)


def json_each(values: list[Any]) -> tuple[list[bytes], bool]:
    """The JSON of each value, and whether strings' quotes were left out (to put back around each).

    One orjson call for the whole list, split at the separators, instead of a call per value:
    the list's JSON is split where that is unambiguous: numbers (no commas inside), strings
    with nothing escaped (no backslash anywhere, so every '","' is a separator). Anything else
    is serialised value by value."""
    if not values:
        return [], False
    kinds = set(map(type, values))
    if kinds <= {int, float}:
        return orjson.dumps(values)[1:-1].split(b","), False
    if kinds == {str}:
        whole = orjson.dumps(values)
        if b"\\" not in whole:
            return whole[2:-2].split(b'","'), True
    return [orjson.dumps(value) for value in values], False


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
    features: dict[str, list[Any]] | None = None,
    extra: dict[str, Any] | None = None,
    avro: AvroOutputs | None = None,
) -> list[OutputRecord]:
    # Several outputs per event, NaN/inf (which orjson writes as null), features or extra fields, or
    # Avro: a dict per event.
    rows = decoded.rows.tolist()
    docs = []
    for i, (row, event_id, prediction) in enumerate(zip(rows, decoded.ids, values, strict=True)):
        record = records[row]
        more = {"features": {name: column[i] for name, column in features.items()}} if features else {}
        docs.append(
            {
                "id": event_id,
                "prediction": prediction,
                "model": model_name,
                "model_version": model_version,
                "source": {"topic": record.topic, "partition": record.partition, "offset": record.offset},
                "event_ts": record.timestamp,
                "latency_ms": now_ms - record.timestamp,
                **more,
                **(extra or {}),
            }
        )
    bodies = avro.encode(docs) if avro is not None else list(map(orjson.dumps, docs))
    return _records(_scored(records, rows), bodies, topic, key_by_position, headers_of)


def _scored(records: Sequence[SourceRecord], rows: list[int]) -> Sequence[SourceRecord]:
    """The records at ``rows`` (sorted and unique: all of them when as many)."""
    return records if len(rows) == len(records) else [records[row] for row in rows]


def _records(
    scored: Sequence[SourceRecord],
    bodies: list[bytes],
    topic: str,
    key_by_position: bool,
    headers_of: Callable[[SourceRecord], Sequence[tuple[str, bytes]]],
) -> list[OutputRecord]:
    """The output of each scored record with its value, keyed like its input (or by its position).

    Built with ``tuple.__new__``: a named tuple's own constructor is a Python function, which
    cost as much as filling the value's template."""
    new = tuple.__new__
    if key_by_position:
        return [
            new(OutputRecord, (topic, position_key(r), body, r.partition, headers_of(r), None, None))
            for r, body in zip(scored, bodies, strict=True)
        ]
    return [
        new(OutputRecord, (topic, r.key, body, r.partition, headers_of(r), None, None))
        for r, body in zip(scored, bodies, strict=True)
    ]
