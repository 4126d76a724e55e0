"""The Confluent wire format: how records written with a schema registry begin.

A zero byte (the "magic byte"), the schema's id as a 4-byte big-endian integer, then the record
encoded with that schema. Protobuf adds the message's indexes in its file before the record;
Avro and JSON Schema do not. (Confluent's serializers, Karapace's, Apicurio's in its Confluent
mode and Redpanda's all write this.)
"""

from __future__ import annotations

from typing import NamedTuple

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


class Unreadable(ValueError):
    """A value its schema cannot read: a dead letter with ``error`` (its kind) and the reason."""

    def __init__(self, error: str, reason: str) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason


def check_size(schema_id: int, wire_bytes: int, most_json: float, limit: int) -> None:
    """``Unreadable`` (``PayloadTooLarge``) if a value of ``wire_bytes`` could decode to more JSON than ``limit``."""
    if most_json > limit:
        raise Unreadable(
            "PayloadTooLarge",
            f"schema {schema_id}: {wire_bytes:,} bytes could decode to {most_json:,.0f} bytes of JSON; "
            f"the limit is {limit:,} (max_payload_bytes)",
        )


class BadSchema(ValueError):
    """A schema whose every event is a dead letter (refused as unsafe, or not of the pipeline's format)."""


class MissingImport(BadSchema):
    """A schema importing a file the registry did not have when asked: asked again later, as an unknown id is."""


class WriterSchema(NamedTuple):
    """A schema as the registry keeps it: its type ("AVRO", "JSON", "PROTOBUF"), its text, and for
    Protobuf the files it imports (``references``: name and text, imported ones first; None for one
    the registry does not have)."""

    schema_type: str
    text: str
    references: tuple[tuple[str, str | None], ...] = ()
