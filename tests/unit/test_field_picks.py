"""Events of a schema whose fields are taken as read (``streams.codecs.field_picks``) decode exactly as
their JSON does: the same rows, ids (type and value), tensors bit for bit and dead letters, for
Avro and Protobuf schemas of every kind of field, values the rule refuses included."""

from __future__ import annotations

import asyncio
import base64
import json
import struct

import fastavro
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.codecs.codec import Decoded, EventSchema, TensorField, decode
from streams.codecs.field_picks import avro_pick, proto_pick
from streams.codecs.schema_transcode import SchemaTranscoder, WriterSchema
from streams.codecs.transcoded import json_value
from streams.records import ReadRecord, TranscodedRecord
from tests.unit.test_proto_json import TEXT, Event, Inner
from tests.unit.test_proto_json import Registry as ProtoRegistry
from tests.unit.test_schema_transcode import Registry, avro, record

NESTED = EventSchema(
    "id",
    (
        TensorField("payment.features", (3,), ("payment", "features")),
        TensorField("payment.amount", (), ("payment", "amount")),
        TensorField("flat", ()),
    ),
)


def same(picked: Decoded, json_path: Decoded) -> None:
    assert picked.rows.tolist() == json_path.rows.tolist()
    assert [(type(i), i) for i in picked.ids] == [(type(i), i) for i in json_path.ids]
    for a, b in zip(picked.inputs, json_path.inputs, strict=True):
        assert (a.dtype, a.shape, a.tobytes()) == (b.dtype, b.shape, b.tobytes())
    assert [(r.index, r.error, r.message) for r in picked.rejects] == [
        (r.index, r.error, r.message) for r in json_path.rejects
    ]


def both_ways(fmt: str, registry, values: list[bytes], schema: EventSchema) -> tuple[Decoded, list]:
    """``values`` decoded with the fields picked and through JSON alone; the picked records too."""
    records = [record(v, i) for i, v in enumerate(values)]

    async def run(fields):
        return await SchemaTranscoder(fmt, registry, fields=fields).transcode(records)

    picked = asyncio.run(run(schema))
    plain = asyncio.run(run(None))
    decoded = decode(picked, schema)
    same(decoded, decode(plain, schema))
    return decoded, picked


# -- Avro: every kind of field where the pipeline reads one ---------------------------------------

ID_TYPES = [
    "string",
    "long",
    "int",
    ["null", "string"],
    "boolean",
    "bytes",
    {"type": "enum", "name": "K", "symbols": ["A"]},
]
FEATURE_TYPES = [
    {"type": "array", "items": "double"},
    {"type": "array", "items": "float"},
    {"type": "array", "items": "long"},
    {"type": "array", "items": "boolean"},
    ["null", {"type": "array", "items": "double"}],
    {"type": "array", "items": "string"},
    {"type": "array", "items": ["null", "double"]},
    "double",
]
AMOUNT_TYPES = ["double", "float", "int", "long", "boolean", ["null", "double"], "string"]
AMOUNT_TYPES.append({"type": "long", "logicalType": "timestamp-millis"})


def _finite(width: int) -> st.SearchStrategy[float]:
    return st.floats(allow_nan=False, allow_infinity=False, width=width)  # type: ignore[arg-type]


def _often(first, rest: list) -> st.SearchStrategy:
    """``first`` half the time (the fields sluice picks), any of ``rest`` otherwise."""
    return st.sampled_from([first] * len(rest) + rest)


def _avro_values(kind) -> st.SearchStrategy:
    if isinstance(kind, list):
        return st.one_of(*(_avro_values(k) for k in kind))
    if isinstance(kind, dict):
        if kind["type"] == "array":
            return st.lists(_avro_values(kind["items"]), min_size=3, max_size=3) | st.lists(
                _avro_values(kind["items"]), min_size=2, max_size=4
            )
        if kind["type"] == "enum":
            return st.just("A")
        return st.integers(0, 2**40)  # timestamp-millis
    return {
        "null": st.none(),
        "string": st.text(max_size=4),
        "bytes": st.binary(max_size=4),
        "boolean": st.booleans(),
        "int": st.integers(-(2**31), 2**31 - 1),
        "long": st.integers(-(2**63), 2**63 - 1),
        "float": _finite(32) | _finite(32) | st.floats(width=32) | st.sampled_from([3.4e38, -1e-45]),
        "double": _finite(64) | _finite(64) | st.floats() | st.sampled_from([1e39, -3.5e38, 5e-324]),
    }[kind]


