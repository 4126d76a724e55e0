"""Protobuf events in a registry's wire format decode to the JSON objects they encode: every field,
zeros included, 64-bit numbers as numbers; each fault of the event (or of its schema) is a dead
letter naming the schema and reason, and a value that could decode to more than the payload limit
is refused before it is read (streams/codecs/proto_json.py, proto_schema.py)."""

from __future__ import annotations

import base64
import struct

import orjson
import pytest
from google.protobuf import descriptor_pb2, timestamp_pb2
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass

from streams.codecs.proto_json import message_indexes
from streams.codecs.proto_schema import bounds_of, defaults_json
from streams.codecs.schema_transcode import SchemaTranscoder, WriterSchema
from streams.codecs.wire_format import Unreadable
from streams.records import InputRecord, TranscodedRecord, UndecodableRecord

F = descriptor_pb2.FieldDescriptorProto


def field(message, name, number, kind, type_name="", repeated=False, optional=False, oneof=None):
    f = message.field.add(name=name, number=number, type=kind, label=F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL)
    if type_name:
        f.type_name = type_name
    if optional:  # proto3 "optional": a hidden oneof of its own
        f.proto3_optional = True
        f.oneof_index = len(message.oneof_decl)
        message.oneof_decl.add(name="_" + name)
    if oneof is not None:
        f.oneof_index = oneof
    return f


def schema_file() -> descriptor_pb2.FileDescriptorProto:
    """package t; enum Color {RED=0; GREEN=1;}
    message Head { string trace = 1; message Inner { double x = 1; } }
    message Event { string id = 1; int64 big = 2; uint64 huge = 3; float f = 4; bool flag = 5;
      bytes raw = 6; Color color = 7; Head.Inner inner = 8; repeated Head.Inner items = 9;
      map<string, double> weights = 10; oneof pick { string name = 11; int32 number = 12; }
      optional double maybe = 13; repeated double features = 14; google.protobuf.Timestamp at = 15;
      Event child = 16; }"""
    file = descriptor_pb2.FileDescriptorProto(name="t.proto", package="t", syntax="proto3")
    file.dependency.append("google/protobuf/timestamp.proto")
    color = file.enum_type.add(name="Color")
    color.value.add(name="RED", number=0)
    color.value.add(name="GREEN", number=1)
    head = file.message_type.add(name="Head")
    field(head, "trace", 1, F.TYPE_STRING)
    field(head.nested_type.add(name="Inner"), "x", 1, F.TYPE_DOUBLE)
    event = file.message_type.add(name="Event")
    event.oneof_decl.add(name="pick")
    entry = event.nested_type.add(name="WeightsEntry")
    entry.options.map_entry = True
    field(entry, "key", 1, F.TYPE_STRING)
    field(entry, "value", 2, F.TYPE_DOUBLE)
    for args in [
        ("id", 1, F.TYPE_STRING), ("big", 2, F.TYPE_INT64), ("huge", 3, F.TYPE_UINT64), ("f", 4, F.TYPE_FLOAT),
        ("flag", 5, F.TYPE_BOOL), ("raw", 6, F.TYPE_BYTES), ("color", 7, F.TYPE_ENUM, ".t.Color"),
        ("inner", 8, F.TYPE_MESSAGE, ".t.Head.Inner"),
    ]:  # fmt: skip
        field(event, *args)
    field(event, "items", 9, F.TYPE_MESSAGE, ".t.Head.Inner", repeated=True)
    field(event, "weights", 10, F.TYPE_MESSAGE, ".t.Event.WeightsEntry", repeated=True)
    field(event, "name", 11, F.TYPE_STRING, oneof=0)
    field(event, "number", 12, F.TYPE_INT32, oneof=0)
    field(event, "maybe", 13, F.TYPE_DOUBLE, optional=True)
    field(event, "features", 14, F.TYPE_DOUBLE, repeated=True)
    field(event, "at", 15, F.TYPE_MESSAGE, ".google.protobuf.Timestamp")
    field(event, "child", 16, F.TYPE_MESSAGE, ".t.Event")
    return file


