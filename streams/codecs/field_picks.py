"""The pipeline's fields read straight from a schema's records: no JSON written, none parsed.

An Avro or Protobuf event is read by its writer's schema (fastavro's reader; Protobuf's parser),
and the JSON object it encodes is what the decoding rule reads (``streams.codecs.schema_transcode``).
Writing that JSON and parsing it again costs more than reading the record. Where the schema
itself guarantees what the rule would find, a *pick* takes the event id and the model's inputs
from the record as read, and the event skips the JSON: the id a string or integer field, each
input a number field (shape ``()``) or a list of numbers (shape ``(n,)``), at the end of a path of
records (messages) that are always there. A field whose schema allows anything else (a union with
null, an optional field, an enum, bytes, a logical type, a nested list) has no pick: its events
take the JSON path, which names their faults. Per event, a pick gives way (None) where the value
decides: a list of the wrong length, a message or optional field not set, an id that is not text.

So a picked event gets what its JSON twin would get, bit for bit: the numbers are the same
doubles (a float32 field is read as the double JSON would write), and the finite check after the
float32 conversion is the pipeline's (``streams.codecs.read_columns``), which hands events with
non-finite values back to the JSON path for their reason. A schema whose JSON could fail to be
written (a recursive Avro schema, nesting past ``MAX_DEPTH``) has no pick at all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from streams.codecs.fast_decode import overlapping

if TYPE_CHECKING:
    from streams.codecs.codec import EventSchema

# (event id, each input's value in the schema's order): Python numbers, or sequences of them.
Event = tuple[Any, ...]
Pick = Callable[[Any], "Event | None"]

# Nesting past this (records in records) is left to the JSON path, whose writer has a depth limit.
MAX_DEPTH = 64

_AVRO_NUMBERS = frozenset(("double", "float", "int", "long", "boolean"))
_AVRO_IDS = frozenset(("string", "int", "long"))
_PROTO_NUMBERS = frozenset(
    (
        FieldDescriptor.TYPE_DOUBLE,
        FieldDescriptor.TYPE_FLOAT,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_SFIXED64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_BOOL,
    )
)
_PROTO_INTEGERS = _PROTO_NUMBERS - {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_BOOL}


def _wanted(fields: EventSchema) -> list[tuple[tuple[str, ...], tuple[int, ...] | None]] | None:
    """The paths to read (the id's first, with shape None), or None if one is inside another or
    an input's shape is not () or (n,)."""
    wanted: list[tuple[tuple[str, ...], tuple[int, ...] | None]] = [((fields.id_field,), None)]
    wanted += [(spec.keys, spec.shape) for spec in fields.inputs]
    if overlapping([p for p, _ in wanted]):
        return None
    if any(shape is not None and len(shape) > 1 for _, shape in wanted):
        return None
    return wanted


# -- Avro: the dict fastavro reads, by the writer's parsed schema --------------------------------


def avro_pick(parsed: Any, fields: EventSchema) -> Pick | None:
    """How to take ``fields`` from the dicts fastavro reads by ``parsed``; None if it cannot be done."""
    named = parsed.get("__named_schemas", {}) if isinstance(parsed, dict) else {}
    wanted = _wanted(fields)
    if wanted is None or _avro_depth(parsed, named, ()) is None or _twin_names(parsed, named):
        return None
    getters = []
    for path, shape in wanted:
        node = parsed
        for key in path[:-1]:
            node = _avro_field(_avro_record(node, named), key)
            if node is None:
                return None
        leaf = _avro_field(_avro_record(node, named), path[-1])
        kind = _avro_leaf(leaf, named)
        if shape is None:
            if kind not in _AVRO_IDS:
                return None
        elif (shape == () and kind not in _AVRO_NUMBERS) or (shape != () and kind != "array"):
            return None
        getters.append((path, None if shape is None or shape == () else shape[0]))
    return _dict_pick(getters)


def _dict_pick(getters: list[tuple[tuple[str, ...], int | None]]) -> Pick:
    def pick(doc: Any) -> Event | None:
        out = []
        for path, length in getters:
            value = doc
            for key in path:
                value = value[key]
            if length is not None and len(value) != length:
                return None
            out.append(value)
        event_id = out[0]
        if type(event_id) is str and not _utf8(event_id):
            return None
        return tuple(out)

    return pick


def _avro_record(node: Any, named: dict[str, Any]) -> dict[str, Any] | None:
    node = named.get(node, node) if isinstance(node, str) else node
    if isinstance(node, dict) and node.get("type") == "record":
        return node
    return None


def _avro_field(record: dict[str, Any] | None, key: str) -> Any:
    if record is None:
        return None
    return next((f["type"] for f in record["fields"] if f["name"] == key), None)


def _avro_leaf(node: Any, named: dict[str, Any]) -> str | None:
    """The primitive type a leaf holds ("array" for an array of numbers); None for anything else."""
    if isinstance(node, dict):
        if "logicalType" in node:
            return None
        if node.get("type") == "array":
            return "array" if _avro_leaf(node.get("items"), named) in _AVRO_NUMBERS else None
        node = node.get("type") if len(node) == 1 else None
    return node if isinstance(node, str) and node not in named else None


def _twin_names(parsed: Any, named: dict[str, Any]) -> bool:
    """Whether a record of the schema has two fields of one name: fastavro reads them (its dict
    keeps the last), while the pick would check the first one's type."""
    field_lists = [r.get("fields", ()) for r in (parsed, *named.values()) if isinstance(r, dict)]
    return any(len({f["name"] for f in fields}) < len(fields) for fields in field_lists)


def _avro_depth(node: Any, named: dict[str, Any], seen: tuple[str, ...]) -> int | None:
    """How deep records, arrays and maps nest in ``node``; None if recursive or past ``MAX_DEPTH``."""
    if len(seen) > MAX_DEPTH:
        return None
    if isinstance(node, str):
        if node in seen:
            return None
        return 0 if node not in named else _avro_depth(named[node], named, seen)
    if isinstance(node, list):
        return _deepest([_avro_depth(branch, named, seen) for branch in node], 0)
    if not isinstance(node, dict):
        return 0
    kind = node.get("type")
    if kind == "record":
        inner = (*seen, node.get("name", ""))
        return _deepest([_avro_depth(f["type"], named, inner) for f in node.get("fields", ())], 1)
    if kind in ("array", "map"):
        return _deepest([_avro_depth(node.get("items" if kind == "array" else "values"), named, (*seen, ""))], 1)
    return 0


def _deepest(depths: list[int | None], add: int) -> int | None:
    known = [d for d in depths if d is not None]
    if len(known) < len(depths):
        return None
    depth = add + max(known, default=0)
    return depth if depth <= MAX_DEPTH else None


# -- Protobuf: the message the parser builds ------------------------------------------------------


def proto_pick(message: Descriptor, fields: EventSchema) -> Pick | None:
    """How to take ``fields`` from parsed messages of type ``message``; None if it cannot be done."""
    wanted = _wanted(fields)
    if wanted is None:
        return None
    getters = []
    for path, shape in wanted:
        steps: list[tuple[str, bool]] = []
        descriptor: Descriptor | None = message
        field = None
        for depth, key in enumerate(path):
            field = descriptor.fields_by_name.get(key) if descriptor is not None else None
            if field is None:
                return None
            if depth < len(path) - 1:
                if field.is_repeated or field.message_type is None:
                    return None
                steps.append((key, True))  # a message is null in JSON when not set
                descriptor = field.message_type
        assert field is not None
        if field.message_type is not None or field.enum_type is not None:
            return None
        if shape is None:
            if field.is_repeated or not (field.type == FieldDescriptor.TYPE_STRING or field.type in _PROTO_INTEGERS):
                return None
        elif field.type not in _PROTO_NUMBERS or field.is_repeated != (shape != ()):
            return None
        # An optional field, or a oneof's member: absent (or null) in JSON when not set.
        steps.append((path[-1], bool(field.has_presence)))
        getters.append((steps, None if shape is None or shape == () else shape[0]))
    return _message_pick(getters)


def _message_pick(getters: list[tuple[list[tuple[str, bool]], int | None]]) -> Pick:
    def pick(message: Any) -> Event | None:
        out: list[Any] = []
        for steps, length in getters:
            value = message
            for name, must_be_set in steps:
                if must_be_set and not value.HasField(name):
                    return None
                value = getattr(value, name)
            if length is not None and len(value) != length:
                return None
            out.append(value)  # a repeated field's container: read once, into the batch's column
        event_id = out[0]
        if type(event_id) is not int and (type(event_id) is not str or not _utf8(event_id)):
            return None  # a proto2 string that is not UTF-8 is bytes: the JSON path writes it as text
        return tuple(out)

    return pick


def _utf8(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