@st.composite
def _avro_batches(draw: st.DrawFn) -> tuple[dict, list[dict]]:
    id_type = draw(_often(ID_TYPES[0], ID_TYPES))
    features, amount = draw(_often(FEATURE_TYPES[0], FEATURE_TYPES)), draw(_often(AMOUNT_TYPES[0], AMOUNT_TYPES))
    payment = {"type": "record", "name": "P", "fields": [{"name": "features", "type": features}]}
    payment["fields"].append({"name": "amount", "type": amount})
    payment_type = draw(st.sampled_from([payment, payment, ["null", payment]]))
    fields = [{"name": "id", "type": id_type}, {"name": "payment", "type": payment_type}]
    fields += [{"name": "flat", "type": draw(st.sampled_from(["double", "int", "string"]))}]
    schema = {"type": "record", "name": "E", "fields": fields}
    doc = st.fixed_dictionaries(
        {
            "id": _avro_values(id_type),
            "payment": st.one_of(
                *(
                    [st.none()]
                    if isinstance(payment_type, list) and draw(st.booleans())
                    else [st.fixed_dictionaries({"features": _avro_values(features), "amount": _avro_values(amount)})]
                )
            ),
            "flat": _avro_values(fields[2]["type"]),
        }
    )
    return schema, draw(st.lists(doc, min_size=1, max_size=5))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_avro_batches(), st.data())
def test_avro_events_picked_decode_as_their_json_does(batch, data):
    schema, docs = batch
    values = [avro(5, schema, doc) for doc in docs]
    if data.draw(st.booleans()):  # a damaged value among them: truncated, or bytes left over
        at = data.draw(st.integers(0, len(values) - 1))
        values[at] = data.draw(st.sampled_from([values[at][:-1], values[at] + b"\x02"]))
    both_ways("avro", Registry({5: schema}), values, NESTED)


def test_a_plain_avro_schema_is_picked_and_its_json_is_written_only_when_asked():
    schema = {
        "type": "record",
        "name": "E",
        "fields": [
            {"name": "id", "type": "string"},
            {"name": "payment", "type": {"type": "record", "name": "P", "fields": [
                {"name": "features", "type": {"type": "array", "items": "double"}},
                {"name": "amount", "type": "float"},
            ]}},
            {"name": "flat", "type": "long"},
        ],
    }  # fmt: skip
    docs = [{"id": "a", "payment": {"features": [1.0, 2.0, 3.0], "amount": 0.1}, "flat": 7}]
    docs += [{"id": "b", "payment": {"features": [1.0, 2.0], "amount": 0.1}, "flat": 7}]  # the wrong length
    docs += [{"id": "c", "payment": {"features": [1.0, float("nan"), 3.0], "amount": 0.1}, "flat": 7}]
    decoded, picked = both_ways("avro", Registry({5: schema}), [avro(5, schema, d) for d in docs], NESTED)
    assert [type(r) for r in picked] == [ReadRecord, TranscodedRecord, ReadRecord]
    assert decoded.ids == ["a"] and decoded.inputs[1].tolist() == [np.float32(0.1)]
    assert [r.error for r in decoded.rejects] == ["WrongShape", "WrongType"]  # NaN is null in JSON
    assert json.loads(json_value(picked[0]))["payment"]["features"] == [1.0, 2.0, 3.0]
    assert picked[0].value == avro(5, schema, docs[0]), "the topic's bytes, which a dead letter copies"


def test_avro_schemas_that_cannot_be_picked():
    def pick(fields, schema=NESTED):
        return avro_pick(fastavro.parse_schema({"type": "record", "name": "E", "fields": fields}), schema)

    flat = [{"name": "id", "type": "string"}, {"name": "flat", "type": "double"}]
    only_flat = EventSchema("id", (TensorField("flat", ()),))
    assert pick(flat, only_flat) is not None
    recursive = [*flat, {"name": "next", "type": ["null", "E"]}]
    assert pick(recursive, only_flat) is None, "its JSON could nest past any limit"
    grid = EventSchema("id", (TensorField("g", (2, 2)),))
    nested_list = {"type": "array", "items": {"type": "array", "items": "double"}}
    assert pick([*flat, {"name": "g", "type": nested_list}], grid) is None
    assert pick([{"name": "id", "type": "double"}, flat[1]], only_flat) is None
    assert pick(flat, EventSchema("id", (TensorField("missing", ()),))) is None


# -- Protobuf: tests/unit/test_proto_json.py's Event, every kind of field --------------------------

PROTO_SCHEMAS = [
    EventSchema("id", (TensorField("features", (3,)), TensorField("f", ()), TensorField("big", ()))),
    EventSchema("id", (TensorField("inner.x", (), ("inner", "x")), TensorField("huge", ()), TensorField("flag", ()))),
    EventSchema("big", (TensorField("maybe", ()), TensorField("number", ()))),
    EventSchema("huge", (TensorField("child.inner.x", (), ("child", "inner", "x")), TensorField("features", (2,)))),
    EventSchema("name", (TensorField("features", (3,)),)),  # a oneof's member: picked when it is the one set
    EventSchema("id", (TensorField("color", ()),)),
    EventSchema("id", (TensorField("raw", ()),)),
    EventSchema("color", (TensorField("features", (3,)),)),
]
_floats = _finite(64) | _finite(64) | st.floats() | st.sampled_from([1e39, -3.5e38, 5e-324])