FILE = schema_file()
POOL = DescriptorPool()
POOL.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
POOL.Add(FILE)
Event = GetMessageClass(POOL.FindMessageTypeByName("t.Event"))
Inner = GetMessageClass(POOL.FindMessageTypeByName("t.Head.Inner"))
TEXT = base64.b64encode(FILE.SerializeToString()).decode()


class Registry:
    def __init__(self, schemas: dict[int, WriterSchema]) -> None:
        self.schemas = schemas

    async def fetch(self, schema_id: int) -> WriterSchema | None:
        return self.schemas.get(schema_id)


def wire(message, schema_id: int = 1, indexes: bytes = b"\x02\x02") -> bytes:
    """The Confluent framing; ``indexes`` as zigzag varints (count 1, index 1: the Event)."""
    return b"\x00" + struct.pack(">I", schema_id) + indexes + message.SerializeToString()


async def transcoded(values, schemas=None, max_json_bytes=1 << 20):
    registry = Registry(schemas or {1: WriterSchema("PROTOBUF", TEXT)})
    transcoder = SchemaTranscoder("protobuf", registry, max_json_bytes=max_json_bytes)
    return await transcoder.transcode([InputRecord("t", 0, i, 0, b"k", v) for i, v in enumerate(values)])


async def test_every_field_is_written_zeros_included_and_64_bit_numbers_stay_numbers():
    event = Event(id="e", big=-(2**63), huge=2**64 - 1, f=0.5, raw=b"\x00\xff", color=1, name="n", features=[0.0, 2.5])
    event.items.add(x=1.0)
    event.weights["w"] = 0.25
    event.at.FromMilliseconds(1_500)
    [out] = await transcoded([wire(event)])
    assert type(out) is TranscodedRecord
    assert orjson.loads(out.value) == {
        "id": "e", "big": -(2**63), "huge": 2**64 - 1, "f": 0.5, "flag": False, "raw": "\x00\xff", "color": "GREEN",
        "inner": None, "items": [{"x": 1.0}], "weights": {"w": 0.25}, "name": "n", "maybe": None,
        "features": [0.0, 2.5], "at": {"seconds": 1, "nanos": 500_000_000}, "child": None,
    }  # fmt: skip


async def test_a_proto3_zero_is_a_value_and_an_unknown_enum_number_is_kept():
    empty = Event()
    empty.number = 0  # set, though zero: the oneof's member is written
    empty.maybe = 0.0
    # An enum value the writer knew and the reader's schema does not (an open enum).
    value = wire(empty) + b"\x38\x07"  # field 7 (color), varint 7
    [out] = await transcoded([value])
    doc = orjson.loads(out.value)
    assert (doc["id"], doc["big"], doc["features"], doc["number"], doc["maybe"], doc["color"]) == ("", 0, [], 0, 0.0, 7)
    assert "name" not in doc, "a oneof is written by the member that is set"


@pytest.mark.parametrize(
    ("indexes", "expected"),
    [(b"\x00", (0,)), (b"\x02\x02", (1,)), (b"\x04\x02\x00", (1, 0)), (b"\x02\x01", (-1,))],
)
def test_message_indexes_are_zigzag_varints_and_a_lone_zero_is_the_first(indexes, expected):
    value = b"\x00\x00\x00\x00\x01" + indexes + b"rest"
    assert message_indexes(value) == (expected, 5 + len(indexes))


