"""Protobuf records in the registry's wire format, written as the JSON objects they encode
(``streams.codecs.schema_transcode``), or, where the schema allows, with the pipeline's fields taken
from the parsed message (``streams.codecs.field_picks``).

After the schema id come the message's indexes in the schema's file (zigzag varints: a count,
then the indexes; a lone zero byte is ``[0]``, the first message), then the message, parsed by
Protobuf's compiled parser (upb). Every field is written, so a proto3 zero (which the wire leaves
out) reads as 0 like any other value: numbers as JSON numbers (64-bit ones too, unlike Protobuf's
own JSON mapping, which quotes them: a feature must be a number), enums by name, bytes as text
(as Avro's are), a message not set as null, a oneof by the member that is set. A field declared
``optional`` and not set is null.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass

from streams.codecs.avro_json import as_text
from streams.codecs.field_picks import Event, Pick, proto_pick
from streams.codecs.proto_schema import ProtoBounds, ProtoSchema, bounds_of, defaults_json
from streams.codecs.wire_format import HEADER_BYTES, Unreadable, WriterSchema, check_size

if TYPE_CHECKING:
    from streams.codecs.codec import EventSchema

# The message indexes a lone zero byte stands for.
FIRST_MESSAGE: tuple[int, ...] = (0,)
# A message nested deeper in its file than this is not a schema anyone writes.
MAX_INDEXES = 32

Converter = Callable[[Message], dict[str, Any]]


class ProtoReader:
    """Reads the records of one Protobuf schema; refuses a value that could decode to more JSON
    than ``max_json_bytes`` before reading it (``streams.codecs.proto_schema``)."""

    def __init__(
        self, schema_id: int, writer: WriterSchema, max_json_bytes: int, fields: EventSchema | None = None
    ) -> None:
        self.schema = ProtoSchema(schema_id, writer)
        self.schema_id = schema_id
        self.max_json_bytes = max_json_bytes
        self.fields = fields
        # By message indexes: its class, its pick (``field_picks``) and its size bounds.
        self._picks: dict[tuple[int, ...], tuple[type[Message], Pick | None, ProtoBounds]] = {}
        # By message indexes: its class, its converter and its bounds (a file has few messages).
        self._messages: dict[tuple[int, ...], tuple[type[Message], Converter, ProtoBounds]] = {}
        self._converters: dict[str, Converter] = {}
        self._defaults: dict[str, int] = {}  # defaults_json by message type, for _nested_json

    def read_event(self, value: bytes) -> Event | None:
        """The pipeline's fields of ``value`` as read, or None: the JSON path (``read``) decides it."""
        if self.fields is None:
            return None
        try:
            if value[HEADER_BYTES] == 0:  # a lone zero: the file's first message, as most are
                indexes, start = FIRST_MESSAGE, HEADER_BYTES + 1
            else:
                indexes, start = message_indexes(value)
            known = self._picks.get(indexes)
            if known is None:
                known = self._picks[indexes] = self._pick_for(indexes)
            cls, pick, bounds = known
            if pick is None or bounds.most_json(len(value)) > self.max_json_bytes:  # past it, the JSON path counts
                return None
            return pick(cls.FromString(value[start:]))
        except Exception:  # noqa: BLE001 - its fault is named by the JSON path
            return None

    def _pick_for(self, indexes: tuple[int, ...]) -> tuple[type[Message], Pick | None, ProtoBounds]:
        cls, _, bounds = self._message(indexes)
        assert self.fields is not None
        return cls, proto_pick(cls.DESCRIPTOR, self.fields), bounds

    def read(self, value: bytes) -> bytes:
        indexes, start = message_indexes(value)
        try:
            return self._read(indexes, value, start)
        except (Unreadable, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - whatever a crafted value or schema makes fail is the event's
            reason = f"schema {self.schema_id} cannot read the record: {exc!r}"[:500]
            raise Unreadable("SchemaMismatch", reason) from None

    def _read(self, indexes: tuple[int, ...], value: bytes, start: int) -> bytes:
        cls, convert, bounds = self._message(indexes)
        # Past the coarse bound: parsed first (its memory is the size of its bytes), then counted exactly below.
        count_first = bounds.most_json(len(value)) > self.max_json_bytes
        try:
            message = cls.FromString(value[start:])
        except DecodeError as exc:
            raise Unreadable(
                "SchemaMismatch",
                f"schema {self.schema_id}: the record is not a {cls.DESCRIPTOR.full_name} ({exc}): "
                f"truncated, or written with another schema?",
            ) from None
        if count_first:
            # The coarse bound assumed every two bytes a message of the largest kind; count the ones present.
            most = bounds.top + self._nested_json(message) + bounds.ratio * len(value)
            check_size(self.schema_id, len(value), most, self.max_json_bytes)
        try:
            return orjson.dumps(convert(message), default=as_text)
        except (orjson.JSONEncodeError, RecursionError) as exc:
            reason = f"schema {self.schema_id}: the record cannot be held as JSON: {exc}"
            raise Unreadable("SchemaMismatch", reason) from None

    def _nested_json(self, message: Message) -> int:
        """The JSON of every message nested in ``message`` with its fields at their defaults: the
        part of the decoded size that does not grow with the bytes (the fields' values do)."""
        total = 0
        for field, held in message.ListFields():
            kind = field.message_type
            if kind is None:
                continue
            if field.is_repeated and kind.GetOptions().map_entry:
                value_kind = kind.fields_by_name.get("value")
                if value_kind is None or value_kind.message_type is None:
                    continue
                items: Any = held.values()
            else:
                items = held if field.is_repeated else (held,)
            for item in items:
                descriptor = item.DESCRIPTOR
                fixed = self._defaults.get(descriptor.full_name)
                if fixed is None:
                    fixed = self._defaults[descriptor.full_name] = defaults_json(descriptor)
                total += fixed + self._nested_json(item)
        return total

    def _message(self, indexes: tuple[int, ...]) -> tuple[type[Message], Converter, ProtoBounds]:
        known = self._messages.get(indexes)
        if known is None:
            descriptor = self.schema.message(indexes)
            if descriptor is None:
                raise Unreadable("SchemaMismatch", f"schema {self.schema_id} has no message at indexes {list(indexes)}")
            known = (GetMessageClass(descriptor), self._converter(descriptor), bounds_of(descriptor))
            self._messages[indexes] = known
        return known

    def _converter(self, message: Descriptor) -> Converter:
        """A function writing a message of this type as a dict; built once per type (a type that
        holds itself finds its own converter by name when it first meets a value)."""
        known = self._converters.get(message.full_name)
        if known is not None:
            return known
        plan: list[tuple[str, Callable[[Message], Any], bool]] = []

        def convert(msg: Message) -> dict[str, Any]:
            doc: dict[str, Any] = {}
            for name, get, only_if_set in plan:
                if only_if_set and not msg.HasField(name):
                    continue
                doc[name] = get(msg)
            return doc

        self._converters[message.full_name] = convert
        for field in message.fields:
            plan.append((field.name, self._getter(field), _in_real_oneof(field)))
        return convert

    def _getter(self, field: FieldDescriptor) -> Callable[[Message], Any]:
        name = field.name
        value_of = self._value_of(field)
        entry = field.message_type
        if field.is_repeated and entry is not None and entry.GetOptions().map_entry and "value" in entry.fields_by_name:
            value_field = entry.fields_by_name["value"]
            item = self._value_of(value_field) or _as_is
            return lambda msg: {str(k): item(v) for k, v in getattr(msg, name).items()}
        if field.is_repeated:
            if value_of is None:
                return lambda msg: list(getattr(msg, name))
            return lambda msg: [value_of(v) for v in getattr(msg, name)]
        plain: Callable[[Message], Any] = (
            (lambda msg: getattr(msg, name)) if value_of is None else (lambda msg: value_of(getattr(msg, name)))
        )
        if field.has_presence and not _in_real_oneof(field):  # a message, or a field declared optional
            return lambda msg: plain(msg) if msg.HasField(name) else None
        return plain

    def _value_of(self, field: FieldDescriptor) -> Callable[[Any], Any] | None:
        """How one value of ``field`` is written (None: as Python holds it)."""
        if field.message_type is not None:
            target = field.message_type
            return lambda value: self._converter(target)(value)
        if field.enum_type is not None:
            names = {v.number: v.name for v in field.enum_type.values}
            return lambda number: names.get(number, number)  # an open enum may hold any number
        if field.type == FieldDescriptor.TYPE_BYTES:
            return as_text
        return None


def _as_is(value: Any) -> Any:
    return value


def _in_real_oneof(field: FieldDescriptor) -> bool:
    """A member of a declared oneof (not the hidden one proto3 gives each ``optional`` field)."""
    oneof = field.containing_oneof
    return oneof is not None and not (len(oneof.fields) == 1 and oneof.name == "_" + field.name)


def message_indexes(value: bytes) -> tuple[tuple[int, ...], int]:
    """The message indexes after the header, and where the message starts."""
    count, at = _zigzag(value, HEADER_BYTES)
    if count == 0:
        return (0,), at
    if not 0 < count <= MAX_INDEXES:
        raise Unreadable("SchemaMismatch", f"the record names {count} message indexes (at most {MAX_INDEXES})")
    indexes = []
    for _ in range(count):
        index, at = _zigzag(value, at)
        indexes.append(index)
    return tuple(indexes), at


def _zigzag(value: bytes, at: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if at >= len(value):
            raise Unreadable("Truncated", "the record ends inside its message indexes")
        byte = value[at]
        at += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (result >> 1) ^ -(result & 1), at
        shift += 7
        if shift > 63:
            raise Unreadable("SchemaMismatch", "a message index is longer than a 64-bit varint")
