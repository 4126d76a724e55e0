"""Predictions as Avro records in the schema registry's wire format (``output_format = "avro"``).

``output_schema`` derives the output record's schema from the pipeline: the fields of the JSON
output, by the same names and in the same order. Fields only some outputs carry (``features``,
``role``, ``fallback``, ``fallback_reason``) are unions with null, null by default, so a schema
that gains or loses them stays compatible with the one before (the registry's default rule,
BACKWARD). ``prediction`` is a number or a list of numbers whatever the model's output shape:
a fallback answering one number for a model that answers several, or a swap to a model of
another shape, must still write records of the registered schema. Numbers are nullable, for
NaN and infinity, which JSON outputs write as null.

``AvroOutputs`` writes a batch's records, each as a zero byte, the 4-byte big-endian id the
registry gave the schema, then the record in Avro binary: fastavro's compiled writer, into one
buffer. The common case (one finite number per event, no features) is written from byte templates
instead (``streams.codecs.avro_scalars``, 4x faster; ``encode_predictions`` picks it), with the
header and optional fields kept here. Consumers read them with their registry's
deserializer, as any other Avro topic.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import fastavro
import numpy as np
import orjson

from streams.codecs.wire_format import HEADER_BYTES, MAGIC

# What Avro's long holds: an integer id beyond it (JSON ids go up to 2**64 - 1) is written as its text.
LONG_MIN, LONG_MAX = -(2**63), 2**63 - 1
# A number, or null where it is NaN or infinite (as JSON outputs write them).
NUMBER: list[Any] = ["double", "null"]
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def avro_name(text: str) -> str:
    """``text`` as an Avro name: letters, digits and ``_``, not starting with a digit."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", text)
    return name if name and not name[0].isdigit() else "_" + name


def _optional(name: str, schema: Any, doc: str) -> dict[str, Any]:
    return {"name": name, "type": ["null", schema], "default": None, "doc": doc}


def _numbers(shape: tuple[int, ...]) -> Any:
    """The Avro type of one feature's value: a number, or lists of numbers nested as deep as its shape."""
    schema: Any = NUMBER
    for _ in shape:
        schema = {"type": "array", "items": schema}
    return schema


def output_schema(pipeline: str, features: Sequence[tuple[str, tuple[int, ...]]] = ()) -> dict[str, Any]:
    """The schema of pipeline ``pipeline``'s outputs; with ``features`` (names and shapes per event),
    the ``features`` record the outputs carry when they emit them. ``ValueError`` for a feature
    name Avro cannot hold as a field name."""
    namespace = f"sluice.{avro_name(pipeline)}"
    fields: list[dict[str, Any]] = [
        {"name": "id", "type": ["long", "string"], "doc": "The event's id, as the event held it."},
        {
            "name": "prediction",
            "type": ["double", "null", {"type": "array", "items": NUMBER}],
            "doc": "The model's score: a number, or a list of numbers for a model with several outputs.",
        },
        {"name": "model", "type": "string", "doc": "The name of the model that scored the event."},
        {"name": "model_version", "type": "string", "doc": "Its version."},
        {
            "name": "source",
            "type": {
                "type": "record",
                "name": "Source",
                "doc": "Where the event was read.",
                "fields": [
                    {"name": "topic", "type": "string"},
                    {"name": "partition", "type": "int"},
                    {"name": "offset", "type": "long"},
                ],
            },
        },
        {"name": "event_ts", "type": "long", "doc": "The event's record timestamp, in ms since the epoch."},
        {"name": "latency_ms", "type": "long", "doc": "From the event's timestamp to its scoring, in ms."},
    ]
    if features:
        bad = [name for name, _ in features if not _NAME.fullmatch(name)]
        if bad:
            raise ValueError(
                f"feature {bad[0]!r} cannot be an Avro field name (letters, digits and _, not starting with a digit)"
            )
        record = {
            "type": "record",
            "name": "Features",
            "fields": [{"name": name, "type": _numbers(shape)} for name, shape in features],
        }
        fields.append(_optional("features", record, "The event's per-key features, as the model was served them."))
    fields += [
        _optional("role", "string", "Who scored the event when not the champion: canary or fallback."),
        _optional("fallback", "boolean", "True when the fallback scored the event."),
        _optional("fallback_reason", "string", "Why the fallback scored it."),
    ]
    return {
        "type": "record",
        "name": "Prediction",
        "namespace": namespace,
        "doc": f"A prediction of sluice pipeline {pipeline}.",
        "fields": fields,
    }


class AvroOutputs:
    """Writes outputs of ``schema``, registered as ``schema_id``, in the registry's wire format."""

    def __init__(self, schema: dict[str, Any], schema_id: int) -> None:
        self.schema = schema
        self.schema_id = schema_id
        self.parsed = fastavro.parse_schema(schema)
        self.header = bytes([MAGIC]) + schema_id.to_bytes(4, "big")
        # The optional fields, in the schema's order: what follows latency_ms in every record.
        self.optional = [f["name"] for f in schema["fields"] if isinstance(f["type"], list) and f["type"][0] == "null"]

    def encode(self, docs: Iterable[dict[str, Any]]) -> list[bytes]:
        """Each of ``docs`` (an output as its JSON would hold it) in the wire format."""
        buffer = io.BytesIO()
        write, parsed, header = fastavro.schemaless_writer, self.parsed, self.header
        ends = []
        for doc in docs:
            buffer.write(header)
            write(buffer, parsed, doc)
            ends.append(buffer.tell())
        whole = buffer.getvalue()
        return [whole[start:end] for start, end in zip([0, *ends], ends, strict=False)]  # one start more

    def decode(self, value: bytes) -> dict[str, Any]:
        """One of these outputs read back (``ValueError`` for a value of another schema)."""
        if value[:HEADER_BYTES] != self.header:
            raise ValueError(f"not a record of schema {self.schema_id}")
        body = io.BytesIO(value)
        body.seek(HEADER_BYTES)
        doc: Any = fastavro.schemaless_reader(body, self.parsed, None)
        return dict(doc)

    def as_json(self, value: bytes) -> bytes:
        """``value`` as JSON: one of these outputs as its JSON twin (null fields left out), anything else as is."""
        try:
            doc = self.decode(value)
        except Exception:  # noqa: BLE001 - not one of ours (a dead letter is JSON already)
            return value
        return orjson.dumps({name: field for name, field in doc.items() if field is not None})


def avro_ids(ids: list[Any]) -> list[Any]:
    """``ids`` as the schema's ``["long", "string"]`` holds them: integers beyond a long as their text."""
    if all(type(i) is str or LONG_MIN <= i <= LONG_MAX for i in ids):
        return ids
    return [i if type(i) is str or LONG_MIN <= i <= LONG_MAX else str(i) for i in ids]


def nullable(array: np.ndarray) -> list[Any]:
    """``array.tolist()`` with None for NaN and infinities (JSON outputs write them as null)."""
    values: list[Any] = array.tolist()
    if array.dtype.kind != "f" or np.isfinite(array).all():
        return values
    return [_finite(v) for v in values]


def _finite(value: Any) -> Any:
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value if math.isfinite(value) else None