@pytest.mark.parametrize(
    ("value", "error", "why"),
    [
        (b"\x00\x00\x00\x00\x01", "Truncated", "ends inside its message indexes"),
        (b"\x00\x00\x00\x00\x01\x02", "Truncated", "ends inside its message indexes"),
        (b"\x00\x00\x00\x00\x01\x7e", "SchemaMismatch", "names 63 message indexes"),
        (b"\x00\x00\x00\x00\x01" + b"\xff" * 11, "SchemaMismatch", "longer than a 64-bit varint"),
        (b"\x00\x00\x00\x00\x01\x02\x0a", "SchemaMismatch", "no message at indexes [5]"),
        (b"\x00\x00\x00\x00\x01\x02\x01", "SchemaMismatch", "no message at indexes [-1]"),
        (b"\x00\x00\x00\x00\x01\x02\x02" + b"\x0a\xff\xff\xff\x0f", "SchemaMismatch", "truncated, or written with"),
        (b"\x00\x00\x00\x00\x02\x00", "UnknownSchema", "schema 2 is not in the schema registry"),
    ],
)
async def test_each_fault_of_the_record_is_a_dead_letter_naming_its_schema(value, error, why):
    [out] = await transcoded([value])
    assert type(out) is UndecodableRecord and out.error == error and why in out.message, out.message


@pytest.mark.parametrize(
    ("schema", "why"),
    [
        (WriterSchema("PROTOBUF", "bm90IGEgZGVzY3JpcHRvcg=="), "cannot be built"),
        (WriterSchema("PROTOBUF", "%%%"), "not a serialized Protobuf schema"),
        (WriterSchema("PROTOBUF", TEXT, (("gone.proto", None),)), "imports gone.proto, which the schema registry"),
        (WriterSchema("PROTOBUF", TEXT, tuple((f"f{i}.proto", TEXT) for i in range(65))), "imports 65 files"),
        (WriterSchema("AVRO", '"string"'), "is a AVRO schema; this pipeline reads PROTOBUF"),
    ],
)
async def test_a_schema_sluice_cannot_build_makes_its_events_dead_letters_naming_it(schema, why):
    [out] = await transcoded([wire(Event(id="e"))], {1: schema})
    assert type(out) is UndecodableRecord and out.error == "SchemaMismatch" and why in out.message, out.message


async def test_nesting_past_the_parsers_limit_is_a_dead_letter_and_shallower_nesting_reads():
    def nested(depth: int):
        top = event = Event(id="0")
        for i in range(depth):
            event = event.child
            event.id = str(i + 1)
        return top

    deep, shallow = await transcoded([wire(nested(150)), wire(nested(40))])
    assert type(deep) is UndecodableRecord and deep.error == "SchemaMismatch"
    doc = orjson.loads(shallow.value)
    for _ in range(40):
        doc = doc["child"]
    assert doc["id"] == "40" and doc["child"] is None


async def test_a_value_that_could_decode_past_the_payload_limit_is_refused_and_a_smaller_one_is_read():
    many = Event(id="e")
    for _ in range(2_000):
        many.items.add()  # two bytes each, a whole message of JSON each
    value = wire(many)
    bounds = bounds_of(Event.DESCRIPTOR)
    # Past the coarse bound (every two bytes a message of the largest kind), the messages present are counted.
    exact = bounds.top + 2_000 * defaults_json(Inner.DESCRIPTOR) + bounds.ratio * len(value)
    assert len(orjson.dumps({"items": [{"x": 0.0}] * 2_000})) <= exact < bounds.most_json(len(value))
    (refused,) = await transcoded([value], max_json_bytes=int(exact) - 1)
    assert type(refused) is UndecodableRecord and refused.error == "PayloadTooLarge"
    assert "max_payload_bytes" in refused.message
    (read,) = await transcoded([value], max_json_bytes=int(exact) + 1)
    assert len(orjson.loads(read.value)["items"]) == 2_000


def proto2_file(*, with_value: bool = True) -> str:
    """syntax = "proto2"; message M { map<string, int32> m = 1; } (proto2 does not check UTF-8);
    without ``value``, an entry a crafted schema marks as a map's though its value is named otherwise."""
    file = descriptor_pb2.FileDescriptorProto(name="p2.proto", package="p2", syntax="proto2")
    message = file.message_type.add(name="M")
    entry = message.nested_type.add(name="MEntry")
    entry.options.map_entry = True
    field(entry, "key", 1, F.TYPE_STRING)
    field(entry, "value" if with_value else "val", 2, F.TYPE_INT32)
    field(message, "m", 1, F.TYPE_MESSAGE, ".p2.M.MEntry", repeated=True)
    return base64.b64encode(file.SerializeToString()).decode()


