"""The Confluent wire format: how records written with a schema registry begin.

A zero byte (the "magic byte"), the schema's id as a 4-byte big-endian integer, then the record
encoded with that schema. Protobuf adds the message's indexes in its file before the record;
Avro and JSON Schema do not. (Confluent's serializers, Karapace's, Apicurio's in its Confluent
mode and Redpanda's all write this.)
"""

from __future__ import annotations

MAGIC = 0
HEADER_BYTES = 5


class NotWireFormat(ValueError):
    """The value does not start as a record written with a registry does."""


def schema_id_of(value: bytes) -> int:
    """The schema id a value names, or ``NotWireFormat`` saying why it names none."""
    if len(value) < HEADER_BYTES:
        raise NotWireFormat(
            f"the value is {len(value)} byte(s): too short for the registry's wire format "
            f"(a zero byte and a 4-byte schema id before the record)"
        )
    if value[0] != MAGIC:
        shown = "'{'" if value[:1] == b"{" else f"0x{value[0]:02x}"
        hint = ' (a JSON value? set format = "json")' if value[:1] == b"{" else ""
        raise NotWireFormat(f"the value starts with {shown}, not the registry wire format's zero byte{hint}")
    return int.from_bytes(value[1:HEADER_BYTES], "big")