@st.composite
def _messages(draw: st.DrawFn) -> bytes:
    event = Event(
        id=draw(st.text(max_size=4)),
        big=draw(st.integers(-(2**63), 2**63 - 1)),
        huge=draw(st.integers(0, 2**64 - 1)),
        f=draw(st.floats(width=32)),
        flag=draw(st.booleans()),
        color=draw(st.sampled_from([0, 1, 7])),
        features=draw(st.lists(_floats, min_size=3, max_size=3) | st.lists(_floats, min_size=2, max_size=4)),
    )
    if draw(st.booleans()):
        event.inner.x = draw(_floats)
    if draw(st.booleans()):
        event.maybe = draw(_floats)
    which = draw(st.sampled_from(["name", "number", None]))
    if which == "name":
        event.name = draw(st.text(max_size=3))
    elif which == "number":
        event.number = draw(st.integers(-(2**31), 2**31 - 1))
    if draw(st.booleans()):
        event.child.inner.CopyFrom(Inner(x=draw(_floats)))
    value = b"\x00" + struct.pack(">I", 1) + b"\x02\x02" + event.SerializeToString()
    return value[: draw(st.sampled_from([len(value)] * 9 + [len(value) - 1]))]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(PROTO_SCHEMAS), st.lists(_messages(), min_size=1, max_size=5))
def test_protobuf_events_picked_decode_as_their_json_does(schema, values):
    both_ways("protobuf", ProtoRegistry({1: WriterSchema("PROTOBUF", TEXT)}), values, schema)


def test_which_protobuf_fields_are_picked():
    descriptor = Event.DESCRIPTOR
    for schema in PROTO_SCHEMAS[:5]:
        assert proto_pick(descriptor, schema) is not None, schema
    for schema in PROTO_SCHEMAS[5:]:
        assert proto_pick(descriptor, schema) is None, "an enum or bytes: the JSON path writes them as text"
    event = Event(id="e", features=[1.0, 2.0, 3.0], f=0.5, big=3)
    value = b"\x00" + struct.pack(">I", 1) + b"\x02\x02" + event.SerializeToString()
    _, picked = both_ways("protobuf", ProtoRegistry({1: WriterSchema("PROTOBUF", TEXT)}), [value], PROTO_SCHEMAS[0])
    assert type(picked[0]) is ReadRecord and picked[0].event[0::2] == ("e", 0.5)
    assert list(picked[0].event[1]) == [1.0, 2.0, 3.0] and picked[0].event[3] == 3
    assert base64.b64decode(TEXT)  # the schema the registry serves, serialized


def _zigzag(n: int) -> bytes:
    return bytes([(n << 1) & 0x7F])  # a small non-negative Avro int


def test_a_record_with_two_fields_of_one_name_is_never_picked():
    # fastavro reads it (its dict keeps the last), while a pick would check the first field's type.
    only_x = EventSchema("id", (TensorField("x", ()),))
    twins = {"type": "record", "name": "E", "fields": [{"name": "id", "type": "string"}]}
    twins["fields"] += [{"name": "x", "type": "double"}, {"name": "x", "type": "string"}]
    value = b"\x00" + struct.pack(">I", 5) + _zigzag(1) + b"a" + struct.pack("<d", 1.5) + _zigzag(3) + b"abc"
    decoded, picked = both_ways("avro", Registry({5: twins}), [value], only_x)
    assert type(picked[0]) is TranscodedRecord and [r.error for r in decoded.rejects] == ["WrongType"]
    inner = {"type": "record", "name": "P", "fields": [{"name": "x", "type": "double"}]}
    outer = {"type": "record", "name": "E", "fields": [{"name": "id", "type": "string"}]}
    outer["fields"] += [{"name": "p", "type": inner}, {"name": "p", "type": "string"}]
    value = b"\x00" + struct.pack(">I", 6) + _zigzag(1) + b"a" + struct.pack("<d", 1.5) + _zigzag(1) + b"s"
    nested = EventSchema("id", (TensorField("p.x", (), ("p", "x")),))
    decoded, _ = both_ways("avro", Registry({6: outer}), [value], nested)
    assert [r.error for r in decoded.rejects] == ["WrongType"]


def test_records_picked_for_other_fields_are_decoded_through_their_json():
    schema = {"type": "record", "name": "E", "fields": [{"name": "id", "type": "string"}]}
    schema["fields"] += [{"name": "a", "type": "double"}, {"name": "b", "type": "double"}]
    by_a = EventSchema("id", (TensorField("a", ()),))
    by_b = EventSchema("id", (TensorField("b", ()),))
    records = asyncio.run(
        SchemaTranscoder("avro", Registry({5: schema}), fields=by_a).transcode(
            [record(avro(5, schema, {"id": "e", "a": 1.0, "b": 2.0}))]
        )
    )
    assert type(records[0]) is ReadRecord
    assert decode(records, by_b).inputs[0].tolist() == [2.0], "b, not the a it was picked for"