@pytest.mark.parametrize("with_value", [True, False], ids=["map", "a map entry without a value"])
async def test_what_a_crafted_schema_or_value_makes_fail_is_one_dead_letter(with_value):
    entry = b"\x0a\x01\xff\x10\x01"  # key: one byte that is not UTF-8
    value = b"\x00\x00\x00\x00\x01\x00" + b"\x0a" + bytes([len(entry)]) + entry
    good = b"\x00\x00\x00\x00\x01\x00" + b"\x0a\x05\x0a\x01a\x10\x01"
    bad_out, good_out = await transcoded(
        [value, good], {1: WriterSchema("PROTOBUF", proto2_file(with_value=with_value))}
    )
    assert type(bad_out) is UndecodableRecord and bad_out.error == "SchemaMismatch" and "schema 1" in bad_out.message
    if with_value:
        assert type(good_out) is TranscodedRecord, "the rest of the batch is read"
    else:  # the schema's fault: each of its events is a dead letter, and nothing raises
        assert type(good_out) is UndecodableRecord and good_out.error == "SchemaMismatch"


async def test_a_wide_nested_message_does_not_make_ordinary_events_too_large():
    file = descriptor_pb2.FileDescriptorProto(name="w.proto", package="w", syntax="proto3")
    item = file.message_type.add(name="LineItem")
    for number in range(1, 31):
        field(item, f"merchant_category_code_{number:02d}", number, F.TYPE_STRING)
    order = file.message_type.add(name="Order")
    field(order, "items", 1, F.TYPE_MESSAGE, ".w.LineItem", repeated=True)
    pool = DescriptorPool()
    pool.Add(file)
    order_class = GetMessageClass(pool.FindMessageTypeByName("w.Order"))
    message = order_class()
    for _ in range(200):
        message.items.add(merchant_category_code_01="5411")
    schemas = {1: WriterSchema("PROTOBUF", base64.b64encode(file.SerializeToString()).decode())}
    (out,) = await transcoded([wire(message, indexes=b"\x02\x02")], schemas)
    assert type(out) is TranscodedRecord and len(orjson.loads(out.value)["items"]) == 200


async def test_the_bound_holds_for_the_costliest_values_of_each_kind():
    event = Event(id="\x00" * 100, raw=b"\x01" * 100, color=1, f=1e-38, big=-1)
    event.features.extend([1e-300] * 50)
    event.items.add()
    event.weights[""] = 0.0
    value = wire(event)
    [out] = await transcoded([value])
    assert len(out.value) <= bounds_of(Event.DESCRIPTOR).most_json(len(value))


def test_unreadable_carries_its_kind():
    exc = Unreadable("Truncated", "why")
    assert (exc.error, exc.reason, str(exc)) == ("Truncated", "why", "why")


async def test_a_schema_whose_import_was_missing_is_asked_again_later(monkeypatch):
    from streams.codecs import schema_transcode

    answers = [WriterSchema("PROTOBUF", TEXT, (("late.proto", None),)), WriterSchema("PROTOBUF", TEXT)]

    class Late:
        async def fetch(self, schema_id: int) -> WriterSchema | None:
            return answers.pop(0)

    clock = [1_000.0]
    monkeypatch.setattr(schema_transcode.time, "monotonic", lambda: clock[0])
    transcoder = SchemaTranscoder("protobuf", Late())
    value = InputRecord("t", 0, 0, 0, b"k", wire(Event(id="e")))
    (first,) = await transcoder.transcode([value])
    assert type(first) is UndecodableRecord and "imports late.proto" in first.message
    (still,) = await transcoder.transcode([value])
    assert type(still) is UndecodableRecord and answers, "not asked again at once"
    clock[0] += schema_transcode.UNKNOWN_FOR_S
    (later,) = await transcoder.transcode([value])
    assert type(later) is TranscodedRecord and not answers
