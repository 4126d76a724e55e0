"""Protobuf schemas from the registry, ready to read records (``streams.codecs.proto_json``).

A registry keeps a Protobuf schema as a ``.proto`` file; sluice asks for its serialized form (a
``FileDescriptorProto``, base64: what Confluent's serializers register and what the registry
answers for ``format=serialized``), with the files it imports (the schema's references). They are
built into a descriptor pool of their own, beside Protobuf's well-known types, so two schemas
that name a message alike never meet. A record names its message by its indexes in the file
(``[0]``: the first top-level message; ``[1, 0]``: the first message nested in the second).

What a record of each message can cost is known before it is read (``ProtoBounds``): every
present message prints all its fields (proto3 fields have no presence, so a zero is written as
0, never left out), and a message takes at least two bytes on the wire; so a value of ``n``
bytes decodes to at most ``top + nested * n / 2 + ratio * n`` bytes of JSON.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any, NamedTuple

from google.protobuf import (
    any_pb2,
    api_pb2,
    descriptor_pb2,
    duration_pb2,
    empty_pb2,
    field_mask_pb2,
    source_context_pb2,
    struct_pb2,
    timestamp_pb2,
    type_pb2,
    wrappers_pb2,
)
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.descriptor_pool import DescriptorPool

from streams.codecs.wire_format import BadSchema, MissingImport, WriterSchema

# Protobuf's well-known types, each after the files it imports (a registry's serializers do not
# register these: every reader has them).
WELL_KNOWN = (
    any_pb2, source_context_pb2, type_pb2, api_pb2, descriptor_pb2, duration_pb2, empty_pb2, field_mask_pb2,
    struct_pb2, timestamp_pb2, wrappers_pb2,
)  # fmt: skip
WELL_KNOWN_NAMES = frozenset(m.DESCRIPTOR.name for m in WELL_KNOWN)
# Files one schema may import, and its text: far beyond what a registry's schemas use.
MAX_FILES = 64
MAX_SCHEMA_CHARS = 1 << 20
# JSON bytes one wire byte can become at most, enums aside: a float's four bytes printed in up to
# 24 characters and a comma (a string's byte escaped as \\u00XX is 6).
PRIMITIVE_RATIO = 7
DEFAULT_JSON = {FieldDescriptor.TYPE_BOOL: 5, FieldDescriptor.TYPE_STRING: 2, FieldDescriptor.TYPE_BYTES: 2}


class ProtoBounds(NamedTuple):
    top: int  # JSON bytes of the record's message with every field at its default
    nested: int  # the same for the largest message it can hold
    ratio: float  # JSON bytes per wire byte otherwise

    def most_json(self, wire_bytes: int) -> float:
        return self.top + self.nested * wire_bytes / 2 + self.ratio * wire_bytes


class ProtoSchema:
    """The messages of one registered Protobuf schema, by their indexes in its file."""

    def __init__(self, schema_id: int, writer: WriterSchema) -> None:
        self.schema_id = schema_id
        if len(writer.references) > MAX_FILES:
            raise BadSchema(f"schema {schema_id} imports {len(writer.references)} files (at most {MAX_FILES})")
        size = len(writer.text) + sum(len(text or "") for _, text in writer.references)
        if size > MAX_SCHEMA_CHARS:
            raise BadSchema(
                f"schema {schema_id} and its imports are {size:,} characters (at most {MAX_SCHEMA_CHARS:,})"
            )
        self.pool = DescriptorPool()
        for module in WELL_KNOWN:
            self.pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
        for name, text in writer.references:
            if name in WELL_KNOWN_NAMES:
                continue
            if text is None:
                raise MissingImport(f"schema {schema_id} imports {name}, which the schema registry does not have")
            self._add(name, text)
        self.file = self._add(f"sluice-schema-{schema_id}.proto", writer.text)

    def _add(self, name: str, text: str) -> descriptor_pb2.FileDescriptorProto:
        if len(text) > MAX_SCHEMA_CHARS:
            size = f"{len(text):,} characters (at most {MAX_SCHEMA_CHARS:,})"
            raise BadSchema(f"schema {self.schema_id}: {name} is {size}")
        proto = descriptor_pb2.FileDescriptorProto()
        try:
            proto.ParseFromString(base64.b64decode(text.encode("ascii"), validate=True))
            proto.name = name
            self.pool.Add(proto)
        except (binascii.Error, UnicodeError, ValueError, TypeError) as exc:
            why = f"{name} is not a serialized Protobuf schema sluice can build: {exc}"
            raise BadSchema(f"schema {self.schema_id}: {why}") from None
        except Exception as exc:  # noqa: BLE001 - the pool's own errors (a missing import, a clash)
            raise BadSchema(f"schema {self.schema_id}: {name} cannot be built: {exc}") from None
        return proto

    def message(self, indexes: tuple[int, ...]) -> Descriptor | None:
        """The message at ``indexes`` in the schema's file, or None if it has none there."""
        kinds: Any = self.file.message_type
        names: list[str] = []
        for index in indexes:
            if not 0 <= index < len(kinds):
                return None
            names.append(kinds[index].name)
            kinds = kinds[index].nested_type
        full_name = ".".join(filter(None, [self.file.package, *names]))
        return self.pool.FindMessageTypeByName(full_name)


def bounds_of(message: Descriptor) -> ProtoBounds:
    """How much JSON a record of ``message`` can decode to, by its size (see the module's doc)."""
    reachable: dict[str, Descriptor] = {}
    ratio = float(PRIMITIVE_RATIO)
    todo = [message]
    while todo:
        current = todo.pop()
        for field in current.fields:
            if field.message_type is not None and field.message_type.full_name not in reachable:
                reachable[field.message_type.full_name] = field.message_type
                todo.append(field.message_type)
            if field.enum_type is not None:  # one byte can name the longest value
                ratio = max(ratio, 4 + max((len(v.name) for v in field.enum_type.values), default=0))
    nested = max((defaults_json(d) for d in reachable.values()), default=0)
    return ProtoBounds(defaults_json(message), nested, ratio)


def defaults_json(message: Descriptor) -> int:
    """The JSON bytes of a message of this type with every field at its default (or null)."""
    size = 2
    for field in message.fields:
        if field.is_repeated or field.message_type is not None:
            value = 4  # [], {} or null
        elif field.enum_type is not None:
            value = 2 + max((len(v.name) for v in field.enum_type.values), default=0)
        else:
            value = DEFAULT_JSON.get(field.type, 4)  # 0, 0.0, null
        size += len(field.name) + 4 + value
    return size
