"""One Avro record in the registry's wire format, read with fastavro's compiled reader by its
writer's schema and written as the JSON object it encodes (``streams.codecs.schema_transcode``)."""

from __future__ import annotations

import io
from typing import Any

import fastavro
import orjson

from streams.codecs.wire_format import HEADER_BYTES


class Mismatch(ValueError):
    pass


def avro_to_json(value: bytes, parsed: Any) -> bytes:
    body = io.BytesIO(value)
    body.seek(HEADER_BYTES)
    doc = fastavro.schemaless_reader(body, parsed, None)
    left = len(value) - body.tell()
    if left:
        raise Mismatch(f"{left} byte(s) left over after the record: written with another schema?")
    try:
        return orjson.dumps(doc, default=_as_text)
    except orjson.JSONEncodeError as exc:
        raise Mismatch(f"the record cannot be held as JSON: {exc}") from None


def _as_text(value: Any) -> str:
    """Avro values JSON has no type for (bytes, fixed, decimals) become text: the decoding rule
    then says whether the model can take them (a feature must be a number)."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)
