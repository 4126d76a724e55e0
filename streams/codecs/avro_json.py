"""Avro records in the registry's wire format, read with fastavro's compiled reader by their
writer's schema and written as the JSON objects they encode (``streams.codecs.schema_transcode``),
or, where the schema allows, with the pipeline's fields taken from them as read
(``streams.codecs.field_picks``)."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import fastavro
import orjson

from streams.codecs.avro_safety import AvroBounds, UnsafeSchema, bounds_of
from streams.codecs.field_picks import Event, avro_pick
from streams.codecs.wire_format import HEADER_BYTES, BadSchema, Unreadable, check_size

if TYPE_CHECKING:
    from streams.codecs.codec import EventSchema

# A schema's text beyond this is refused (a registry's schemas are kilobytes).
MAX_SCHEMA_CHARS = 256 * 1024


class Mismatch(ValueError):
    pass


class AvroReader:
    """Reads the records of one Avro schema; refuses a value that could decode to more JSON than
    ``max_json_bytes`` before reading it (``streams.codecs.avro_safety``)."""

    def __init__(self, schema_id: int, text: str, max_json_bytes: int, fields: EventSchema | None = None) -> None:
        if len(text) > MAX_SCHEMA_CHARS:
            raise BadSchema(f"schema {schema_id} is refused: {len(text):,} characters (at most {MAX_SCHEMA_CHARS:,})")
        try:
            self.parsed = fastavro.parse_schema(orjson.loads(text))
            self.bounds: AvroBounds = bounds_of(self.parsed)
        except UnsafeSchema as exc:
            raise BadSchema(f"schema {schema_id} is refused: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - a registry may hold anything; its events are dead letters
            raise BadSchema(f"schema {schema_id} is not an Avro schema fastavro can read: {exc}") from None
        self.schema_id = schema_id
        self.max_json_bytes = max_json_bytes
        self.fields = fields
        self._pick = None if fields is None else avro_pick(self.parsed, fields)

    def read_event(self, value: bytes) -> Event | None:
        """The pipeline's fields of ``value`` as read, or None: the JSON path (``read``) decides it."""
        # The JSON path's own size check, to the byte: a value it would refuse is never picked.
        if self._pick is None or self.bounds.most_json(len(value)) > self.max_json_bytes:
            return None
        body = io.BytesIO(value)
        body.seek(HEADER_BYTES)
        try:
            doc = fastavro.schemaless_reader(body, self.parsed, None)
            return self._pick(doc) if body.tell() == len(value) else None
        except Exception:  # noqa: BLE001 - its fault is named by the JSON path
            return None

    def read(self, value: bytes) -> bytes:
        check_size(self.schema_id, len(value), self.bounds.most_json(len(value)), self.max_json_bytes)
        try:
            return avro_to_json(value, self.parsed)
        except EOFError:
            raise Unreadable("Truncated", f"the record ends before its schema {self.schema_id} does") from None
        except Mismatch as exc:
            raise Unreadable("SchemaMismatch", f"schema {self.schema_id}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - any fault of the bytes is the event's
            reason = f"schema {self.schema_id} cannot read the record: {exc!r}"[:500]
            raise Unreadable("SchemaMismatch", reason) from None


def avro_to_json(value: bytes, parsed: Any) -> bytes:
    body = io.BytesIO(value)
    body.seek(HEADER_BYTES)
    doc = fastavro.schemaless_reader(body, parsed, None)
    left = len(value) - body.tell()
    if left:
        raise Mismatch(f"{left} byte(s) left over after the record: written with another schema?")
    try:
        return orjson.dumps(doc, default=as_text)
    except orjson.JSONEncodeError as exc:
        raise Mismatch(f"the record cannot be held as JSON: {exc}") from None


def as_text(value: Any) -> str:
    """Values JSON has no type for (bytes, fixed, decimals) become text: the decoding rule then
    says whether the model can take them (a feature must be a number)."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)
